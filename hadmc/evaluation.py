"""Evaluation: the objective vector of one plan and everything needed to trust it."""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import PipelineError

log = logging.getLogger(__name__)

Provenance = Literal["measured", "estimated", "cached", "surrogate"]
#: Objectives and their direction. Accuracy is maximised; the others minimised.
OBJECTIVES: dict[str, Literal["max", "min"]] = {
    "accuracy": "max",
    "latency_ms": "min",
    "energy_mj": "min",
    "model_bytes": "min",
}


class Evaluation(BaseModel):
    """Result of applying and measuring one plan.

    `provenance` holds, per objective name, where its figure came from: `measured` on the
    target, `estimated` from a model of the device, `cached` from an earlier identical
    measurement, or `surrogate` (a test-only stand-in, never reported as a result).
    """

    model_config = ConfigDict(extra="forbid")

    plan_key: str
    plan: dict[str, Any]
    accuracy: float | None = Field(None, description="top-1 in [0, 1] of the exported artifact on the test split")
    latency_ms: float | None = Field(None, description="median latency per inference")
    latency_p90_ms: float | None = None
    latency_cov: float | None = None
    latency_iterations: int | None = None
    latency_ratio: float | None = Field(None, description="latency / the original's, timed in alternating blocks with it (what the reward uses)")
    latency_ratio_spread: float | None = Field(None, description="half-width of the ratio's ~95% interval, relative to the ratio")
    latency_noisy: bool | None = Field(None, description="the ratio's spread stayed above its bound after every re-measurement")
    load_avg: list[float] | None = Field(None, description="1/5/15 min load averages of the measuring host when latency was measured")
    cpu_s: float | None = Field(None, description="CPU seconds the latency measurement got (against its wall time: contention)")
    host: dict[str, Any] = Field(default_factory=dict, description="the machine latency was measured on (hadmc.hal.HostInfo)")
    host_mismatch: list[str] = Field(default_factory=list, description="why the device spec does not describe that machine (empty: it does)")
    energy_mj: float | None = Field(None, description="energy per inference in millijoules")
    model_bytes: int | None = Field(None, description="size of the exported ONNX artifact")
    macs: int | None = None
    params: int | None = None
    provenance: dict[str, Provenance] = Field(default_factory=dict)
    device: str = ""
    probe: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per pipeline stage")
    wall_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def objectives(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in OBJECTIVES}


# -- the real evaluator -------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch
    import torch_pruning

    from . import __version__

    return {
        "hadmc": __version__,
        "torch": torch.__version__,
        "torch_pruning": torch_pruning.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


class PlanEvaluator:
    """Applies plans for real and measures them on the target through the HAL.

    Every figure is measured (or `cached` from an identical earlier measurement, or
    `estimated` where the device has no energy counter, and labelled so).

    :param model: the pretrained classifier (teacher of the recovery)
    :param data: the `DataBundle` (train for recovery/calibration, test for accuracy)
    :param device: the target `DeviceSpec` (None = this machine, auto-detected)
    :param latency_probe: a `hadmc.hal.LatencyProbe` (None = the device's backend, default settings)
    :param energy_probe: a `hadmc.hal.EnergyProbe`, or None to skip energy
    :param cache: a `hadmc.hal.MeasurementCache` so identical artifacts are measured once (it
        wraps both probes)
    :param pipeline: keyword arguments for `apply_plan` (importance, round_to, recovery_lr, ...)
    :param profile: attach measured per-group latency shares from the runtime's node profiler
    :param seed: seed of recovery fine-tuning
    """

    def __init__(
        self,
        model,
        data,
        *,
        device=None,
        latency_probe=None,
        energy_probe=None,
        cache=None,
        pipeline: dict[str, Any] | None = None,
        profile: bool = True,
        seed: int = 0,
    ):
        from . import hal
        from .groups import layer_groups

        self.model = model.eval()
        self.data = data
        self.device = device if device is not None else hal.detect_local()
        self.latency_probe = latency_probe if latency_probe is not None else hal.get_latency_probe(self.device.backend, device=self.device)
        self.energy_probe = energy_probe
        self.cache = cache
        if cache is not None:
            self.latency_probe = hal.cached_probe(self.latency_probe, cache)
            if energy_probe is not None:
                self.energy_probe = hal.cached_probe(energy_probe, cache)
        self.pipeline = dict(pipeline or {})
        self.seed = seed
        self.versions = _versions()
        self.groups = layer_groups(self.model, data.example_input())
        self._baseline: Evaluation | None = None
        self._reference: bytes | None = None  # the original's artifact: plans are timed against it
        self._profile = profile
        self._done: dict[str, Evaluation] = {}  # resolved plan key -> evaluation (never apply twice)

    # The baseline is measured on first use, so building an evaluator stays cheap.
    @property
    def baseline(self) -> Evaluation:
        if self._baseline is None:
            from .plan import CompressionPlan

            plan = CompressionPlan.uniform(0.0, "fp32", budget=0)
            self._baseline, compressed = self._evaluate(plan, keep=True)
            if self._baseline.error:
                raise PipelineError(f"the unmodified model could not be exported and measured: {self._baseline.error}")
            self._reference = compressed.onnx_bytes
            if self._profile and hasattr(self.latency_probe, "profile_nodes"):
                from .groups import with_latency_shares

                try:
                    node_ms = self.latency_probe.profile_nodes(compressed.onnx_bytes)
                    self.groups = with_latency_shares(self.groups, node_ms, compressed.onnx_bytes)
                except Exception as exc:  # profiling is a feature, not a requirement
                    log.warning("per-node profiling failed (%s); latency shares left unknown", exc)
        return self._baseline

    def evaluate(self, plan) -> Evaluation:
        """Apply `plan`, measure it; a failing plan returns an Evaluation with `error` set.

        A plan identical (after resolving defaults) to one this evaluator already measured is
        answered from memory with its provenance marked `cached`.
        """
        from .pipeline import resolve_plan

        try:
            key = resolve_plan(plan, self.groups).key()
        except Exception:
            key = None
        if key in self._done:
            earlier = self._done[key]
            return earlier.model_copy(update={"provenance": {k: ("cached" if v == "measured" else v) for k, v in earlier.provenance.items()}})
        return self._evaluate(plan)[0]

    def evaluate_with_artifact(self, plan):
        """Like `evaluate`, and also return the `CompressedModel` (None if the plan failed) to
        save or ship, so exporting never applies a plan a second time."""
        return self._evaluate(plan, keep=True)

    def _evaluate(self, plan, keep: bool = False):
        from .errors import HadmcError
        from .hal import measure_latency_and_energy, spec_mismatches
        from .pipeline import apply_plan, resolve_plan

        t0 = time.perf_counter()
        record: dict[str, Any] = {
            "plan_key": plan.key(),
            "plan": json.loads(plan.canonical_json()),
            "device": self.device.id,
            "probe": self.latency_probe.settings(),
            "versions": self.versions,
        }
        compressed = None
        try:
            resolved = resolve_plan(plan, self.groups)
            record["plan_key"], record["plan"] = resolved.key(), json.loads(resolved.canonical_json())

            def runner(onnx_bytes: bytes):
                return self.latency_probe.session(onnx_bytes).run

            compressed = apply_plan(
                self.model,
                resolved,
                self.data,
                self.device,
                groups=self.groups,
                accuracy_runner=runner,
                seed=self.seed,
                **self.pipeline,
            )
            m = measure_latency_and_energy(self.latency_probe, compressed.onnx_bytes, self.energy_probe, reference=self._reference)
            lat, energy = m.latency, m.energy
            if m.relative is not None:
                record.update(latency_ratio=m.relative.ratio, latency_ratio_spread=m.relative.spread, latency_noisy=m.relative.noisy)
            record.update(load_avg=lat.load_avg, cpu_s=lat.cpu_s, host=lat.host, host_mismatch=spec_mismatches(self.device, lat.host) if lat.host else [])
            timings = dict(compressed.timings, measure_s=m.latency_s)
            if energy is not None:
                timings["energy_s"] = m.energy_s
            record.update(
                accuracy=compressed.accuracy,
                latency_ms=lat.median_ms,
                latency_p90_ms=lat.p90_ms,
                latency_cov=lat.cov,
                latency_iterations=lat.iterations,
                energy_mj=energy.mj_per_inference if energy else None,
                model_bytes=compressed.model_bytes,
                macs=compressed.macs,
                params=compressed.params,
                provenance={
                    "accuracy": "measured",
                    "latency_ms": lat.provenance,
                    "model_bytes": "measured",
                    **({"energy_mj": energy.provenance} if energy else {}),
                },
                timings=timings,
            )
            if energy is not None:
                record["probe"] = {**record["probe"], "energy": energy.method}
        except HadmcError as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a search must go on; the store keeps the reason
            log.exception("evaluation of plan %s failed", record["plan_key"][:12])
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["wall_s"] = time.perf_counter() - t0
        evaluation = Evaluation(**record)
        if evaluation.ok:
            self._done[evaluation.plan_key] = evaluation
        return evaluation, (compressed if keep else None)


def build_evaluator(config) -> PlanEvaluator:
    """The real evaluator of a `RunConfig`: data, model, device, probes and measurement cache."""
    from . import hal
    from .data import load_data
    from .models import resolve_model

    # Split seed 0 always: the embedded default was trained on that split (config.seed seeds training).
    data = load_data(config.data, image_size=config.image_size, seed=0)
    model = resolve_model(config.model, data, weights=config.weights)
    device = hal.load_device_spec(config.device)
    lat = config.latency
    probe_name = lat.address or lat.probe
    settings: dict[str, Any] = dict(
        device=device,
        warmup_runs=lat.warmup_runs,
        warmup_s=lat.warmup_s,
        min_iterations=lat.min_iterations,
        min_seconds=lat.min_seconds,
    )
    if probe_name.startswith("remote://"):
        settings["token"] = lat.token
    else:
        settings["threads"] = lat.threads
    probe = hal.get_latency_probe(probe_name, **settings)
    energy = None
    if config.energy.probe:
        energy = probe.energy_probe(config.energy.probe, window_s=config.energy.window_s)
    cache = None
    if config.use_cache:
        config.resolved_run_dir.mkdir(parents=True, exist_ok=True)
        cache = hal.MeasurementCache(config.database_path)
    p = config.pipeline
    return PlanEvaluator(
        model,
        data,
        device=device,
        latency_probe=probe,
        energy_probe=energy,
        cache=cache,
        pipeline=dict(
            importance=p.importance,
            round_to=p.round_to,
            recovery_lr=p.learning_rate,
            batch_size=p.batch_size,
            calibration_batches=p.calibration_batches,
            max_train_batches=p.max_train_batches,
            max_eval_batches=p.max_eval_batches,
        ),
        seed=config.seed,
    )
