"""DeviceSpec: what a target device can do and how to reach it.

Specs live as YAML in ``configs/devices/`` (installed as ``hadmc.configs``); ``detect_local()``
builds one for this machine. Figures that the operating system does not report (a CPU's
memory bandwidth, power draw) are estimates and are named in ``estimated_fields`` so nobody
mistakes them for datasheet values.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import logging
import math
import os
import platform
import re
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hadmc.errors import ConfigError
from hadmc.files import load_mapping
from hadmc.validation import numbers_are_not_booleans

log = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
KINDS: tuple[str, ...] = ("cpu", "gpu", "edge-gpu")
#: Length of ``DeviceSpec.state_features()``.
FEATURE_DIM = 16


class DeviceSpec(BaseModel):
    """A target device: throughput, memory, power and the backend that measures on it.

    :param name: short name, e.g. ``rtx-4090`` or ``local-cpu``
    :param kind: ``cpu``, ``gpu`` or ``edge-gpu``
    :param peak_tops: peak dense throughput per precision in tera-operations per second
    :param memory_bandwidth_gbs: DRAM bandwidth in GB/s
    :param memory_gb: memory size in GB
    :param tdp_w: board or package power limit in watts
    :param idle_w: power drawn while idle in watts
    :param precisions: precisions the backend runs natively (subset of fp32, fp16, int8)
    :param tensor_cores: GPU tensor cores present
    :param vnni: CPU has VNNI int8 dot-product instructions
    :param backend: latency probe name (``ort-cpu``, ``ort-cuda``, ``tensorrt``, ``remote://host:port``...)
    :param energy: energy probe name or ``auto``
    :param estimated_fields: fields that are estimates, not datasheet or measured values
    :param description: free text (source of the figures)
    :param host: extra facts about the machine (cores, ISA flags, GPU index...)
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    kind: Literal["cpu", "gpu", "edge-gpu"]
    peak_tops: dict[Literal["fp32", "fp16", "int8"], float]
    memory_bandwidth_gbs: float = Field(gt=0)
    memory_gb: float = Field(gt=0)
    tdp_w: float = Field(gt=0)
    idle_w: float = Field(ge=0)
    precisions: list[Literal["fp32", "fp16", "int8"]] = Field(min_length=1)
    tensor_cores: bool = False
    vnni: bool = False
    backend: str = "ort-cpu"
    energy: str = "auto"
    estimated_fields: list[str] = Field(default_factory=list)
    description: str = ""
    host: dict[str, object] = Field(default_factory=dict)

    _numbers_are_not_booleans = numbers_are_not_booleans()

    @field_validator("peak_tops")
    @classmethod
    def _positive_peaks(cls, v: dict[str, float]) -> dict[str, float]:
        if "fp32" not in v:
            raise ValueError("peak_tops needs at least an fp32 entry")
        for key, val in v.items():
            if not (val > 0 and math.isfinite(val)):
                raise ValueError(f"peak_tops[{key}] must be a positive number, got {val}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DeviceSpec:
        if self.idle_w > self.tdp_w:
            raise ValueError(f"idle_w ({self.idle_w}) cannot exceed tdp_w ({self.tdp_w})")
        missing = [p for p in self.precisions if p not in self.peak_tops]
        if missing:
            raise ValueError(f"precisions {missing} have no peak_tops entry")
        return self

    @property
    def id(self) -> str:
        """Stable id: the name plus a short hash of every figure, so an edited spec gets a new id
        (and never reuses cached measurements made under the old one)."""
        payload = self.model_dump(exclude={"description"})
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{_slug(self.name)}-{digest}"

    def peak(self, precision: str) -> float:
        """Peak TOPS at ``precision``, falling back to fp32 where the device has no faster path."""
        return float(self.peak_tops.get(precision, self.peak_tops["fp32"]))

    def state_features(self) -> np.ndarray:
        """Fixed-length (``FEATURE_DIM``) float32 vector for the MDP observation.

        Magnitudes span orders (a CPU's 1 TOPS to an H100's 2000), so they enter as
        log10 scaled to roughly [0, 1]; ratios int8/fp32 and fp16/fp32 say what quantization
        can gain on this device.
        """
        fp32 = self.peak("fp32")
        feats = [
            *(1.0 if self.kind == k else 0.0 for k in KINDS),
            _log_scale(fp32, 4.0),
            _log_scale(self.peak("fp16"), 4.0),
            _log_scale(self.peak("int8"), 4.0),
            _log_scale(self.memory_bandwidth_gbs, 4.0),
            _log_scale(self.memory_gb, 3.0),
            _log_scale(self.tdp_w, 3.0),
            min(self.idle_w / self.tdp_w, 1.0),
            *(1.0 if p in self.precisions else 0.0 for p in PRECISIONS),
            float(self.tensor_cores or self.vnni),
            # ratios capped at 64x: log2(ratio)/6 in [0, 1]
            min(max(math.log2(self.peak("int8") / fp32), 0.0), 6.0) / 6.0,
            min(max(math.log2(self.peak("fp16") / fp32), 0.0), 6.0) / 6.0,
        ]
        out = np.asarray(feats, dtype=np.float32)
        assert out.shape == (FEATURE_DIM,)
        return np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0)


def _log_scale(x: float, decades: float) -> float:
    return float(np.clip(math.log10(1.0 + max(x, 0.0)) / decades, 0.0, 1.0))


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


# ---------------------------------------------------------------- loading


def devices_dir() -> Path:
    """Folder of the bundled device YAML files."""
    return Path(str(importlib.resources.files("hadmc.configs") / "devices"))


def list_devices(extra_dir: str | Path | None = None) -> list[str]:
    """Names of the bundled device specs (plus those in ``extra_dir``), and ``local``."""
    names = {p.stem for p in devices_dir().glob("*.yaml")}
    if extra_dir is not None:
        names |= {p.stem for p in Path(extra_dir).glob("*.yaml")}
    return sorted(names) + ["local"]


def load_device_spec(name_or_path: str | Path, search_dir: str | Path | None = None) -> DeviceSpec:
    """Load a device spec by bundled name (``rtx-4090``), file path, or ``local``/``auto``.

    :param name_or_path: name of a file in ``configs/devices`` (without ``.yaml``), a path to a
        YAML file, ``local``/``auto`` (detect this machine, GPU first), ``local-cpu``/``local-gpu``
    :param search_dir: an extra folder of user device YAMLs, searched before the bundled ones
    """
    text = str(name_or_path)
    if text in ("local", "auto"):
        return detect_local()
    if text in ("local-cpu", "local-gpu"):
        return detect_local(prefer=text.split("-")[1])
    path = Path(text)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        candidates = ([Path(search_dir) / f"{text}.yaml"] if search_dir else []) + [devices_dir() / f"{text}.yaml"]
        found = next((c for c in candidates if c.exists()), None)
        if found is None:
            if path.suffix in (".yaml", ".yml"):
                raise ConfigError(f"device spec file {path} does not exist")
            raise ConfigError(
                f"unknown device {text!r}; valid names: {', '.join(list_devices(search_dir))}, or a path to a YAML file"
            )
        path = found
    data = load_mapping(path, "device spec", ConfigError)
    data.setdefault("name", path.stem)
    try:
        return DeviceSpec.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"device spec {path} is invalid: {problems}") from exc


# ---------------------------------------------------------------- detection


def cpu_info() -> dict[str, object]:
    """This CPU as the OS reports it: model, ISA flags, clock (MHz), physical cores, memory (GB)."""
    model, flags, mhz = platform.processor() or platform.machine(), set(), 0.0
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and value:
            model = value
        elif key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz":
            mhz = max(mhz, float(value))
    try:
        import psutil

        cores = psutil.cpu_count(logical=False) or psutil.cpu_count() or os.cpu_count() or 1
        freq = psutil.cpu_freq()
        if freq and freq.max:
            mhz = freq.max
        mem_gb = psutil.virtual_memory().total / 1e9
    except Exception:  # psutil is a dependency, but detection must never fail on odd systems
        cores, mem_gb = os.cpu_count() or 1, 8.0
    nominal = re.search(r"@\s*([0-9.]+)\s*GHz", str(model))
    if nominal:
        mhz = float(nominal.group(1)) * 1000.0
    # "cpu MHz" moves with frequency scaling; rounding keeps the device id stable across runs
    mhz = round(mhz / 100.0) * 100.0
    return {"model": model, "flags": flags, "mhz": mhz or 2000.0, "cores": int(cores), "memory_gb": mem_gb}


def cpu_spec_from_info(model: str, flags: set[str], mhz: float, cores: int, memory_gb: float) -> DeviceSpec:
    """Build a CPU DeviceSpec from what the OS reports (pure: testable with any inputs).

    Peak fp32 = cores x GHz x lanes x 2 (FMA) x 2 FMA ports; VNNI gives 4x that in int8
    (4 int8 products per 32-bit lane); fp16 runs at the fp32 rate unless the CPU has native
    fp16 arithmetic (avx512_fp16). Bandwidth and power are not visible to the OS: estimated.
    """
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    ghz = mhz / 1000.0
    fp32 = cores * ghz * lanes * 2 * 2 / 1000.0
    vnni = bool({"avx512_vnni", "avx_vnni", "avx512vnni"} & flags)
    int8 = fp32 * (4 if vnni else 2)
    fp16 = fp32 * (2 if "avx512_fp16" in flags else 1)
    isa = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "sse4")))
    return DeviceSpec(
        name="local-cpu",
        kind="cpu",
        peak_tops={"fp32": round(fp32, 4), "fp16": round(fp16, 4), "int8": round(int8, 4)},
        memory_bandwidth_gbs=round(max(10.0, 6.0 * cores), 1),
        memory_gb=round(memory_gb, 1),
        tdp_w=round(max(15.0, 5.0 * cores), 1),
        idle_w=round(max(2.0, 1.0 * cores), 1),
        precisions=["fp32", "int8"],
        tensor_cores=False,
        vnni=vnni,
        backend="ort-cpu",
        energy="auto",
        estimated_fields=["peak_tops", "memory_bandwidth_gbs", "tdp_w", "idle_w"],
        description=f"detected: {model}, {cores} cores at {mhz:.0f} MHz",
        host={"cpu_model": model, "cores": cores, "mhz": round(mhz, 1), "isa": isa},
    )


def _nvml_gpu_spec(index: int = 0) -> DeviceSpec | None:
    """GPU spec from NVML, or None when NVML or a GPU is absent."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded: no GPU here
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        if pynvml.nvmlDeviceGetCount() <= index:
            return None
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        name = pynvml.nvmlDeviceGetName(handle)
        name = name.decode() if isinstance(name, bytes) else name
        mem_gb = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9
        try:
            tdp_w = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
        except Exception:
            tdp_w = 250.0
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        uuid = pynvml.nvmlDeviceGetUUID(handle)
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
    finally:
        pynvml.nvmlShutdown()
    return gpu_spec_from_info(name, mem_gb, tdp_w, (major, minor), index=index, uuid=uuid)


def gpu_spec_from_info(
    name: str, memory_gb: float, tdp_w: float, capability: tuple[int, int], index: int = 0, uuid: str = ""
) -> DeviceSpec:
    """GPU spec from NVML facts: peak figures come from the bundled spec whose name matches the
    GPU's (e.g. "NVIDIA H100 80GB HBM3" -> h100), otherwise they are rough estimates."""
    key = _slug(name)
    known = None
    for path in sorted(devices_dir().glob("*.yaml")):
        stem = path.stem
        token = stem.replace("-", "")
        if token and token in key.replace("-", ""):
            known = load_device_spec(path)
            break
    tensor_cores = capability >= (7, 0)
    host = {"gpu_name": name, "gpu_index": index, "uuid": uuid, "compute_capability": f"{capability[0]}.{capability[1]}"}
    if known is not None:
        data = known.model_dump()
        data.update(name=f"local-{known.name}", memory_gb=round(memory_gb, 1), tdp_w=tdp_w, host=host)
        data["idle_w"] = min(data["idle_w"], tdp_w)
        data["description"] = f"detected {name}; peaks from bundled spec {known.name}"
        return DeviceSpec.model_validate(data)
    fp32 = 20.0
    return DeviceSpec(
        name=f"local-{key}",
        kind="gpu",
        peak_tops={"fp32": fp32, "fp16": fp32 * (8 if tensor_cores else 2), "int8": fp32 * (16 if tensor_cores else 4)},
        memory_bandwidth_gbs=500.0,
        memory_gb=round(memory_gb, 1),
        tdp_w=tdp_w,
        idle_w=min(0.1 * tdp_w, tdp_w),
        precisions=["fp32", "fp16", "int8"] if capability >= (6, 1) else ["fp32", "fp16"],
        tensor_cores=tensor_cores,
        backend="ort-cuda",
        energy="auto",
        estimated_fields=["peak_tops", "memory_bandwidth_gbs", "idle_w"],
        description=f"detected {name} (no bundled spec matched; peaks estimated)",
        host=host,
    )


@functools.lru_cache(maxsize=4)
def detect_local(prefer: str = "auto") -> DeviceSpec:
    """Spec of this machine: the first NVML GPU when present (``prefer="auto"`` or ``"gpu"``),
    else the CPU (model, cores, ISA flags such as avx512_vnni).

    :param prefer: ``auto`` (GPU if present), ``gpu`` (error if none) or ``cpu``
    """
    if prefer not in ("auto", "gpu", "cpu"):
        raise ConfigError(f"prefer must be auto, gpu or cpu, got {prefer!r}")
    if prefer in ("auto", "gpu"):
        gpu = _nvml_gpu_spec()
        if gpu is not None:
            return gpu
        if prefer == "gpu":
            raise ConfigError("no NVIDIA GPU found through NVML (pip install 'hadmc[gpu]' and check the driver)")
    info = cpu_info()
    return cpu_spec_from_info(info["model"], info["flags"], info["mhz"], info["cores"], info["memory_gb"])
