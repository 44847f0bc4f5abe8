"""Latency probes: measure an ONNX artifact on a backend with one documented methodology.

Methodology (DESIGN section 4): warm-up of at least ``warmup_runs`` runs AND ``warmup_s``
seconds (caches, allocator and kernel selection settle), then at least ``min_iterations``
timed runs AND ``min_seconds`` seconds, batch 1 unless the input shape says otherwise, a
fixed thread count. Each run is timed on its own with ``time.perf_counter_ns`` (wall clock;
GPU backends synchronise inside the run), so the result carries the raw samples and their
median, p90, p99, mean, std and coefficient of variation.

Probes are registered by name; ``get_latency_probe("ort-cpu")`` is the default.
"""

from __future__ import annotations

import abc
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np

from hadmc.errors import ProbeError
from hadmc.files import finite_number
from hadmc.registry import Registry

from .artifact import InputSpec, ModelLike, graph_inputs, model_bytes, random_feed, sha256_hex
from .device import DeviceSpec, detect_local
from .energy import EnergyProbe, get_energy_probe
from .host import HostInfo, describe_host
from .interleave import median_interval, time_interleaved
from .results import LatencyResult, RelativeLatency

log = logging.getLogger(__name__)

#: options of ``LatencyProbe.measure_relative`` and their defaults (see ``hal.interleave``)
RELATIVE_DEFAULTS: dict[str, Any] = {"max_spread": 0.02, "max_rounds": 4, "block_s": 0.05, "min_pairs": 10}

#: Latency probe classes by name. Optional backends (TensorRT, the remote client) are lazy
#: ``"module:Class"`` targets, so they cost nothing until asked for.
LATENCY_PROBES: Registry[type[LatencyProbe]] = Registry("latency probe", ProbeError)


def latency_stats(samples_ms: list[float] | np.ndarray) -> dict[str, float]:
    """Summary statistics of timed samples (ms)."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise ProbeError("no valid latency samples were recorded")
    mean = float(arr.mean())
    std = float(arr.std(ddof=1)) if arr.size > 1 else 0.0
    return {
        "median_ms": float(np.median(arr)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": mean,
        "std_ms": std,
        "cov": std / mean if mean > 0 else 0.0,
        "iterations": int(arr.size),
    }


def time_runs(
    run_once: Callable[[], Any],
    warmup_runs: int = 10,
    warmup_s: float = 0.2,
    min_iterations: int = 100,
    min_seconds: float = 1.0,
    max_seconds: float = 60.0,
    self_timed: bool = False,
) -> list[float]:
    """Warm up, then time ``run_once`` until both the iteration and the time minimum are met.

    :param run_once: one inference (must block until the result is ready)
    :param warmup_runs: minimum untimed runs before timing
    :param warmup_s: minimum seconds of untimed runs before timing
    :param min_iterations: minimum timed runs
    :param min_seconds: minimum seconds of timed runs
    :param max_seconds: safety cap on the timed phase for very slow models; timing stops
        there once at least 10 runs are in (logged as a warning)
    :param self_timed: ``run_once`` returns its own latency in ms (e.g. from CUDA events),
        used instead of the host clock
    :return: per-run latencies in milliseconds
    """
    start = time.perf_counter()
    done = 0
    while done < warmup_runs or time.perf_counter() - start < warmup_s:
        run_once()
        done += 1
    samples: list[float] = []
    clock = time.perf_counter_ns
    t_begin = clock()
    while True:
        t0 = clock()
        own = run_once()
        t1 = clock()
        samples.append(float(own) if self_timed else (t1 - t0) / 1e6)
        elapsed = (t1 - t_begin) / 1e9
        if len(samples) >= min_iterations and elapsed >= min_seconds:
            break
        if elapsed >= max_seconds and len(samples) >= 10:
            log.warning("timing stopped at max_seconds=%.1f after %d runs (min_iterations=%d)", max_seconds, len(samples), min_iterations)
            break
    return samples


class RuntimeSession:
    """An inference session of an exported artifact in the probe's own runtime and settings,
    for computing accuracy where the latency is measured. ``run(batch) -> logits``."""

    def __init__(self, run_feed: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: list[InputSpec], inner: Any = None):
        self._run_feed = run_feed
        self.inputs = inputs
        #: the backend's own session object (an ``onnxruntime.InferenceSession`` for ort-*)
        self.inner = inner

    def run(self, batch: np.ndarray) -> np.ndarray:
        """Logits of the first output for a batch fed to the first input. A graph exported with
        a fixed batch of 1 is run sample by sample."""
        spec = self.inputs[0]
        x = np.ascontiguousarray(np.asarray(batch), dtype=spec.dtype)
        if x.ndim != len(spec.shape):
            raise ProbeError(f"batch has rank {x.ndim}, the model input {spec.name!r} expects rank {len(spec.shape)}")
        fixed_one = spec.shape[0] == 1 and not self._dynamic_batch
        if fixed_one and x.shape[0] > 1:
            return np.concatenate([self._run_feed({spec.name: x[i : i + 1]}) for i in range(x.shape[0])])
        return self._run_feed({spec.name: x})

    _dynamic_batch = False


class LatencyProbe(abc.ABC):
    """Measures latency of ONNX artifacts on one backend.

    :param device: the DeviceSpec measured on (its id goes into results and cache keys);
        defaults to the detected local device for the backend
    :param warmup_runs: minimum untimed runs before timing
    :param warmup_s: minimum seconds of warm-up
    :param min_iterations: minimum timed runs (defaults keep a 32x32 CNN at about 1-2 s)
    :param min_seconds: minimum seconds of timed runs
    :param max_seconds: cap of the timed phase for very slow models (at least 10 runs)
    :param seed: seed of the random input tensors
    """

    #: registry name
    name: ClassVar[str] = ""
    #: the runner returns its own latency in ms (device events) instead of host timing
    self_timed: ClassVar[bool] = False
    #: what the runtime computes on: the host a figure is recorded against
    measures_on: ClassVar[Literal["cpu", "gpu"]] = "cpu"

    def __init__(
        self,
        device: DeviceSpec | None = None,
        warmup_runs: int = 10,
        warmup_s: float = 0.2,
        min_iterations: int = 100,
        min_seconds: float = 1.0,
        max_seconds: float = 60.0,
        seed: int = 0,
    ):
        finite = all(finite_number(x) for x in (warmup_runs, warmup_s, min_iterations, min_seconds, max_seconds))
        if not finite or warmup_runs < 0 or min_iterations < 1 or warmup_s < 0 or min_seconds < 0 or max_seconds <= 0:
            raise ProbeError(
                "timing settings must be finite numbers, non-negative (min_iterations >= 1, max_seconds > 0); got "
                f"warmup_runs={warmup_runs} warmup_s={warmup_s} min_iterations={min_iterations} "
                f"min_seconds={min_seconds} max_seconds={max_seconds}"
            )
        self._device = device
        self.warmup_runs = int(warmup_runs)
        self.warmup_s = float(warmup_s)
        self.min_iterations = int(min_iterations)
        self.min_seconds = float(min_seconds)
        self.max_seconds = float(max_seconds)
        self.seed = int(seed)

    # -- identity ---------------------------------------------------------------------
    @property
    def device(self) -> DeviceSpec:
        if self._device is None:
            self._device = self._default_device()
        return self._device

    def _default_device(self) -> DeviceSpec:
        return detect_local()

    @property
    def device_id(self) -> str:
        return self.device.id

    def timing_settings(self) -> dict[str, Any]:
        return {
            "warmup_runs": self.warmup_runs,
            "warmup_s": self.warmup_s,
            "min_iterations": self.min_iterations,
            "min_seconds": self.min_seconds,
            "max_seconds": self.max_seconds,
        }

    def settings(self) -> dict[str, Any]:
        """Everything that changes a measurement (goes into cache keys): backend, methodology,
        backend options and runtime versions."""
        return {"backend": self.name, **self.timing_settings(), **self.backend_settings()}

    def backend_settings(self) -> dict[str, Any]:
        return {}

    @property
    def threads(self) -> int | None:
        return None

    # -- backend hooks ----------------------------------------------------------------
    @abc.abstractmethod
    def _open(self, data: bytes, inputs: list[InputSpec]) -> RuntimeSession:
        """A session on this backend for the serialized model."""

    def _meta(self) -> dict[str, Any]:
        return {}

    def _runner(self, data: bytes, inputs: list[InputSpec]) -> Callable[[], Any]:
        """One inference on fixed inputs, what the timing loop calls."""
        sess = self._open(data, inputs)
        feed = random_feed(inputs, self.seed)
        return lambda: sess._run_feed(feed)

    # -- public -----------------------------------------------------------------------
    def session(self, model: ModelLike, input_shape: tuple[int, ...] | None = None) -> RuntimeSession:
        """Session of ``model`` in this probe's runtime and settings, ``.run(batch) -> logits``."""
        data = model_bytes(model)
        return self._open(data, graph_inputs(data, input_shape))

    def prepare(self, model: ModelLike, input_shape: tuple[int, ...] | None = None) -> Callable[[], None]:
        """A zero-argument callable that runs one inference of ``model`` on fixed inputs
        (what energy probes loop over)."""
        data = model_bytes(model)
        run = self._runner(data, graph_inputs(data, input_shape))
        return lambda: None if run() is None else None

    def energy_probe(self, name: str = "auto", **settings: Any) -> EnergyProbe:
        """The energy probe that measures where this probe measures latency (``auto`` picks a
        counter of this probe's device or falls back to the labelled estimate)."""
        return get_energy_probe(name, self.device, **settings)

    def result_settings(self, inputs: list[InputSpec]) -> dict[str, Any]:
        """The settings recorded with (and keying the cache of) a measurement of these inputs."""
        return {**self.settings(), "input_shape": list(inputs[0].shape)}

    def cache_key(self, model: Any, input_shape: tuple[int, ...] | None = None) -> tuple[str, dict[str, Any]] | None:
        """(SHA-256 of the artifact, settings) that identify a measurement of ``model``, or
        None where the model is not an ONNX artifact and cannot be keyed."""
        data = model_bytes(model)
        return sha256_hex(data), self.result_settings(graph_inputs(data, input_shape))

    def host(self) -> HostInfo:
        """The machine this probe's figures are measured on (recorded with every figure)."""
        return describe_host(self.measures_on, int(getattr(self, "device_index", 0)))

    def _result(self, samples: list[float], inputs: list[InputSpec], data: bytes, wall_s: float, cpu_s: float) -> LatencyResult:
        return LatencyResult(
            **latency_stats(samples),
            threads=self.threads,
            batch=int(inputs[0].shape[0]) if inputs[0].shape else 1,
            input_shape=list(inputs[0].shape),
            backend=self.name,
            device_id=self.device_id,
            provenance="measured",
            samples_ms=[round(s, 6) for s in samples],
            settings=self.result_settings(inputs),
            onnx_sha256=sha256_hex(data),
            wall_s=wall_s,
            cpu_s=cpu_s,
            load_avg=load_average(),
            host=self.host().model_dump(),
            meta=self._meta(),
        )

    def measure(self, model: ModelLike, input_shape: tuple[int, ...] | None = None) -> LatencyResult:
        """Latency of ``model`` (ONNX bytes or path) per the methodology above. To reuse the
        figure of an identical earlier measurement, wrap the probe: ``cached_probe(probe, cache)``.

        :param model: serialized ONNX model or a path to one
        :param input_shape: shape of the first input; read from the graph (symbolic dims -> 1) if None
        """
        data = model_bytes(model)
        inputs = graph_inputs(data, input_shape)
        t0, c0 = time.perf_counter(), time.process_time()
        samples = time_runs(self._runner(data, inputs), **self.timing_settings(), self_timed=self.self_timed)
        return self._result(samples, inputs, data, time.perf_counter() - t0, time.process_time() - c0)

    def relative_settings(self, inputs: list[InputSpec], **options: Any) -> dict[str, Any]:
        """Settings of a relative measurement (``measure_relative``'s options included)."""
        return {**self.result_settings(inputs), "relative": {**RELATIVE_DEFAULTS, **options}}

    def measure_relative(
        self,
        model: ModelLike,
        reference: ModelLike,
        input_shape: tuple[int, ...] | None = None,
        **options: Any,
    ) -> RelativeLatency:
        """Latency of ``model`` relative to ``reference``, both timed in alternating blocks on
        this backend (see ``hal.interleave``): a ratio with its spread that a busy machine does
        not reorder, re-measured while the spread is above ``max_spread``, flagged ``noisy``
        when ``max_rounds`` did not bring it down.

        :param model: the candidate (ONNX bytes or path)
        :param reference: the artifact to compare against, e.g. the uncompressed model
        :param input_shape: shape of the first input of both (from each graph if None)
        :param options: ``max_spread`` (0.02), ``max_rounds`` (4), ``block_s`` (0.05),
            ``min_pairs`` (10); the timing minimums are this probe's, per artifact
        """
        unknown = set(options) - set(RELATIVE_DEFAULTS)
        if unknown:
            raise ProbeError(f"unknown relative-measurement option(s) {sorted(unknown)}; valid: {sorted(RELATIVE_DEFAULTS)}")
        opts = {**RELATIVE_DEFAULTS, **options}
        data, ref = model_bytes(model), model_bytes(reference)
        inputs, ref_inputs = graph_inputs(data, input_shape), graph_inputs(ref, input_shape)
        # both sessions are open at once, so blocks alternate without reloading either
        run_ref, run_cand = self._runner(ref, ref_inputs), self._runner(data, inputs)
        timing = time_interleaved(run_ref, run_cand, **self.timing_settings(), self_timed=self.self_timed, **opts)
        ratio, low, high = median_interval(timing.pair_ratios)
        spread = (high - low) / (2.0 * ratio) if ratio > 0 else math.inf
        candidate = self._result(timing.candidate_ms, inputs, data, timing.wall_s[1], timing.cpu_s[1])
        return RelativeLatency(
            ratio=ratio,
            ratio_low=low,
            ratio_high=high,
            spread=spread,
            max_spread=float(opts["max_spread"]),
            noisy=spread > float(opts["max_spread"]),
            pairs=len(timing.pair_ratios),
            rounds=timing.rounds,
            block_runs=list(timing.block_runs),
            pair_ratios=[round(r, 6) for r in timing.pair_ratios],
            candidate=candidate.model_copy(update={"settings": self.relative_settings(inputs, **options)}),
            reference=self._result(timing.reference_ms, ref_inputs, ref, timing.wall_s[0], timing.cpu_s[0]),
        )


def load_average() -> list[float]:
    """The host's 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ---------------------------------------------------------------- ONNX Runtime backends


def _import_ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # a core dependency; only a broken install gets here
        raise ProbeError("onnxruntime is not importable; reinstall with pip install 'hadmc'") from exc
    # errors only: a provider that falls back is caught by the probe itself (_inference_session),
    # and ORT's per-session warnings (1.31 warns on every CUDA session) would bury the live display
    ort.set_default_logger_severity(3)
    return ort


class _OrtProbe(LatencyProbe):
    """Shared ONNX Runtime session set-up.

    :param threads: intra-op threads (fixed, so figures compare); inter-op is 1, sequential
    :param spinning: let idle ORT worker threads spin while latency is timed; the session
        ``prepare`` opens for an energy window never spins (it burns power without doing work)
    :param graph_optimization: ``all``, ``extended``, ``basic`` or ``disabled``
    """

    providers: ClassVar[list[Any]] = ["CPUExecutionProvider"]

    def __init__(self, device: DeviceSpec | None = None, threads: int = 1, spinning: bool = True, graph_optimization: str = "all", **timing: Any):
        super().__init__(device, **timing)
        if int(threads) < 1:
            raise ProbeError(f"threads must be >= 1, got {threads}")
        levels = {"all", "extended", "basic", "disabled"}
        if graph_optimization not in levels:
            raise ProbeError(f"graph_optimization must be one of {sorted(levels)}, got {graph_optimization!r}")
        self._threads = int(threads)
        self.spinning = bool(spinning)
        self.graph_optimization = graph_optimization
        self._ort = _import_ort()
        self._check_providers()

    def _check_providers(self) -> None:
        available = self._ort.get_available_providers()
        wanted = [p if isinstance(p, str) else p[0] for p in self._provider_list()]
        missing = [p for p in wanted if p not in available]
        if missing:
            raise ProbeError(
                f"backend {self.name!r} needs ONNX Runtime provider(s) {missing}, available: {available}. "
                f"{self._install_hint()}"
            )

    def _install_hint(self) -> str:
        return ""

    def _provider_list(self) -> list[Any]:
        return list(self.providers)

    @property
    def threads(self) -> int:
        return self._threads

    def backend_settings(self) -> dict[str, Any]:
        return {
            "threads": self._threads,
            "spinning": self.spinning,
            "graph_optimization": self.graph_optimization,
            "onnxruntime": self._ort.__version__,
            "providers": [p if isinstance(p, str) else p[0] for p in self._provider_list()],
        }

    def prepare(self, model: ModelLike, input_shape: tuple[int, ...] | None = None) -> Callable[[], None]:
        spinning, self.spinning = self.spinning, False
        try:
            return super().prepare(model, input_shape)
        finally:
            self.spinning = spinning

    def session_options(self):
        ort = self._ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = self._threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }[self.graph_optimization]
        so.log_severity_level = 3
        if not self.spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        return so

    def _inference_session(self, data: bytes, so=None):
        try:
            sess = self._ort.InferenceSession(data, sess_options=so or self.session_options(), providers=self._provider_list())
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
            raise ProbeError(f"ONNX Runtime ({self.name}) cannot load the model: {exc}") from exc
        # ORT falls back to the next provider (in the end the CPU) when one fails to start, for
        # instance when CUDA or cuDNN libraries are missing: figures taken then would be another
        # device's, so a session that does not run on the first provider asked for is an error
        wanted = [p if isinstance(p, str) else p[0] for p in self._provider_list()]
        running = sess.get_providers()
        if running[:1] != wanted[:1]:
            raise ProbeError(
                f"ONNX Runtime ({self.name}) could not start {wanted[0]} and fell back to {running}; "
                f"the provider's libraries (CUDA, cuDNN or TensorRT) are missing or do not match. {self._install_hint()}"
            )
        return sess

    def _open(self, data: bytes, inputs: list[InputSpec]) -> RuntimeSession:
        sess = self._inference_session(data)
        out_name = sess.get_outputs()[0].name

        def run_feed(feed: dict[str, np.ndarray]) -> np.ndarray:
            return sess.run([out_name], feed)[0]

        rs = RuntimeSession(run_feed, inputs, inner=sess)
        first = sess.get_inputs()[0].shape
        rs._dynamic_batch = bool(first) and not isinstance(first[0], int)
        return rs

    def _meta(self) -> dict[str, Any]:
        return {"onnxruntime": self._ort.__version__}


@LATENCY_PROBES.register("ort-cpu")
class OrtCpuProbe(_OrtProbe):
    """ONNX Runtime on the CPU (the default probe); one intra-op thread unless told."""

    name = "ort-cpu"

    def _default_device(self) -> DeviceSpec:
        return detect_local("cpu")

    def profile_nodes(self, model: ModelLike, input_shape: tuple[int, ...] | None = None, runs: int = 20) -> dict[str, float]:
        """Mean milliseconds per run spent in each graph node, from ONNX Runtime's profiler.

        Node names are those of the optimized graph ORT runs (fused nodes carry the name of the
        node they replaced), which lets the MDP see where time goes per layer group.

        :param runs: profiled runs after a warm-up of ``warmup_runs``
        """
        data = model_bytes(model)
        inputs = graph_inputs(data, input_shape)
        feed = random_feed(inputs, self.seed)
        so = self.session_options()
        warm = max(self.warmup_runs, 1)
        with tempfile.TemporaryDirectory(prefix="hadmc-prof-") as tmp:
            so.enable_profiling = True
            so.profile_file_prefix = os.path.join(tmp, "ort")
            sess = self._inference_session(data, so)
            # the profiler records from session creation on; warm-up runs are dropped by count
            for _ in range(warm + runs):
                sess.run(None, feed)
            path = sess.end_profiling()
            events = json.loads(Path(path).read_text())
        return node_times_from_profile(events, skip_runs=warm)


def node_times_from_profile(events: list[dict[str, Any]], skip_runs: int = 0) -> dict[str, float]:
    """Milliseconds per run for each node from ORT profiler events (``cat == "Node"``,
    ``name`` ending in ``_kernel_time``, ``dur`` in microseconds), ignoring the first
    ``skip_runs`` ``model_run`` events.

    Each node's figure is the median over the runs of its time in that run, so a run that the
    operating system preempted (a busy machine) does not inflate the nodes it happened to hit.
    """
    import bisect

    runs = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(runs) <= skip_runs:
        raise ProbeError(f"profile holds {len(runs)} runs, fewer than the {skip_runs} warm-up runs to skip")
    counted = runs[skip_runs:]
    starts = [r["ts"] for r in counted]
    per_run: dict[str, np.ndarray] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time") or e["ts"] < starts[0]:
            continue
        node = e["name"][: -len("_kernel_time")]
        i = bisect.bisect_right(starts, e["ts"]) - 1
        per_run.setdefault(node, np.zeros(len(counted)))[i] += float(e["dur"]) / 1000.0
    return {k: float(np.median(v)) for k, v in per_run.items()}


@LATENCY_PROBES.register("ort-cuda")
class OrtCudaProbe(_OrtProbe):
    """ONNX Runtime CUDA execution provider; inputs and outputs bound on the GPU (IO binding),
    so the timing is the device's, not the PCIe copies'."""

    name = "ort-cuda"
    measures_on = "gpu"
    providers: ClassVar[list[Any]] = ["CUDAExecutionProvider"]

    def __init__(self, device: DeviceSpec | None = None, threads: int = 1, device_index: int = 0, **kw: Any):
        self.device_index = int(device_index)
        super().__init__(device, threads=threads, **kw)

    def _install_hint(self) -> str:
        return "Install the GPU build: pip install 'hadmc[gpu]' (onnxruntime-gpu, and a CUDA driver)."

    def _provider_list(self) -> list[Any]:
        return [("CUDAExecutionProvider", {"device_id": self.device_index})]

    def _default_device(self) -> DeviceSpec:
        return detect_local("gpu")

    def _open(self, data: bytes, inputs: list[InputSpec]) -> RuntimeSession:
        sess = self._inference_session(data)
        ort = self._ort
        out_name = sess.get_outputs()[0].name

        def run_feed(feed: dict[str, np.ndarray]) -> np.ndarray:
            binding = sess.io_binding()
            for name, arr in feed.items():
                binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self.device_index))
            binding.bind_output(out_name, "cuda", self.device_index)
            sess.run_with_iobinding(binding)  # synchronises the stream before returning
            return binding.copy_outputs_to_cpu()[0]

        rs = RuntimeSession(run_feed, inputs, inner=sess)
        first = sess.get_inputs()[0].shape
        rs._dynamic_batch = bool(first) and not isinstance(first[0], int)
        return rs

    def _runner(self, data: bytes, inputs: list[InputSpec]) -> Callable[[], Any]:
        # inputs stay on the GPU across runs: the timing is kernels, not host copies
        sess = self._inference_session(data)
        ort = self._ort
        binding = sess.io_binding()
        for name, arr in random_feed(inputs, self.seed).items():
            binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", self.device_index))
        for out in sess.get_outputs():
            binding.bind_output(out.name, "cuda", self.device_index)
        return lambda: sess.run_with_iobinding(binding)


@LATENCY_PROBES.register("ort-trt")
class OrtTrtProbe(OrtCudaProbe):
    """ONNX Runtime's TensorRT execution provider, with engine and timing caches on disk so a
    repeated artifact does not rebuild its engine.

    :param cache_dir: folder for TensorRT engine and timing caches
    :param fp16: allow TensorRT fp16 kernels for fp32 layers (the EP's own flag; QDQ graphs
        get int8 from their Q/DQ nodes regardless)
    """

    name = "ort-trt"

    def __init__(self, device: DeviceSpec | None = None, threads: int = 1, cache_dir: str | Path | None = None, fp16: bool = False, **kw: Any):
        self.cache_dir = Path(cache_dir or Path(tempfile.gettempdir()) / "hadmc-trt-cache")
        self.fp16 = bool(fp16)
        try:  # TensorRT's pip wheels load libnvinfer on import; ORT's EP then finds it by soname
            import tensorrt  # noqa: F401
        except ImportError:
            pass  # a system TensorRT on the library path serves as well; a missing one is reported per session
        super().__init__(device, threads=threads, **kw)

    def _install_hint(self) -> str:
        return "Install onnxruntime-gpu built with TensorRT and TensorRT itself: pip install 'hadmc[gpu]' 'hadmc[tensorrt]'."

    def _provider_list(self) -> list[Any]:
        trt_opts = {
            "device_id": self.device_index,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(self.cache_dir),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(self.cache_dir),
            "trt_fp16_enable": self.fp16,
        }
        return [("TensorrtExecutionProvider", trt_opts), ("CUDAExecutionProvider", {"device_id": self.device_index})]

    def backend_settings(self) -> dict[str, Any]:
        return {**super().backend_settings(), "fp16": self.fp16}


@LATENCY_PROBES.register("torch")
class TorchEagerProbe(LatencyProbe):
    """PyTorch eager on the CPU, for reference against the exported runtimes. Takes an
    ``nn.Module`` (or a TorchScript file) instead of ONNX bytes; ``input_shape`` is required.

    :param threads: torch intra-op threads while timing
    """

    name = "torch"

    def __init__(self, device: DeviceSpec | None = None, threads: int = 1, **timing: Any):
        super().__init__(device, **timing)
        self._threads = int(threads)

    @property
    def threads(self) -> int:
        return self._threads

    def _default_device(self) -> DeviceSpec:
        return detect_local("cpu")

    def backend_settings(self) -> dict[str, Any]:
        import torch

        return {"threads": self._threads, "torch": torch.__version__}

    def _open(self, data: bytes, inputs: list[InputSpec]) -> RuntimeSession:
        raise ProbeError("the torch probe measures nn.Module objects; pass the module to measure(), not ONNX bytes")

    def cache_key(self, model: Any, input_shape: tuple[int, ...] | None = None) -> None:
        return None  # an nn.Module has no artifact hash; eager figures are never cached

    def measure(self, model: Any, input_shape: tuple[int, ...] | None = None) -> LatencyResult:
        import torch

        if input_shape is None:
            raise ProbeError("the torch probe needs input_shape, e.g. (1, 3, 32, 32)")
        if isinstance(model, (str, Path)):
            model = torch.jit.load(str(model), map_location="cpu")
        if not isinstance(model, torch.nn.Module):
            raise ProbeError(f"the torch probe measures an nn.Module or TorchScript file, got {type(model).__name__}")
        t0, c0 = time.perf_counter(), time.process_time()
        prev = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            model = model.eval()
            x = torch.randn(*input_shape, generator=torch.Generator().manual_seed(self.seed))
            with torch.inference_mode():
                samples = time_runs(lambda: model(x), **self.timing_settings())
        finally:
            torch.set_num_threads(prev)
        settings = {**self.settings(), "input_shape": list(input_shape)}
        return LatencyResult(
            **latency_stats(samples),
            threads=self._threads,
            batch=int(input_shape[0]),
            input_shape=list(input_shape),
            backend=self.name,
            device_id=self.device_id,
            samples_ms=[round(s, 6) for s in samples],
            settings=settings,
            wall_s=time.perf_counter() - t0,
            cpu_s=time.process_time() - c0,
            load_avg=load_average(),
            host=self.host().model_dump(),
        )

    def measure_relative(self, model: Any, reference: Any, input_shape: tuple[int, ...] | None = None, **options: Any) -> RelativeLatency:
        raise ProbeError("the torch probe times eager modules one at a time; compare exported artifacts with an ONNX probe (ort-cpu)")


# ---------------------------------------------------------------- registry

LATENCY_PROBES.add_lazy("tensorrt", "hadmc.hal.tensorrt_probe:TensorRTProbe")
LATENCY_PROBES.add_lazy("remote", "hadmc.hal.remote:RemoteProbe")


def register_latency_probe(name: str, target: str | type[LatencyProbe]) -> None:
    """Register a probe class under ``name``: the class itself, or ``"package.module:Class"``
    imported on first use."""
    if isinstance(target, str):
        LATENCY_PROBES.add_lazy(name, target)
    else:
        LATENCY_PROBES.add(name, target)


def remote_url(address: str) -> str:
    """``http://host:port`` of a ``remote://host:port`` address; a malformed one is a ProbeError."""
    rest = address[len("remote://") :] if address.startswith("remote://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in rest:
        raise ProbeError(f"remote probe address {address!r} must look like remote://HOST:PORT (PORT in 1..65535), e.g. remote://192.168.1.20:8765")
    return f"http://{host}:{int(port)}"


def get_latency_probe(name: str = "ort-cpu", **settings: Any) -> LatencyProbe:
    """A latency probe by registry name, or ``remote://host:port`` for a remote probe server.

    :param name: registry name (``ort-cpu``, ``ort-cuda``, ``ort-trt``, ``tensorrt``, ``torch``)
        or ``remote://host:port``
    :param settings: keyword settings of that probe (``threads``, ``min_iterations``, ``device``...)
    """
    if name.startswith("remote://"):
        settings["url"] = remote_url(name)
        name = "remote"
    if name not in LATENCY_PROBES:
        raise ProbeError(f"{LATENCY_PROBES.unknown(name)}, or remote://host:port")
    cls = LATENCY_PROBES.get(name)
    try:
        return cls(**settings)
    except TypeError as exc:
        raise ProbeError(f"invalid settings for latency probe {name!r}: {exc}") from exc
