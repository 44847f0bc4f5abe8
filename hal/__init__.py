"""Hardware abstraction layer: device specs, latency + energy probes (also relative, in
interleaved blocks), the measuring host's identity, measurement cache, remote probe.

Everything here imports lazily-heavy libraries (ONNX Runtime, TensorRT, NVML, FastAPI) only
when a probe that needs them is built.
"""

from __future__ import annotations

from .artifact import InputSpec, graph_inputs, model_bytes, sha256_hex
from .cache import CachedEnergyProbe, CachedLatencyProbe, MeasurementCache, cached_probe
from .device import FEATURE_DIM, DeviceSpec, detect_local, list_devices, load_device_spec
from .host import HostInfo, describe_host, spec_mismatches
from .energy import (
    ENERGY_PROBES,
    EnergyProbe,
    EnergyResult,
    EstimatedEnergyProbe,
    JetsonEnergyProbe,
    NvmlEnergyProbe,
    RaplEnergyProbe,
    get_energy_probe,
)
from .latency import (
    LATENCY_PROBES,
    LatencyProbe,
    LatencyResult,
    OrtCpuProbe,
    OrtCudaProbe,
    OrtTrtProbe,
    RuntimeSession,
    TorchEagerProbe,
    get_latency_probe,
    register_latency_probe,
)
from .measure import Measurement, lazy_runner, measure_latency_and_energy
from .results import RelativeLatency


def __getattr__(name: str):
    # TensorRTProbe's module is light, but keep it out of `import hadmc.hal` on CPU machines
    if name == "TensorRTProbe":
        from .tensorrt_probe import TensorRTProbe

        return TensorRTProbe
    if name in ("RemoteProbe", "RemoteEnergyProbe"):
        from . import remote

        return getattr(remote, name)
    if name in ("create_app", "serve"):
        from . import probe_server

        return getattr(probe_server, name)
    raise AttributeError(f"module 'hadmc.hal' has no attribute {name!r}")


__all__ = [
    "FEATURE_DIM",
    "DeviceSpec",
    "detect_local",
    "list_devices",
    "load_device_spec",
    "HostInfo",
    "describe_host",
    "spec_mismatches",
    "RelativeLatency",
    "LatencyResult",
    "LatencyProbe",
    "OrtCpuProbe",
    "OrtCudaProbe",
    "OrtTrtProbe",
    "TorchEagerProbe",
    "TensorRTProbe",
    "RemoteProbe",
    "RemoteEnergyProbe",
    "RuntimeSession",
    "LATENCY_PROBES",
    "get_latency_probe",
    "register_latency_probe",
    "EnergyResult",
    "EnergyProbe",
    "EstimatedEnergyProbe",
    "NvmlEnergyProbe",
    "RaplEnergyProbe",
    "JetsonEnergyProbe",
    "ENERGY_PROBES",
    "get_energy_probe",
    "MeasurementCache",
    "CachedLatencyProbe",
    "CachedEnergyProbe",
    "cached_probe",
    "Measurement",
    "lazy_runner",
    "measure_latency_and_energy",
    "InputSpec",
    "graph_inputs",
    "model_bytes",
    "sha256_hex",
]
