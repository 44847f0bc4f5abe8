"""Native TensorRT 10/11 latency probe.

TensorRT 10 deprecated and 11 removed the FP16/INT8 builder flags and the INT8 calibrators:
precision now comes from the network itself. So the engine is built from a QDQ ONNX (int8)
or an fp16 ONNX as a *strongly typed* network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``),
with no precision flags and no calibrator; a timing cache on disk makes rebuilds fast.
Timing uses CUDA events recorded on the execution stream around ``execute_async_v3``.

The build configuration is assembled by pure functions (``plan_build``) that are tested
without TensorRT; only ``build_engine`` and the probe touch the library, imported lazily.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hadmc.errors import ProbeError
from hadmc.files import write_atomic

from .artifact import InputSpec, graph_inputs
from .device import DeviceSpec, detect_local
from .latency import LatencyProbe, RuntimeSession

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'hadmc[tensorrt]' (TensorRT 10+, cuda-python) on a machine with an NVIDIA GPU"


@dataclass(frozen=True)
class TrtBuildPlan:
    """Everything that configures an engine build, as plain data.

    :param network_flags: NetworkDefinitionCreationFlag names (always STRONGLY_TYPED)
    :param builder_flags: BuilderFlag names set on the config (never FP16/INT8: types come from the graph)
    :param precision: what the graph carries: ``int8-qdq``, ``fp16`` or ``fp32``
    :param profiles: input name -> (min, opt, max) shapes for dynamic inputs
    :param static_shapes: input name -> shape of inputs with fixed dims
    :param workspace_bytes: workspace memory-pool limit
    :param optimization_level: builder optimization level (0-5; 3 is TensorRT's default)
    :param timing_cache: path of the timing cache file
    """

    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    precision: str
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]]
    static_shapes: dict[str, tuple[int, ...]]
    workspace_bytes: int
    optimization_level: int
    timing_cache: str
    notes: list[str] = field(default_factory=list)


def graph_precision(data: bytes) -> str:
    """``int8-qdq`` if the graph has Q/DQ nodes, ``fp16`` if it computes in float16, else ``fp32``."""
    import onnx

    model = onnx.load_model_from_string(data)
    ops = {n.op_type for n in model.graph.node}
    if {"QuantizeLinear", "DequantizeLinear"} & ops:
        return "int8-qdq"
    fp16 = onnx.TensorProto.FLOAT16
    if any(i.data_type == fp16 for i in model.graph.initializer) or any(
        v.type.tensor_type.elem_type == fp16 for v in model.graph.input
    ):
        return "fp16"
    return "fp32"


def _dynamic_dims(data: bytes) -> dict[str, list[bool]]:
    import onnx

    model = onnx.load_model_from_string(data)
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for v in model.graph.input:
        if v.name in inits:
            continue
        out[v.name] = [not (d.HasField("dim_value") and d.dim_value > 0) for d in v.type.tensor_type.shape.dim]
    return out


def plan_build(
    data: bytes,
    input_shape: tuple[int, ...] | None = None,
    max_batch: int | None = None,
    workspace_bytes: int = 1 << 30,
    optimization_level: int = 3,
    cache_dir: str | Path | None = None,
    device_key: str = "gpu",
    trt_version: str = "unknown",
) -> TrtBuildPlan:
    """Assemble the engine build configuration for a serialized ONNX model (pure).

    :param data: ONNX bytes (QDQ int8, fp16 or fp32)
    :param input_shape: shape of the first input to optimise for (default: graph, batch 1)
    :param max_batch: largest batch a dynamic batch dim must accept (default: the opt batch)
    :param workspace_bytes: workspace memory-pool limit
    :param optimization_level: builder optimization level 0-5
    :param cache_dir: folder of timing caches
    :param device_key: device id; a timing cache is only valid for one GPU model and TRT version
    :param trt_version: TensorRT version string (part of the cache name)
    """
    if not 0 <= optimization_level <= 5:
        raise ProbeError(f"optimization_level must be in 0..5, got {optimization_level}")
    specs = graph_inputs(data, input_shape)
    dynamic = _dynamic_dims(data)
    profiles: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}
    static: dict[str, tuple[int, ...]] = {}
    for spec in specs:
        dyn = dynamic.get(spec.name, [False] * len(spec.shape))
        if not any(dyn):
            static[spec.name] = spec.shape
            continue
        if any(dyn[1:]):
            # only the batch dim may stay open: other dims take the given/opt shape exactly
            log.debug("input %s has dynamic non-batch dims; fixing them to %s", spec.name, spec.shape)
        opt = spec.shape
        top = max(max_batch or opt[0], opt[0])
        mn = tuple(1 if (i == 0 and dyn[0]) else s for i, s in enumerate(opt))
        mx = tuple(top if (i == 0 and dyn[0]) else s for i, s in enumerate(opt))
        profiles[spec.name] = (mn, opt, mx)
    key = hashlib.sha256(f"{device_key}|{trt_version}".encode()).hexdigest()[:16]
    cache_root = Path(cache_dir or Path(tempfile.gettempdir()) / "hadmc-trt-cache")
    return TrtBuildPlan(
        network_flags=("STRONGLY_TYPED",),
        builder_flags=(),
        precision=graph_precision(data),
        profiles=profiles,
        static_shapes=static,
        workspace_bytes=int(workspace_bytes),
        optimization_level=int(optimization_level),
        timing_cache=str(cache_root / f"timing-{key}.cache"),
    )


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise ProbeError(f"the tensorrt backend needs TensorRT: {INSTALL_HINT}") from exc
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        raise ProbeError(f"TensorRT {trt.__version__} is too old; the tensorrt backend needs 10 or newer")
    return trt


def build_engine(trt: Any, data: bytes, plan: TrtBuildPlan) -> bytes:
    """Build a serialized engine per ``plan`` with the TensorRT Python API."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in plan.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ProbeError(f"TensorRT's ONNX parser rejected the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    config.builder_optimization_level = plan.optimization_level
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    cache_path = Path(plan.timing_cache)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    if plan.profiles:
        profile = builder.create_optimization_profile()
        for name, (mn, opt, mx) in plan.profiles.items():
            profile.set_shape(name, mn, opt, mx)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ProbeError("TensorRT could not build an engine for this model (see the TensorRT log above)")
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache_path, bytes(memoryview(config.get_timing_cache().serialize())), ProbeError)
    return bytes(serialized)


class TensorRTProbe(LatencyProbe):
    """Native TensorRT engine latency, timed with CUDA events.

    :param device_index: CUDA device
    :param cache_dir: folder of timing caches
    :param workspace_mb: workspace memory-pool limit in MiB
    :param optimization_level: builder optimization level 0-5
    """

    name = "tensorrt"
    self_timed = True
    measures_on = "gpu"

    def __init__(
        self,
        device: DeviceSpec | None = None,
        device_index: int = 0,
        cache_dir: str | Path | None = None,
        workspace_mb: int = 1024,
        optimization_level: int = 3,
        threads: int | None = None,
        **timing: Any,
    ):
        self._trt = import_tensorrt()
        try:
            import torch
        except ImportError as exc:
            raise ProbeError(f"the tensorrt backend uses torch CUDA tensors and events: {INSTALL_HINT}") from exc
        if not torch.cuda.is_available():
            raise ProbeError("the tensorrt backend needs a CUDA GPU; torch.cuda.is_available() is False here")
        self._torch = torch
        super().__init__(device, **timing)
        self.device_index = int(device_index)
        self.cache_dir = cache_dir
        self.workspace_mb = int(workspace_mb)
        self.optimization_level = int(optimization_level)

    def _default_device(self) -> DeviceSpec:
        return detect_local("gpu")

    def backend_settings(self) -> dict[str, Any]:
        return {
            "tensorrt": self._trt.__version__,
            "workspace_mb": self.workspace_mb,
            "optimization_level": self.optimization_level,
            "strongly_typed": True,
            "timing": "cuda-events",
        }

    def plan(self, data: bytes, input_shape: tuple[int, ...] | None = None) -> TrtBuildPlan:
        return plan_build(
            data,
            input_shape,
            workspace_bytes=self.workspace_mb << 20,
            optimization_level=self.optimization_level,
            cache_dir=self.cache_dir,
            device_key=self.device_id,
            trt_version=self._trt.__version__,
        )

    def _engine_context(self, data: bytes, inputs: list[InputSpec]):
        trt, torch = self._trt, self._torch
        plan = self.plan(data, inputs[0].shape)
        engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(build_engine(trt, data, plan))
        context = engine.create_execution_context()
        dev = torch.device("cuda", self.device_index)
        shapes = {s.name: s.shape for s in inputs}
        buffers: dict[str, Any] = {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                context.set_input_shape(name, shapes[name])
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            dtype = torch.from_numpy(np.zeros(1, dtype=trt.nptype(engine.get_tensor_dtype(name)))).dtype
            shape = tuple(context.get_tensor_shape(name))
            buffers[name] = torch.zeros(shape, dtype=dtype, device=dev)
            context.set_tensor_address(name, buffers[name].data_ptr())
        outputs = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors) if engine.get_tensor_mode(engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT]
        return engine, context, buffers, outputs

    def _runner(self, data: bytes, inputs: list[InputSpec]) -> Callable[[], float]:
        torch = self._torch
        engine, context, buffers, _ = self._engine_context(data, inputs)
        for spec in inputs:
            buffers[spec.name].copy_(torch.randn(spec.shape) if np.issubdtype(spec.dtype, np.floating) else torch.zeros(spec.shape))
        stream = torch.cuda.Stream(device=self.device_index)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def run() -> float:
            start.record(stream)
            if not context.execute_async_v3(stream.cuda_stream):
                raise ProbeError("TensorRT execute_async_v3 failed")
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end)

        run.engine = engine  # keep the engine alive as long as the runner
        return run

    def _open(self, data: bytes, inputs: list[InputSpec]) -> RuntimeSession:
        torch = self._torch
        engine, context, buffers, outputs = self._engine_context(data, inputs)
        stream = torch.cuda.Stream(device=self.device_index)

        def run_feed(feed: dict[str, np.ndarray]) -> np.ndarray:
            for name, arr in feed.items():
                if tuple(arr.shape) != tuple(buffers[name].shape):
                    raise ProbeError(f"the engine was built for {tuple(buffers[name].shape)}, got a batch of shape {arr.shape}")
                buffers[name].copy_(torch.from_numpy(arr))
            context.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            return buffers[outputs[0]].float().cpu().numpy()

        rs = RuntimeSession(run_feed, inputs, inner=engine)
        rs._dynamic_batch = False
        return rs
