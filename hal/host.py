"""Where a figure was measured: the measuring host's identity and state.

Every measured latency records the host it was measured on (``HostInfo``: the CPU model and
its ISA flags, and for a GPU backend the GPU, driver and clocks; a remote probe reports its
own). ``spec_mismatches`` says why a DeviceSpec does not describe that host, so a figure
measured here is never passed off as one of the device the spec names.
"""

from __future__ import annotations

import functools
import logging
import os
import platform
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .device import DeviceSpec, cpu_info, cpu_spec_from_info

log = logging.getLogger(__name__)

#: ISA flags that change what the kernels of a CNN can do (SIMD width, int8 dot products,
#: matrix engines); the rest of /proc/cpuinfo's flags do not change a latency figure
_ISA_PREFIXES = ("avx", "amx", "fma", "sse4", "f16c", "asimd", "sve", "neon", "i8mm", "bf16")
#: a generic CPU spec is taken to describe this host when its fp32 peak is within this factor
#: of the peak estimated from the host's cores, clock and SIMD width
PEAK_FACTOR = 2.0
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "avx512vnni"})


class HostInfo(BaseModel):
    """The machine a figure was measured on.

    :param kind: ``cpu`` (the runtime ran on the CPU) or ``gpu``
    :param source: ``local``, or ``remote:<url>`` for a figure reported by a probe server
    :param cpu_model: CPU model name as the OS reports it
    :param cpu_cores: physical cores
    :param cpu_threads: logical CPUs this process may run on
    :param cpu_mhz: nominal (or maximum) clock in MHz
    :param isa: the CPU's ISA flags that matter to CNN kernels (avx2, avx512f, avx512_vnni, amx...)
    :param memory_gb: host memory
    :param gpu_name: GPU name (GPU backends)
    :param gpu_uuid: GPU UUID
    :param gpu_driver: NVIDIA driver version
    :param gpu_clocks_mhz: current and maximum SM and memory clocks at measurement time
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["cpu", "gpu"] = "cpu"
    source: str = "local"
    hostname: str = ""
    cpu_model: str = ""
    cpu_cores: int = 0
    cpu_threads: int = 0
    cpu_mhz: float = 0.0
    isa: list[str] = Field(default_factory=list)
    memory_gb: float = 0.0
    gpu_name: str | None = None
    gpu_uuid: str | None = None
    gpu_driver: str | None = None
    gpu_clocks_mhz: dict[str, int] = Field(default_factory=dict)

    def summary(self) -> str:
        """One line for a table footnote: ``AMD EPYC 7B13 (2 cores, avx2 avx512f avx512_vnni)``."""
        where = "" if self.source == "local" else f" via {self.source}"
        if self.kind == "gpu" and self.gpu_name:
            driver = f", driver {self.gpu_driver}" if self.gpu_driver else ""
            return f"{self.gpu_name}{driver}{where}"
        simd = " ".join(f for f in self.isa if f.startswith(("avx512f", "avx512_vnni", "avx_vnni", "avx2", "amx", "asimd", "sve")))
        return f"{self.cpu_model or 'unknown CPU'} ({self.cpu_cores} cores{', ' + simd if simd else ''}){where}"


def isa_flags(flags: set[str] | list[str]) -> list[str]:
    return sorted(f for f in flags if f.startswith(_ISA_PREFIXES))


@functools.lru_cache(maxsize=1)
def _cpu_host() -> HostInfo:
    info = cpu_info()
    return HostInfo(
        kind="cpu",
        hostname=platform.node(),
        cpu_model=str(info["model"]),
        cpu_cores=int(info["cores"]),
        cpu_threads=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1),
        cpu_mhz=float(info["mhz"]),
        isa=isa_flags(info["flags"]),
        memory_gb=round(float(info["memory_gb"]), 1),
    )


def _gpu_facts(index: int) -> dict[str, Any]:
    """Name, UUID, driver and clocks of NVML GPU ``index`` (empty without NVML)."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver: the host is described by its CPU alone
        log.debug("NVML unavailable: %s", exc)
        return {}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)

        def text(value: Any) -> str:
            return value.decode() if isinstance(value, bytes) else str(value)

        clocks = {}
        for label, clock in (("sm", pynvml.NVML_CLOCK_SM), ("mem", pynvml.NVML_CLOCK_MEM)):
            try:
                clocks[label] = int(pynvml.nvmlDeviceGetClockInfo(handle, clock))
                clocks[f"{label}_max"] = int(pynvml.nvmlDeviceGetMaxClockInfo(handle, clock))
            except pynvml.NVMLError:
                continue
        return {
            "gpu_name": text(pynvml.nvmlDeviceGetName(handle)),
            "gpu_uuid": text(pynvml.nvmlDeviceGetUUID(handle)),
            "gpu_driver": text(pynvml.nvmlSystemGetDriverVersion()),
            "gpu_clocks_mhz": clocks,
        }
    except Exception as exc:  # a GPU index that does not exist, a driver without these calls
        log.debug("NVML GPU %d unavailable: %s", index, exc)
        return {}
    finally:
        pynvml.nvmlShutdown()


def describe_host(kind: Literal["cpu", "gpu"] = "cpu", gpu_index: int = 0) -> HostInfo:
    """This machine as a measurement on ``kind`` sees it (GPU clocks are read now)."""
    host = _cpu_host()
    if kind == "gpu":
        return host.model_copy(update={"kind": "gpu", **_gpu_facts(gpu_index)})
    return host


def _squash(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", text.lower())


def spec_mismatches(spec: DeviceSpec, host: HostInfo | dict[str, Any]) -> list[str]:
    """Why ``spec`` does not describe the host a figure was measured on (empty: it does).

    A spec detected on a machine names that machine (CPU model and cores, or GPU UUID) and
    must match it. A bundled class spec ("generic 8-core AVX2 desktop", "rtx-4090") must fit:
    a GPU spec must name the host's GPU; a CPU spec must agree on VNNI and have a peak fp32
    within ``PEAK_FACTOR`` of the host's (cores x clock x SIMD width).
    """
    host = host if isinstance(host, HostInfo) else HostInfo.model_validate(host)
    reasons: list[str] = []
    spec_gpu = spec.kind in ("gpu", "edge-gpu")
    if spec_gpu and host.kind == "cpu":
        return [f"the spec describes a GPU but the figure was measured on the CPU ({host.cpu_model})"]
    if not spec_gpu and host.kind == "gpu":
        return [f"the spec describes a CPU but the figure was measured on the GPU {host.gpu_name or ''}".rstrip()]
    detected = spec.host
    if spec_gpu:
        if detected.get("uuid") and host.gpu_uuid and detected["uuid"] != host.gpu_uuid:
            reasons.append(f"the spec was detected on GPU {detected['uuid']}, the figure measured on {host.gpu_uuid}")
        elif not detected.get("uuid"):
            token = _squash(spec.name.removeprefix("local-"))
            if not host.gpu_name or token not in _squash(host.gpu_name):
                reasons.append(f"the spec {spec.name!r} does not name this GPU ({host.gpu_name or 'unknown'})")
        return reasons
    if detected.get("cpu_model"):
        if str(detected["cpu_model"]) != host.cpu_model:
            reasons.append(f"the spec was detected on a {detected['cpu_model']}, the figure measured on a {host.cpu_model}")
        if detected.get("cores") and int(detected["cores"]) != host.cpu_cores:  # type: ignore[call-overload]
            reasons.append(f"the spec has {detected['cores']} cores, this host {host.cpu_cores}")
        return reasons
    host_vnni = bool(VNNI_FLAGS & set(host.isa))
    if spec.vnni != host_vnni:
        has = "has" if host_vnni else "lacks"
        reasons.append(f"the spec says vnni={str(spec.vnni).lower()} but this CPU {has} VNNI int8 instructions")
    if host.cpu_cores and host.cpu_mhz:
        est = cpu_spec_from_info(host.cpu_model, set(host.isa), host.cpu_mhz, host.cpu_cores, host.memory_gb or 1.0)
        ratio = spec.peak("fp32") / est.peak("fp32")
        if not 1 / PEAK_FACTOR <= ratio <= PEAK_FACTOR:
            reasons.append(
                f"the spec's peak fp32 of {spec.peak('fp32'):g} TOPS is {ratio:.1f}x this host's "
                f"{est.peak('fp32'):.2g} TOPS (estimated from {host.cpu_cores} cores at {host.cpu_mhz:.0f} MHz)"
            )
    return reasons


def device_state() -> dict[str, Any]:
    """Clocks, temperatures and load as the OS reports them (empty where it reports none)."""
    state: dict[str, Any] = {"clocks_mhz": {}, "temperature_c": {}}
    try:
        import psutil

        freq = psutil.cpu_freq()
        if freq:
            state["clocks_mhz"]["cpu"] = round(freq.current, 1)
        temps = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
        for chip, entries in temps.items():
            for i, entry in enumerate(entries):
                state["temperature_c"][f"{chip}/{entry.label or i}"] = entry.current
        state["load_avg"] = list(os.getloadavg())
    except Exception as exc:  # sensors are best effort; the measurement does not depend on them
        log.debug("device state unavailable: %s", exc)
    return state


def versions() -> dict[str, str]:
    """Versions of what a measurement ran on."""
    import numpy as np
    import onnx
    import onnxruntime

    import hadmc

    return {
        "hadmc": hadmc.__version__,
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }
