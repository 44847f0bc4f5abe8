"""Energy probes: millijoules per inference, always with their provenance.

- ``nvml``: the GPU's total-energy counter (mJ since driver load, updated about every 100 ms)
  read around a window of back-to-back inferences of at least ``window_s`` seconds, divided by
  the count; where the counter is unsupported, board power sampled at ``sample_hz`` and
  integrated (trapezoid).
- ``rapl``: the CPU package energy counter under ``/sys/class/powercap`` (root-only on most
  distributions since CVE-2020-8694; the error says how to grant read access).
- ``jetson``: the INA3221 rail monitors in sysfs, sampled and integrated.
- ``estimated``: latency x a power model of the DeviceSpec (idle + utilisation x (TDP - idle));
  provenance ``estimated``, never ``measured``.

``get_energy_probe("auto", device)`` picks the measured one that works for the device kind and
falls back to the estimate, saying why in ``detail["fallback_reason"]``.
"""

from __future__ import annotations

import abc
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from hadmc.errors import ProbeError
from hadmc.files import finite_number
from hadmc.registry import Registry

from .device import DeviceSpec, detect_local
from .results import EnergyResult, LatencyResult


log = logging.getLogger(__name__)

#: Energy probe classes by name (``auto`` is resolved by ``get_energy_probe``, not registered).
ENERGY_PROBES: Registry[type[EnergyProbe]] = Registry("energy probe", ProbeError)

NVML_COUNTER_MODULUS = 2**64  # nvmlDeviceGetTotalEnergyConsumption is an unsigned long long


# ---------------------------------------------------------------- pure helpers


def counter_delta(start: int, end: int, modulus: int) -> int:
    """Increase of a wrapping energy counter from ``start`` to ``end`` (at most one wrap)."""
    if modulus <= 0:
        raise ValueError("modulus must be positive")
    return (int(end) - int(start)) % int(modulus)


def integrate_power(times_s: list[float] | np.ndarray, power_w: list[float] | np.ndarray) -> float:
    """Energy in joules of a power series sampled at ``times_s`` (trapezoid rule)."""
    t = np.asarray(times_s, dtype=np.float64)
    p = np.asarray(power_w, dtype=np.float64)
    if t.shape != p.shape or t.size < 2:
        raise ProbeError(f"need at least two (time, power) samples of equal count, got {t.size} times and {p.size} powers")
    if np.any(np.diff(t) <= 0):
        raise ProbeError("power sample times must increase strictly")
    return float(np.sum((p[1:] + p[:-1]) * np.diff(t)) / 2.0)


def run_window(run_once: Callable[[], Any], window_s: float, min_iterations: int = 1) -> tuple[int, float]:
    """Run inferences back to back for at least ``window_s`` seconds; (count, seconds)."""
    n = 0
    t0 = time.perf_counter()
    while True:
        run_once()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= window_s and n >= min_iterations:
            return n, elapsed


class PowerSampler:
    """Samples ``read_w()`` in a background thread at ``hz`` until stopped.

    :param read_w: returns the instantaneous power in watts
    :param hz: sampling rate (10 Hz or more)
    """

    def __init__(self, read_w: Callable[[], float], hz: float = 20.0):
        self.read_w = read_w
        self.interval = 1.0 / hz
        self.times: list[float] = []
        self.watts: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.error: BaseException | None = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                w = float(self.read_w())
            except BaseException as exc:  # surfaced by stop(); a sampler must not die silently
                self.error = exc
                return
            self.times.append(time.perf_counter())
            self.watts.append(w)
            self._stop.wait(self.interval)

    def __enter__(self) -> PowerSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        # one last sample closes the window
        if self.error is None:
            self.times.append(time.perf_counter())
            self.watts.append(float(self.read_w()))

    def energy_j(self) -> float:
        if self.error is not None:
            raise ProbeError(f"power sampling failed: {self.error}")
        return integrate_power(self.times, self.watts)


def sampled_energy(
    run_once: Callable[[], Any], read_w: Callable[[], float], window_s: float, hz: float, method: str, detail: dict[str, Any]
) -> EnergyResult:
    """Run a window of back-to-back inferences while sampling power; the mean power over the
    sampled span (which brackets the window: the sampler starts before it and stops after)
    times the window's length is the window's energy, divided by its inference count."""
    with PowerSampler(read_w, hz) as sampler:
        n, window = run_window(run_once, window_s)
    span = sampler.times[-1] - sampler.times[0] if len(sampler.times) > 1 else 0.0
    if span <= 0:
        raise ProbeError("power sampling recorded no time span; lengthen the window")
    watts = sampler.energy_j() / span
    return EnergyResult(
        mj_per_inference=watts * window * 1000.0 / n,
        provenance="measured",
        method=method,
        window_s=window,
        iterations=n,
        avg_power_w=watts,
        detail={**detail, "samples": len(sampler.watts), "sample_hz": hz},
    )


# ---------------------------------------------------------------- probes


class EnergyProbe(abc.ABC):
    """Measures (or estimates) energy per inference.

    :param device: the device measured on
    :param window_s: minimum seconds of back-to-back inferences in a measured window
    :param warmup_runs: untimed runs before the window
    """

    name: ClassVar[str] = ""
    #: what the measured figure is (for the result's ``method``)
    method: ClassVar[str] = ""

    def __init__(self, device: DeviceSpec | None = None, window_s: float = 2.0, warmup_runs: int = 10):
        if not finite_number(window_s) or window_s <= 0:
            raise ProbeError(f"window_s must be a positive finite number of seconds, got {window_s!r}")
        self.device = device if device is not None else detect_local()
        self.window_s = float(window_s)
        self.warmup_runs = int(warmup_runs)

    def settings(self) -> dict[str, Any]:
        return {"energy": self.name, "window_s": self.window_s}

    @abc.abstractmethod
    def measure(self, run_once: Callable[[], Any], latency: LatencyResult | None = None) -> EnergyResult:
        """Energy per inference of ``run_once`` (one blocking inference)."""

    def _warm(self, run_once: Callable[[], Any]) -> None:
        for _ in range(self.warmup_runs):
            run_once()


@ENERGY_PROBES.register("estimated")
class EstimatedEnergyProbe(EnergyProbe):
    """Energy = latency x (idle_w + utilisation x (tdp_w - idle_w)) of the DeviceSpec.

    An estimate, labelled ``estimated``: the power model ignores what the kernels actually draw.

    :param utilisation: fraction of the TDP headroom in use; default: threads / cores on a
        CPU (from the latency result), 1.0 on a GPU (an upper bound)
    :param reason: why no measured probe was used (kept in the result's detail)
    """

    name = "estimated"
    method = "estimated-tdp"

    def __init__(self, device: DeviceSpec | None = None, utilisation: float | None = None, reason: str = "", **kw: Any):
        super().__init__(device, **kw)
        if utilisation is not None and not 0.0 <= utilisation <= 1.0:
            raise ProbeError(f"utilisation must be in [0, 1], got {utilisation}")
        self.utilisation = utilisation
        self.reason = reason

    def settings(self) -> dict[str, Any]:
        return {"energy": self.name, "utilisation": self.utilisation, "tdp_w": self.device.tdp_w, "idle_w": self.device.idle_w}

    def power_w(self, threads: int | None) -> tuple[float, float]:
        dev = self.device
        if self.utilisation is not None:
            u = self.utilisation
        elif dev.kind == "cpu":
            cores = int(dev.host.get("cores", 0) or 0) or 1
            u = min(1.0, (threads or cores) / cores)
        else:
            u = 1.0
        return dev.idle_w + u * (dev.tdp_w - dev.idle_w), u

    def measure(self, run_once: Callable[[], Any] | None = None, latency: LatencyResult | None = None) -> EnergyResult:
        if latency is not None:
            ms, threads, n, window = latency.median_ms, latency.threads, latency.iterations, 0.0
        elif run_once is not None:
            self._warm(run_once)
            n, window = run_window(run_once, min(self.window_s, 0.5), 10)
            ms, threads = window * 1000.0 / n, None
        else:
            raise ProbeError("an energy estimate needs a latency result or a run_once callable")
        watts, u = self.power_w(threads)
        detail = {
            "power_model": "idle_w + utilisation * (tdp_w - idle_w)",
            "utilisation": u,
            "latency_ms": ms,
            "device": self.device.name,
        }
        if self.reason:
            detail["fallback_reason"] = self.reason
        return EnergyResult(
            mj_per_inference=ms * watts,  # ms x W = mJ
            provenance="estimated",
            method=self.method,
            window_s=window,
            iterations=n,
            avg_power_w=watts,
            detail=detail,
        )


def _import_pynvml():
    try:
        import pynvml
    except ImportError as exc:
        raise ProbeError("NVML energy needs nvidia-ml-py: pip install 'hadmc[gpu]'") from exc
    return pynvml


@ENERGY_PROBES.register("nvml")
class NvmlEnergyProbe(EnergyProbe):
    """NVIDIA GPU energy through NVML (nvidia-ml-py).

    :param device_index: NVML index of the GPU
    :param sample_hz: power sampling rate of the fallback (counter unsupported)
    """

    name = "nvml"
    method = "nvml-counter"

    def __init__(self, device: DeviceSpec | None = None, device_index: int = 0, sample_hz: float = 20.0, **kw: Any):
        super().__init__(device, **kw)
        self.device_index = int(device_index)
        self.sample_hz = float(sample_hz)
        self._nvml = _import_pynvml()
        try:
            self._nvml.nvmlInit()
            self._handle = self._nvml.nvmlDeviceGetHandleByIndex(self.device_index)
        except self._nvml.NVMLError as exc:
            raise ProbeError(f"NVML cannot open GPU {self.device_index}: {exc} (is the NVIDIA driver loaded?)") from exc

    def settings(self) -> dict[str, Any]:
        return {**super().settings(), "device_index": self.device_index}

    def _counter_mj(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError_NotSupported:
            return None

    def _power_w(self) -> float:
        return self._nvml.nvmlDeviceGetPowerUsage(self._handle) / 1000.0

    def measure(self, run_once: Callable[[], Any], latency: LatencyResult | None = None) -> EnergyResult:
        self._warm(run_once)
        start = self._counter_mj()
        if start is not None:
            n, window = run_window(run_once, self.window_s)
            end = self._counter_mj()
            mj = counter_delta(start, end, NVML_COUNTER_MODULUS)
            return EnergyResult(
                mj_per_inference=mj / n,
                provenance="measured",
                method="nvml-counter",
                window_s=window,
                iterations=n,
                avg_power_w=mj / 1000.0 / window,
                detail={"counter_start_mj": start, "counter_end_mj": end, "gpu_index": self.device_index},
            )
        return sampled_energy(run_once, self._power_w, self.window_s, self.sample_hz, "nvml-power", {"gpu_index": self.device_index})


POWERCAP_ROOT = Path("/sys/class/powercap")


def rapl_package_domains(root: str | Path = POWERCAP_ROOT) -> list[Path]:
    """Top-level RAPL package domains (``intel-rapl:N`` whose ``name`` starts with ``package``;
    AMD CPUs expose theirs under the same driver name)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in sorted(root.glob("intel-rapl:*")):
        if d.name.count(":") != 1:  # sub-domains (core, uncore, dram) are intel-rapl:N:M
            continue
        try:
            if (d / "name").read_text().strip().startswith("package"):
                found.append(d)
        except OSError:
            continue
    return found


@ENERGY_PROBES.register("rapl")
class RaplEnergyProbe(EnergyProbe):
    """CPU package energy from the powercap RAPL counters (all packages summed). Covers the
    whole package, so other work on the machine during the window is counted too.

    :param root: powercap sysfs folder
    """

    name = "rapl"
    method = "rapl"

    def __init__(self, device: DeviceSpec | None = None, root: str | Path = POWERCAP_ROOT, **kw: Any):
        super().__init__(device, **kw)
        self.domains = rapl_package_domains(root)
        if not self.domains:
            raise ProbeError(f"no RAPL package domain under {root} (kernel without powercap/intel_rapl, or a VM)")
        for d in self.domains:
            self._read(d / "energy_uj")

    @staticmethod
    def _read(path: Path) -> int:
        try:
            return int(path.read_text().strip())
        except PermissionError as exc:
            raise ProbeError(
                f"{path} is readable only by root; grant read access (sudo chmod o+r {path}) or use the estimate (--energy estimated; energy.probe: estimated in a run config)"
            ) from exc
        except (OSError, ValueError) as exc:
            raise ProbeError(f"cannot read RAPL counter {path}: {exc}") from exc

    def measure(self, run_once: Callable[[], Any], latency: LatencyResult | None = None) -> EnergyResult:
        self._warm(run_once)
        ranges = [self._read(d / "max_energy_range_uj") for d in self.domains]
        start = [self._read(d / "energy_uj") for d in self.domains]
        n, window = run_window(run_once, self.window_s)
        end = [self._read(d / "energy_uj") for d in self.domains]
        uj = sum(counter_delta(s, e, r) for s, e, r in zip(start, end, ranges))
        return EnergyResult(
            mj_per_inference=uj / 1000.0 / n,
            provenance="measured",
            method="rapl",
            window_s=window,
            iterations=n,
            avg_power_w=uj / 1e6 / window,
            detail={"domains": [d.name for d in self.domains], "scope": "whole CPU package"},
        )


JETSON_ROOT = Path("/sys/bus/i2c/drivers")
#: rails that measure the whole module input, preferred over summing sub-rails
JETSON_TOTAL_RAILS = ("VDD_IN", "POM_5V_IN", "VIN_SYS_5V0")


def jetson_rails(root: str | Path = JETSON_ROOT) -> dict[str, Callable[[], float]]:
    """INA3221 rails found in sysfs: label -> reader returning watts.

    JetPack 5/6 (hwmon): ``ina3221/*/hwmon/hwmon*/in{N}_label``, ``in{N}_input`` (mV),
    ``curr{N}_input`` (mA). JetPack 4 (iio): ``ina3221x/*/iio:device*/rail_name_{N}``,
    ``in_power{N}_input`` (mW).
    """
    root = Path(root)
    rails: dict[str, Callable[[], float]] = {}
    for label_file in sorted(root.glob("ina3221/*/hwmon/hwmon*/in*_label")):
        n = label_file.name[len("in") : -len("_label")]
        volt, curr = label_file.with_name(f"in{n}_input"), label_file.with_name(f"curr{n}_input")
        if volt.exists() and curr.exists():
            label = label_file.read_text().strip()
            rails[label] = lambda v=volt, c=curr: int(v.read_text()) * int(c.read_text()) / 1e6
    for name_file in sorted(root.glob("ina3221x/*/iio:device*/rail_name_*")):
        n = name_file.name.rsplit("_", 1)[1]
        power = name_file.with_name(f"in_power{n}_input")
        if power.exists():
            label = name_file.read_text().strip()
            rails[label] = lambda p=power: int(p.read_text()) / 1000.0
    return rails


@ENERGY_PROBES.register("jetson")
class JetsonEnergyProbe(EnergyProbe):
    """Jetson module energy from its INA3221 power monitors, sampled and integrated.

    :param root: sysfs i2c drivers folder
    :param sample_hz: sampling rate
    :param rail: rail label to use; default the module input rail (VDD_IN) or the sum of all
    """

    name = "jetson"
    method = "jetson-ina"

    def __init__(self, device: DeviceSpec | None = None, root: str | Path = JETSON_ROOT, sample_hz: float = 20.0, rail: str | None = None, **kw: Any):
        super().__init__(device, **kw)
        self.rails = jetson_rails(root)
        if not self.rails:
            raise ProbeError(f"no INA3221 power rails under {root}; this is not a Jetson or the driver is not loaded")
        total = rail or next((r for r in JETSON_TOTAL_RAILS if r in self.rails), None)
        if rail is not None and rail not in self.rails:
            raise ProbeError(f"rail {rail!r} not found; available: {sorted(self.rails)}")
        self.rail = total
        self.sample_hz = float(sample_hz)

    def read_w(self) -> float:
        if self.rail is not None:
            return self.rails[self.rail]()
        return sum(read() for read in self.rails.values())

    def measure(self, run_once: Callable[[], Any], latency: LatencyResult | None = None) -> EnergyResult:
        self._warm(run_once)
        rail = self.rail or "sum:" + ",".join(sorted(self.rails))
        return sampled_energy(run_once, self.read_w, self.window_s, self.sample_hz, "jetson-ina", {"rail": rail})


# ---------------------------------------------------------------- registry

#: measured probe to try first per device kind under "auto"
_AUTO_ORDER = {"gpu": ["nvml"], "edge-gpu": ["jetson", "nvml"], "cpu": ["rapl"]}


def get_energy_probe(name: str = "auto", device: DeviceSpec | None = None, **settings: Any) -> EnergyProbe:
    """An energy probe by name; ``auto`` tries the device's ``energy`` field, then the measured
    probes that fit the device kind (nvml for GPUs, jetson for edge GPUs, rapl for CPUs) and
    falls back to ``estimated``, recording why.

    :param name: ``auto``, ``nvml``, ``rapl``, ``jetson`` or ``estimated``
    :param device: the DeviceSpec (default: the detected local device)
    :param settings: keyword settings of the probe (``window_s``...)
    """
    device = device if device is not None else detect_local()
    if name == "auto":
        reasons = []
        preferred = [device.energy] if device.energy in ("nvml", "rapl", "jetson") else []
        for candidate in dict.fromkeys(preferred + _AUTO_ORDER[device.kind]):
            try:
                return ENERGY_PROBES.get(candidate)(device=device, **settings)
            except ProbeError as exc:
                reasons.append(f"{candidate}: {exc}")
        reason = "; ".join(reasons)
        log.info("no measured energy probe for %s (%s); using the estimate", device.name, reason)
        est_settings = {k: v for k, v in settings.items() if k in ("window_s", "warmup_runs", "utilisation")}
        return EstimatedEnergyProbe(device=device, reason=reason, **est_settings)
    if name not in ENERGY_PROBES:
        raise ProbeError(f"{ENERGY_PROBES.unknown(name)}, or auto")
    try:
        return ENERGY_PROBES.get(name)(device=device, **settings)
    except TypeError as exc:
        raise ProbeError(f"invalid settings for energy probe {name!r}: {exc}") from exc
