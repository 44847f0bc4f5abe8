"""Evaluation: the objective vector of one plan and everything needed to trust it."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import ConfigError, PipelineError

log = logging.getLogger(__name__)

#: ``predicted`` marks a search model's guess (Dyna search); such evaluations never reach the store.
Provenance = Literal["measured", "estimated", "cached", "surrogate", "predicted"]
#: A search evaluation reads accuracy on the validation split at the search fidelity; a final
#: one (the figures a user sees) on the test split at the plan's full recovery budget.
Phase = Literal["search", "final"]
PHASES: tuple[str, ...] = ("search", "final")
PHASE_SPLIT: dict[str, str] = {"search": "val", "final": "test"}
#: When BatchNorm statistics are re-estimated (see `PlanEvaluator`).
BN_RECALIBRATION: tuple[str, ...] = ("select", "search", "always", "never")
#: Validation batches a search evaluation chooses its BatchNorm statistics on (``select``).
#: The choice matters where the two differ by tens of points (statistics left by pruning read
#: chance; re-estimation after long training with frozen layers read 61% against 96%), which
#: one batch shows; where they are close either will do, and the accuracy a search records is
#: then read on the whole split. Choosing on the whole split (180 images) took 0.73 s of a
#: 4.1 s search evaluation on the embedded default, on one batch 0.46 s.
SEARCH_BN_SELECT_BATCHES = 1
#: A recovery step's wall time by update scope, relative to a full-scope step (frozen layers need
#: no gradients). Measured on the embedded default, one thread, 20 steps: at 50% pruning 0.25 s
#: full, 0.13 half, 0.10 last_stage, 0.08 head; unpruned 0.79-0.87, 0.49, 0.35, 0.22.
SCOPE_STEP_COST: dict[str, float] = {"full": 1.0, "half": 0.55, "last_stage": 0.4, "head": 0.3}
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
    `phase` and `split` say what the accuracy is: ``final`` figures are read on the test split
    at the plan's full recovery budget; ``search`` figures on the validation split, possibly
    at a lower fidelity (`recovery_steps` of `full_recovery_steps`).
    """

    model_config = ConfigDict(extra="forbid")

    plan_key: str
    plan: dict[str, Any]
    phase: Phase = "final"
    split: Literal["train", "val", "test"] | None = Field(None, description="split the accuracy was read on")
    accuracy: float | None = Field(None, description="top-1 in [0, 1] of the exported artifact on `split`")
    accuracy_samples: int | None = Field(None, description="images the accuracy was read on (its binomial noise: a search's model weighs it)")
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
    recovery_steps: int | None = Field(None, description="recovery optimizer steps run for this figure")
    full_recovery_steps: int | None = Field(None, description="steps of the plan's full recovery budget")
    quantization: dict[str, Any] | None = Field(None, description="INT8 recipe used (None: no INT8 group)")
    group_latency_ms: dict[str, float] | None = Field(None, description="profiled ms per layer group (search features)")
    skipped: str | None = Field(None, description="why recovery and accuracy were skipped (a hard constraint missed)")
    artifact_sha256: str | None = Field(None, description="SHA-256 of the saved ONNX artifact these figures were measured on")
    bn_recalibrated: bool | None = Field(None, description="BatchNorm statistics were re-estimated after recovery")
    patch_bytes: int | None = Field(None, description="size of the patch (`hadmc delta`) from the run's deployed model to this artifact")
    patch_base_sha256: str | None = Field(None, description="SHA-256 of the deployed model the patch applies to")
    notes: list[str] = Field(default_factory=list)
    device: str = ""
    node: str | None = Field(None, description="the machine (host name; Ray node id and host name) that applied and evaluated the plan")
    probe: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per pipeline stage")
    wall_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def complete(self) -> bool:
        """Succeeded and has every figure of the pipeline (nothing skipped)."""
        return self.error is None and self.skipped is None

    @property
    def fidelity(self) -> float | None:
        """Recovery steps run over the plan's full budget (1.0 = full fidelity)."""
        if self.recovery_steps is None or self.full_recovery_steps is None:
            return None
        return 1.0 if self.full_recovery_steps == 0 else self.recovery_steps / self.full_recovery_steps

    def objectives(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in OBJECTIVES}

    def as_cached(self) -> Evaluation:
        """The same figures reused: measured ones say `cached`, estimated ones keep saying so."""
        prov = {k: ("cached" if v == "measured" else v) for k, v in self.provenance.items()}
        return self.model_copy(update={"provenance": prov})


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

    Search evaluations are cheaper than final ones without being less true: the teacher's
    logits on the (un-augmented) training split are computed once; a recovered student is
    shared by plans that differ only in precision or fusion; recovery runs `search_fidelity`
    of the plan's budget and BatchNorm statistics are re-estimated; INT8 ranges are calibrated
    on fewer batches and latency is timed against the original to a coarser interval (the
    search probe and options); with a hard latency budget,
    latency and size are measured before recovery and a plan over the budget skips it. Final
    evaluations run the plan's whole budget and read accuracy on the test split.

    :param model: the pretrained classifier (teacher of the recovery)
    :param data: the `DataBundle` (train for recovery/calibration, val for search, test for final figures)
    :param device: the target `DeviceSpec` (None = this machine, auto-detected)
    :param latency_probe: a `hadmc.hal.LatencyProbe` (None = the device's backend, default settings)
    :param energy_probe: a `hadmc.hal.EnergyProbe`, or None to skip energy
    :param cache: a `hadmc.hal.MeasurementCache` so identical artifacts are measured once (it
        wraps both probes)
    :param pipeline: keyword arguments of the pipeline stages (importance, round_to, recovery_lr,
        batch_size, calibration_batches, search_calibration_batches, max_train_batches,
        max_eval_batches, train_device: the torch device recovery trains on, ``cpu`` unless given)
    :param profile: attach measured per-group latency shares from the runtime's node profiler
    :param seed: seed of recovery fine-tuning
    :param search_fidelity: fraction of each plan's recovery steps run in search evaluations
    :param search_fidelity_macs_ref: plans whose pruned student has fewer MACs than this share
        of the original's run proportionally more of their steps while searching (each step is
        that much cheaper): ``search_fidelity * ref / macs_share``, capped at the full budget;
        0 gives every plan ``search_fidelity``
    :param search_fidelity_scope: plans that train part of the model (update scope) run more
        of their steps while searching, by how much cheaper each step is (`SCOPE_STEP_COST`)
    :param search_fidelity_lr: a search recovery shorter than the plan's own budget trains at
        this multiple of ``pipeline["recovery_lr"]``; final evaluations train at the rate itself
    :param search_fidelity_temperature: such a shortened search recovery distils at no more than
        this temperature; final evaluations at the plan's own (20: always the plan's own)
    :param search_fidelity_alpha: and weighs the distillation term by no more than this alpha
        (the rest is cross-entropy on the labels); final evaluations by the plan's own (1:
        always the plan's own)
    :param search_fidelity_batch_size: and trains on the same images in batches of this size
        (more, smaller steps; None: ``pipeline["batch_size"]``); final evaluations at that size
    :param search_fidelity_batch_share: the search batch size applies to shortened recoveries
        that run less than this share of the plan's steps (1: to every shortened recovery); a
        narrow student that `search_fidelity_macs_ref` gives most of its budget trains at the
        plan's own batch size
    :param search_fidelity_full_scope: a shortened search recovery trains the whole model
        whatever the plan's update scope; final evaluations train the plan's own scope (False:
        always the plan's own)
    :param bn_recalibration: re-estimate BatchNorm statistics after pruning and recovery:
        ``select`` (only where it raises the validation accuracy, so the test split never
        decides: in final evaluations that of the exported artifacts, in search ones that of the
        PyTorch student, which is cheaper; see `search_bn_select`), ``search`` (in search
        evaluations only), ``always``, ``never``
    :param search_bn_select: with ``select``, search evaluations choose too; False: they always
        re-estimate (as runs before this setting did). After a short recovery the statistics
        left by pruning are stale and re-estimation lifts a plan from chance; after a long one
        with frozen layers (whose BatchNorm stays in eval mode) the trained layers have adapted
        to the old statistics and re-estimation costs up to 35 points (measured on the embedded
        default: 96% -> 61% at 60 of 60 steps, scope half)
    :param teacher_cache: compute the teacher's training-split logits once (off automatically
        when the training images are augmented)
    :param student_cache: recovered students kept for plans that differ only in precision/fusion
    :param latency_budget_ms: a hard budget: search plans over it skip recovery and accuracy
    :param profile_plans: attach each search plan's profiled per-group latency (`group_latency_ms`)
    :param search_latency_probe: the probe of search evaluations (e.g. shorter timing; None:
        `latency_probe`); final figures always come from `latency_probe`
    :param relative_options: how plans are timed against the original (``block_s``,
        ``min_pairs``, ``max_spread``, ``max_rounds``; None: the HAL's defaults)
    :param search_relative_options: the same for search evaluations (None: `relative_options`)
    :param measurement_lock: held around every latency, energy and profiling measurement (a
        context manager; parallel workers share one, so a figure is never measured while
        another worker measures; recovery and accuracy runs do not take it)
    :param deployed_model: ONNX bytes of the model the devices run now: each artifact's patch
        size against it (`hadmc.hal.delta.make_patch`) is recorded
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
        search_fidelity: float = 1.0,
        search_fidelity_macs_ref: float = 0.0,
        search_fidelity_scope: bool = False,
        search_fidelity_lr: float = 1.0,
        search_fidelity_temperature: float = 20.0,
        search_fidelity_alpha: float = 1.0,
        search_fidelity_batch_size: int | None = None,
        search_fidelity_batch_share: float = 1.0,
        search_fidelity_full_scope: bool = False,
        bn_recalibration: Literal["never", "search", "always", "select"] = "select",
        search_bn_select: bool = True,
        teacher_cache: bool = True,
        student_cache: int = 4,
        latency_budget_ms: float | None = None,
        profile_plans: bool = False,
        search_latency_probe=None,
        relative_options: dict[str, Any] | None = None,
        search_relative_options: dict[str, Any] | None = None,
        measurement_lock: contextlib.AbstractContextManager | None = None,
        deployed_model: bytes | None = None,
    ):
        from . import hal
        from .groups import layer_groups

        if not 0.0 < search_fidelity <= 1.0:
            raise ConfigError(f"search fidelity must lie in (0, 1] (a fraction of each plan's recovery), got {search_fidelity}")
        if bn_recalibration not in BN_RECALIBRATION:
            raise ConfigError(f"bn_recalibration must be one of {', '.join(BN_RECALIBRATION)}, got {bn_recalibration!r}")
        self.model = model.eval()
        self.data = data
        self.device = device if device is not None else hal.detect_local()
        self.latency_probe = latency_probe if latency_probe is not None else hal.get_latency_probe(self.device.backend, device=self.device)
        self.energy_probe = energy_probe
        self.cache = cache
        self.search_latency_probe = search_latency_probe if search_latency_probe is not None else self.latency_probe
        self.relative_options = dict(relative_options or {})
        self.search_relative_options = dict(search_relative_options) if search_relative_options is not None else self.relative_options
        if cache is not None:
            self.latency_probe = hal.cached_probe(self.latency_probe, cache)
            if search_latency_probe is not None:
                self.search_latency_probe = hal.cached_probe(search_latency_probe, cache)
            if energy_probe is not None:
                self.energy_probe = hal.cached_probe(energy_probe, cache)
        self._reference: bytes | None = None  # the original's artifact: plans are timed against it
        self.pipeline = dict(pipeline or {})
        self.seed = seed
        self.search_fidelity = float(search_fidelity)
        if not 0.0 <= search_fidelity_macs_ref <= 1.0:
            raise ConfigError(f"search_fidelity_macs_ref must lie in [0, 1] (a share of the original's MACs), got {search_fidelity_macs_ref}")
        self.search_fidelity_macs_ref = float(search_fidelity_macs_ref)
        self.search_fidelity_scope = bool(search_fidelity_scope)
        if not 1.0 <= search_fidelity_lr <= 20.0:
            raise ConfigError(f"search_fidelity_lr must lie in [1, 20] (a multiple of the recovery learning rate), got {search_fidelity_lr}")
        self.search_fidelity_lr = float(search_fidelity_lr)
        if not 1.0 <= search_fidelity_temperature <= 20.0:
            raise ConfigError(f"search_fidelity_temperature must lie in [1, 20] (a distillation temperature), got {search_fidelity_temperature}")
        self.search_fidelity_temperature = float(search_fidelity_temperature)
        if not 0.0 <= search_fidelity_alpha <= 1.0:
            raise ConfigError(f"search_fidelity_alpha must lie in [0, 1] (a distillation weight), got {search_fidelity_alpha}")
        self.search_fidelity_alpha = float(search_fidelity_alpha)
        if search_fidelity_batch_size is not None and search_fidelity_batch_size < 1:
            raise ConfigError(f"search_fidelity_batch_size must be at least 1 (images per step), got {search_fidelity_batch_size}")
        self.search_fidelity_batch_size = search_fidelity_batch_size
        if not 0.0 < search_fidelity_batch_share <= 1.0:
            raise ConfigError(f"search_fidelity_batch_share must lie in (0, 1] (a share of the plan's recovery steps), got {search_fidelity_batch_share}")
        self.search_fidelity_batch_share = float(search_fidelity_batch_share)
        self.search_fidelity_full_scope = bool(search_fidelity_full_scope)
        if self.search_fidelity_full_scope and self.search_fidelity_scope:
            raise ConfigError(
                "search_fidelity_scope gives plans that train part of the model more steps for their cheaper steps, and "
                "search_fidelity_full_scope trains the whole model in shortened search recoveries: set one of them false"
            )
        self._macs_share: dict[tuple, float] = {}
        self._original_macs: int | None = None
        self.bn_recalibration = bn_recalibration
        self.search_bn_select = bool(search_bn_select)
        self._recalibration_batches: list | None = None
        self._val_batches: list | None = None
        self.teacher_cache = teacher_cache and not getattr(data, "train_augmented", False)
        self.student_cache = int(student_cache)
        self.latency_budget_ms = latency_budget_ms
        self.profile_plans = profile_plans
        self.measurement_lock = measurement_lock if measurement_lock is not None else contextlib.nullcontext()
        self._deployed: tuple[str, dict[str, Any]] | None = None
        if deployed_model is not None:
            from .hal.delta import PATCH_BLOCK, initializer_manifest

            try:
                self._deployed = (hal.sha256_hex(deployed_model), initializer_manifest(deployed_model, PATCH_BLOCK))
            except Exception as exc:  # onnx's DecodeError and friends
                raise ConfigError(f"the deployed model is not a readable ONNX model ({type(exc).__name__}); pass the .onnx file the devices run") from None
        self.node = platform.node()
        self.versions = _versions()
        self.groups = layer_groups(self.model, data.example_input())
        self._baselines: dict[str, Evaluation] = {}
        self._profile = profile
        self._logits = None
        self._students: OrderedDict[tuple, Any] = OrderedDict()
        self.stats = {"students_reused": 0, "recoveries": 0, "recoveries_skipped": 0}

    # -- baselines ----------------------------------------------------------------------
    @property
    def baseline(self) -> Evaluation:
        """The unmodified model's final figures (test split); measured on first use."""
        return self.baseline_for("final")

    def baseline_for(self, phase: Phase) -> Evaluation:
        """The unmodified model's evaluation in `phase` (its accuracy on that phase's split).

        Both phases share one export and one latency measurement; only the split differs.
        """
        if phase not in self._baselines:
            self._measure_baselines()
        return self._baselines[phase]

    def _measure_baselines(self) -> None:
        from .plan import CompressionPlan

        plan = CompressionPlan.uniform(0.0, "fp32", budget=0)
        final, compressed = self._evaluate(plan, "final", keep=True)
        if final.error:
            raise PipelineError(f"the unmodified model could not be exported and measured: {final.error}")
        self._reference = compressed.onnx_bytes
        t = time.perf_counter()
        val = self._accuracy(compressed.onnx_bytes, PHASE_SPLIT["search"])
        search = final.model_copy(
            update={"phase": "search", "split": PHASE_SPLIT["search"], "accuracy": val,
                    "accuracy_samples": self.accuracy_samples(PHASE_SPLIT["search"]),
                    "timings": {**final.timings, "accuracy_s": time.perf_counter() - t}}
        )  # fmt: skip
        self._baselines = {"final": final, "search": search}
        if self._profile and hasattr(self.latency_probe, "profile_nodes"):
            from .groups import with_latency_shares

            try:
                with self.measurement_lock:
                    node_ms = self.latency_probe.profile_nodes(compressed.onnx_bytes)
                self.groups = with_latency_shares(self.groups, node_ms, compressed.onnx_bytes)
            except Exception as exc:  # profiling is a feature, not a requirement
                log.warning("per-node profiling failed (%s); latency shares left unknown", exc)

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(self, plan, phase: Phase = "final", progress: Callable[[str], None] | None = None) -> Evaluation:
        """Apply `plan` and measure it; a failing plan returns an Evaluation with `error` set.

        :param phase: ``final`` (test split, full recovery) or ``search`` (validation split,
            search fidelity)
        :param progress: told the name of each stage as it starts (prune, recover, export,
            accuracy, measure)
        """
        return self._evaluate(plan, phase, progress=progress)[0]

    def evaluate_with_artifact(self, plan, phase: Phase = "final"):
        """Like `evaluate`, and also return the `CompressedModel` (None if the plan failed) to
        save or ship, so exporting never applies a plan a second time."""
        return self._evaluate(plan, phase, keep=True)

    def recovery_plan(self, plan, phase: Phase, macs_share: float | None = None) -> tuple[int, int]:
        """(steps run, steps of the full budget) of a resolved plan's recovery in `phase`.

        :param macs_share: the pruned student's MACs over the original's; with
            `search_fidelity_macs_ref`, a plan below that share runs proportionally more steps
            while searching (see `search_fraction`)
        """
        from .pipeline import recovery_steps

        full = recovery_steps(plan, self.data, self.pipeline.get("batch_size", 64), self.pipeline.get("max_train_batches"))
        if phase == "final" or full == 0 or self.search_fidelity >= 1.0:
            return full, full
        scope = plan.update.scope if self.search_fidelity_scope else "full"
        return min(full, max(1, math.ceil(self.search_fraction(macs_share, scope) * full))), full

    def search_fraction(self, macs_share: float | None, scope: str = "full") -> float:
        """Fraction of a plan's recovery steps run while searching.

        ``search_fidelity``, raised for narrow students to ``search_fidelity * ref / macs_share``
        and, with `search_fidelity_scope`, for plans that train part of the model by how much
        cheaper their steps are (`SCOPE_STEP_COST`); at most 1. A half-scope plan read 58% after a
        fifth of its recovery (its MAC share had raised it to 26 of 60 steps) and 97% in full;
        at full scope the same plan read 94% after 26 steps; 51 half-scope steps read 96%. That
        was the frozen layers' stale BatchNorm statistics, which recovery now re-estimates first
        (`pipeline.recover`'s ``refresh_frozen_norms``), so the scope rule is off by default.
        A narrow student's steps are cheap (not in proportion to its MACs: about
        0.4 s per step at 7% of the original's MACs against 1.1-1.6 s at 40-50%, one thread),
        and heavily pruned students are exactly the ones a short recovery reads far too low:
        on the embedded default at fidelity 0.2, uniform 70% int8 read 87% while searching and
        97% in full, which steered searches away from the fastest plans that meet the floor.
        """
        f = self.search_fidelity
        if f >= 1.0:
            return f
        ref = self.search_fidelity_macs_ref
        if ref > 0.0 and macs_share is not None:
            f *= max(1.0, ref / max(macs_share, 1e-6))
        return min(1.0, f / SCOPE_STEP_COST.get(scope, 1.0))

    def macs_share(self, plan, pruned=None, timings: dict[str, float] | None = None, say=None) -> tuple[float, Any]:
        """(the pruned student's MACs over the original's, the pruned student or None).

        Known from the pruning decisions alone, so it is remembered per decisions; the pruned
        student is returned when it had to be built (the caller recovers it)."""
        from .pipeline import count_macs_params

        key = _pruning_key(plan)
        if key not in self._macs_share:
            example = self.data.example_input()
            if self._original_macs is None:
                self._original_macs = count_macs_params(self.model, example)[0]
            if pruned is None:
                pruned = self._prune(plan, timings if timings is not None else {}, say or (lambda stage: None))
            self._macs_share[key] = count_macs_params(pruned, example)[0] / max(1, self._original_macs)
        return self._macs_share[key], pruned

    def _teacher_logits(self):
        if self._logits is None and self.teacher_cache:
            from .pipeline import TeacherLogits

            self._logits = TeacherLogits(self.model, len(self.data.split("train")))
        return self._logits

    def _measure(self, onnx_bytes: bytes, phase: Phase = "final", energy: bool = False, measured=None):
        """Latency (timed against the original once it is known), then energy when asked,
        through the one HAL function; `measured` reuses a latency taken on the same graph."""
        from .hal import measure_latency_and_energy

        probe = self.search_latency_probe if phase == "search" else self.latency_probe
        with self.measurement_lock:
            return measure_latency_and_energy(
                probe, onnx_bytes, self.energy_probe if energy else None, reference=self._reference,
                relative_options=self._relative(phase), measured=measured,
            )  # fmt: skip

    def _patch_fields(self, onnx_bytes: bytes, timings: dict[str, float]) -> dict[str, Any]:
        """The size of the patch from the deployed model to this artifact (none without one)."""
        if self._deployed is None:
            return {}
        from .hal.delta import encode_patch, make_delta

        t = time.perf_counter()
        sha, manifest = self._deployed
        size = len(encode_patch(make_delta(onnx_bytes, manifest)))
        timings["patch_s"] = time.perf_counter() - t
        return {"patch_bytes": size, "patch_base_sha256": sha}

    def accuracy_on(self, onnx_bytes: bytes, split: str) -> float:
        """Top-1 of an artifact on `split`, run where latency is measured (for benchmarks that
        compare fidelities on one split; reported figures use their phase's split)."""
        return self._accuracy(onnx_bytes, split)

    def accuracy_samples(self, split: str) -> int:
        """Images an accuracy on `split` is read on (``max_eval_batches`` may cap them)."""
        n = len(self.data.split(split))
        cap = self.pipeline.get("max_eval_batches")
        return min(n, cap * self.pipeline.get("batch_size", 64)) if cap else n

    def _accuracy(self, onnx_bytes: bytes, split: str) -> float:
        from .pipeline import artifact_accuracy

        def runner(data: bytes):
            return self.latency_probe.session(data).run

        return artifact_accuracy(
            onnx_bytes, self.data, split, batch_size=self.pipeline.get("batch_size", 64),
            max_batches=self.pipeline.get("max_eval_batches"), runner=runner,
        )  # fmt: skip

    def _prune(self, plan, timings: dict[str, float], say):
        from .pipeline import pruned_copy

        say("prune")
        t = time.perf_counter()
        pruned = pruned_copy(
            self.model, plan, self.groups, self.data,
            importance=self.pipeline.get("importance", "l1"), round_to=self.pipeline.get("round_to"),
        )  # fmt: skip
        timings["prune_s"] = time.perf_counter() - t
        return pruned

    def _relative(self, phase: Phase) -> dict[str, Any]:
        """How a plan of `phase` is timed against the original."""
        return self.search_relative_options if phase == "search" else self.relative_options

    def _calibration_batches(self, phase: Phase) -> int:
        """INT8 calibration batches of `phase` (fewer while searching when so configured)."""
        full = self.pipeline.get("calibration_batches", 8)
        return (self.pipeline.get("search_calibration_batches") or full) if phase == "search" else full

    def _export(self, student, plan, phase: Phase):
        from .pipeline import export_artifact

        return export_artifact(student, plan, self.groups, self.data, self.device, calibration_batches=self._calibration_batches(phase))

    @staticmethod
    def _changed(plan, steps: int) -> bool:
        """Whether BatchNorm statistics can be stale: something was pruned or trained."""
        return steps > 0 or any(d.prune_ratio > 0 for d in plan.groups.values())

    def _select_recalibration(self, student, plan, art, timings: dict[str, float], notes: list[str], say):
        """Final phase, ``select``: keep re-estimated BatchNorm statistics only where they
        raise the validation accuracy (measured on the exported artifacts)."""
        import copy

        from .pipeline import recalibrate_batchnorm

        say("recalibrate")
        t = time.perf_counter()
        other = copy.deepcopy(student)
        recalibrate_batchnorm(other, self._recalibration_data())
        other_art = self._export(other, plan, "final")
        plain_val, recal_val = self._accuracy(art.onnx_bytes, "val"), self._accuracy(other_art.onnx_bytes, "val")
        timings["recalibration_select_s"] = time.perf_counter() - t
        use = recal_val > plain_val
        notes.append(
            f"BatchNorm statistics {'re-estimated' if use else 'kept from recovery'}: validation accuracy "
            f"{100 * recal_val:.2f}% with re-estimation, {100 * plain_val:.2f}% without"
        )
        return (other, other_art, True) if use else (student, art, False)

    def _recalibration_data(self) -> list:
        from .pipeline import recalibration_batches

        if self._recalibration_batches is None:
            self._recalibration_batches = recalibration_batches(self.data, batch_size=self.pipeline.get("batch_size", 64))
        return self._recalibration_batches

    def _select_search_recalibration(self, student, info: dict) -> tuple[Any, dict]:
        """Search phase, ``select``: keep re-estimated BatchNorm statistics only where they raise
        the PyTorch student's validation accuracy (the final phase decides on the artifacts)."""
        import copy

        from .pipeline import recalibrate_batchnorm
        from .training import evaluate_accuracy

        if self._val_batches is None:
            loader = self.data.loader("val", batch_size=self.pipeline.get("batch_size", 64))
            self._val_batches = [b for _, b in zip(range(SEARCH_BN_SELECT_BATCHES), loader)]
        other = copy.deepcopy(student)
        recalibrate_batchnorm(other, self._recalibration_data())
        plain, recal = evaluate_accuracy(student, self._val_batches), evaluate_accuracy(other, self._val_batches)
        use = recal > plain
        images = sum(len(y) for _, y in self._val_batches)
        info = {**info, "bn_recalibrated": use, "bn_select_val": {"re-estimated": recal, "kept": plain, "images": images}}
        return (other if use else student), info

    def _student(self, plan, phase: Phase, steps: int, pruned, timings: dict[str, float], say, full: int | None = None) -> tuple[Any, dict]:
        """The recovered student of `plan`: from the cache when a plan with the same pruning,
        distillation, update and fidelity was recovered already, else pruned and recovered.

        :param full: the steps of the plan's own budget; a search recovery of fewer `steps` (a
            search at lower fidelity) is shortened: it trains at `search_fidelity_lr` times the
            recovery learning rate and distils at no more than `search_fidelity_temperature`
            with at most `search_fidelity_alpha`, with `search_fidelity_full_scope` the whole
            model, and below `search_fidelity_batch_share` of `full` on the same images in
            batches of `search_fidelity_batch_size`
        """
        from .pipeline import recover

        changed = self._changed(plan, steps)
        select = changed and phase == "search" and self.bn_recalibration == "select" and self.search_bn_select
        recal = self.bn_recalibration == "always" or (
            phase == "search" and (self.bn_recalibration == "search" or (self.bn_recalibration == "select" and not self.search_bn_select))
        )
        recal = recal and changed
        shortened = phase == "search" and full is not None and steps < full
        lr = self.pipeline.get("recovery_lr", 0.01) * (self.search_fidelity_lr if shortened else 1.0)
        if shortened and (plan.distill.temperature > self.search_fidelity_temperature or plan.distill.alpha > self.search_fidelity_alpha):
            # From here on the plan as recovered; the evaluation records the plan's own distillation.
            capped = {"temperature": min(plan.distill.temperature, self.search_fidelity_temperature),
                      "alpha": min(plan.distill.alpha, self.search_fidelity_alpha)}  # fmt: skip
            plan = plan.model_copy(update={"distill": plan.distill.model_copy(update=capped)})
        if shortened and self.search_fidelity_full_scope and plan.update.scope != "full":
            plan = plan.model_copy(update={"update": plan.update.model_copy(update={"scope": "full"})})
        batch = self.pipeline.get("batch_size", 64)
        run_batch, run_steps = batch, steps
        small = self.search_fidelity_batch_size and self.search_fidelity_batch_size < batch
        if shortened and small and steps < self.search_fidelity_batch_share * full:
            run_batch = self.search_fidelity_batch_size
            run_steps = steps * batch // run_batch  # the same images, in more and smaller steps
        key = (
            _pruning_key(plan),
            plan.distill.model_dump_json(), plan.update.model_dump_json(), steps, lr, recal, select, self.seed, run_batch,
        )  # fmt: skip
        if key in self._students:
            self._students.move_to_end(key)
            self.stats["students_reused"] += 1
            return self._students[key]
        if pruned is None:
            pruned = self._prune(plan, timings, say)
        say("recover")
        t = time.perf_counter()
        info = recover(
            pruned, self.model, plan, self.data,
            lr=lr, batch_size=run_batch,
            max_train_batches=self.pipeline.get("max_train_batches"), max_steps=run_steps,
            logits=self._teacher_logits() if steps > 0 else None, bn_recalibration=recal, seed=self.seed,
            refresh_frozen_norms=self.pipeline.get("refresh_frozen_norms", True) and self.bn_recalibration != "never",
            device=self.pipeline.get("train_device", "cpu"),
        )  # fmt: skip
        timings["recover_s"] = time.perf_counter() - t
        if select:
            say("recalibrate")
            t = time.perf_counter()
            pruned, info = self._select_search_recalibration(pruned, info)
            timings["recalibration_select_s"] = time.perf_counter() - t
        self.stats["recoveries"] += 1
        if self.student_cache > 0:
            self._students[key] = (pruned, info)
            while len(self._students) > self.student_cache:
                self._students.popitem(last=False)
        return pruned, info

    def _evaluate(self, plan, phase: Phase = "final", keep: bool = False, progress: Callable[[str], None] | None = None):
        from .errors import HadmcError
        from .pipeline import CompressedModel, check_precisions, resolve_plan

        if phase not in PHASES:
            raise ConfigError(f"unknown evaluation phase {phase!r}; valid: {', '.join(PHASES)}")
        say = progress or (lambda stage: None)
        t0 = time.perf_counter()
        split = PHASE_SPLIT[phase]
        record: dict[str, Any] = {
            "plan_key": plan.key(),
            "plan": json.loads(plan.canonical_json()),
            "phase": phase,
            "device": self.device.id,
            "node": self.node,
            "probe": {
                **(self.search_latency_probe if phase == "search" else self.latency_probe).settings(),
                "relative": self._relative(phase), "calibration_batches": self._calibration_batches(phase),
            },
            "versions": self.versions,
        }
        compressed = None
        timings: dict[str, float] = {}
        try:
            resolved = resolve_plan(plan, self.groups)
            record["plan_key"], record["plan"] = resolved.key(), json.loads(resolved.canonical_json())
            check_precisions(resolved, self.device)
            lat, early_m, pruned, notes = None, None, None, []
            share = None
            if phase == "search" and self.search_fidelity < 1.0 and self.search_fidelity_macs_ref > 0.0:
                share, pruned = self.macs_share(resolved, None, timings, say)
            steps, full = self.recovery_plan(resolved, phase, share)
            record.update(recovery_steps=steps, full_recovery_steps=full)
            if phase == "search" and self.latency_budget_ms is not None and steps > 0:
                # Latency and size do not depend on the recovered weights: measure them first,
                # and spend no recovery on a plan that misses the hard budget.
                if pruned is None:
                    pruned = self._prune(resolved, timings, say)
                say("export")
                early = self._export(pruned, resolved, phase)
                say("measure")
                t = time.perf_counter()
                early_m = self._measure(early.onnx_bytes, phase)
                lat = early_m.latency
                timings["measure_s"] = time.perf_counter() - t
                notes.append("latency measured before recovery on an artifact of the same graph")
                if lat.median_ms > self.latency_budget_ms:
                    self.stats["recoveries_skipped"] += 1
                    record.update(
                        self._latency_fields(early_m), model_bytes=len(early.onnx_bytes), macs=early.macs, params=early.params,
                        provenance={"latency_ms": lat.provenance, "model_bytes": "measured"}, quantization=early.quantization,
                        skipped=f"latency {lat.median_ms:.3f} ms is over the hard budget {self.latency_budget_ms:g} ms: "
                        "recovery and accuracy skipped",
                        recovery_steps=0, notes=notes,
                    )  # fmt: skip
                    raise _Skipped
            student, recovery = self._student(resolved, phase, steps, pruned, timings, say, full=full)
            say("export")
            art = self._export(student, resolved, phase)
            timings.update(art.timings)
            recalibrated = bool(recovery.get("bn_recalibrated"))
            if recovery.get("device", "cpu") != "cpu" and recovery.get("steps"):
                notes.append(f"recovery trained on {recovery['device']}")
            if "bn_select_val" in recovery:
                v = recovery["bn_select_val"]
                notes.append(
                    f"BatchNorm statistics {'re-estimated' if recalibrated else 'kept from recovery'}: accuracy of the PyTorch "
                    f"student on the first {v['images']} validation images {100 * v['re-estimated']:.2f}% with re-estimation, "
                    f"{100 * v['kept']:.2f}% without"
                )
            if phase == "final" and self.bn_recalibration == "select" and self._changed(resolved, steps):
                student, art, recalibrated = self._select_recalibration(student, resolved, art, timings, notes, say)
            say("accuracy")
            t = time.perf_counter()
            accuracy = self._accuracy(art.onnx_bytes, split)
            timings["accuracy_s"] = time.perf_counter() - t
            if early_m is None:
                say("measure")
            m = self._measure(art.onnx_bytes, phase, energy=True, measured=early_m)
            lat, energy = m.latency, m.energy
            if early_m is None:
                timings["measure_s"] = m.latency_s
            if energy is not None:
                timings["energy_s"] = m.energy_s
            group_ms = None
            if self.profile_plans and phase == "search":
                group_ms = self._group_latency(art.onnx_bytes)
            record.update(
                self._latency_fields(m),
                split=split,
                accuracy=accuracy,
                accuracy_samples=self.accuracy_samples(split),
                energy_mj=energy.mj_per_inference if energy else None,
                model_bytes=len(art.onnx_bytes),
                macs=art.macs,
                params=art.params,
                quantization=art.quantization,
                bn_recalibrated=recalibrated,
                group_latency_ms=group_ms,
                notes=notes,
                **self._patch_fields(art.onnx_bytes, timings),
                provenance={
                    "accuracy": "measured",
                    "latency_ms": lat.provenance,
                    "model_bytes": "measured",
                    **({"energy_mj": energy.provenance} if energy else {}),
                },
            )
            if energy is not None:
                record["probe"] = {**record["probe"], "energy": energy.method}
            if keep:
                compressed = CompressedModel(
                    model=student, onnx_bytes=art.onnx_bytes, plan=resolved, groups=self.groups,
                    input_shape=tuple(self.data.example_input().shape), accuracy=accuracy, macs=art.macs,
                    params=art.params, quantized=art.int8_nodes > 0, int8_nodes=art.int8_nodes,
                    excluded_nodes=art.excluded_nodes, timings=dict(timings), recovery=recovery,
                    quantization=art.quantization,
                )  # fmt: skip
        except _Skipped:
            pass
        except HadmcError as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a search must go on; the store keeps the reason
            log.exception("evaluation of plan %s failed", record["plan_key"][:12])
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["timings"] = timings
        record["wall_s"] = time.perf_counter() - t0
        return Evaluation(**record), compressed

    def _latency_fields(self, m) -> dict[str, Any]:
        """The latency figures of a `hal.Measurement`, with where and under what load."""
        from .hal import spec_mismatches

        lat, rel = m.latency, m.relative
        return {
            "latency_ms": lat.median_ms,
            "latency_p90_ms": lat.p90_ms,
            "latency_cov": lat.cov,
            "latency_iterations": lat.iterations,
            "latency_ratio": rel.ratio if rel else None,
            "latency_ratio_spread": rel.spread if rel else None,
            "latency_noisy": rel.noisy if rel else None,
            "load_avg": lat.load_avg,
            "cpu_s": lat.cpu_s,
            "host": lat.host,
            "host_mismatch": spec_mismatches(self.device, lat.host) if lat.host else [],
        }

    def _group_latency(self, onnx_bytes: bytes) -> dict[str, float] | None:
        if not hasattr(self.latency_probe, "profile_nodes"):
            return None
        from .groups import group_latency_ms

        try:
            with self.measurement_lock:
                node_ms = self.latency_probe.profile_nodes(onnx_bytes)
            return group_latency_ms(self.groups, node_ms, onnx_bytes)
        except Exception as exc:  # a search feature, not a figure
            log.warning("per-node profiling of a plan failed (%s)", exc)
            return None


class _Skipped(Exception):
    """Internal: the evaluation ends early with what it has (a hard constraint missed)."""


def _pruning_key(plan) -> tuple:
    """What a resolved plan's pruned student depends on: its per-group prune ratios."""
    return tuple(sorted((n, d.prune_ratio) for n, d in plan.groups.items()))


def build_evaluator(
    config,
    *,
    model=None,
    data=None,
    on_train: Callable[[str], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    measurement_lock: contextlib.AbstractContextManager | None = None,
) -> PlanEvaluator:
    """The real evaluator of a `RunConfig`: data, model, device, probes and measurement cache.

    This is the one construction path from a configuration to an evaluator; the CLI's
    `evaluate` and `compress`, the Python API and the Gymnasium environment all use it.

    :param model: an `nn.Module` to compress instead of `config.model` (Python API)
    :param data: a `DataBundle` to use instead of loading `config.data`
    :param on_train: told when the embedded default must be trained first (it takes a while)
    :param on_epoch: told after each epoch of that training (epoch, epochs, seconds, val_accuracy)
    :param measurement_lock: see `PlanEvaluator` (parallel workers share one)
    """
    from . import hal
    from .config import resolve_train_device
    from .data import load_data
    from .models import load_default_model, resolve_model

    # Split seed 0 always: the embedded default was trained on that split (config.seed seeds training).
    if data is None:
        data = load_data(config.data, image_size=config.image_size, seed=0)
    if model is None:
        if config.model == "default" and (on_train is not None or on_epoch is not None):
            load_default_model(on_train=on_train, on_epoch=on_epoch)
        model = resolve_model(config.model, data, weights=config.weights)
    lat = config.latency
    probe_name = lat.address or lat.probe
    device_name = config.device
    if device_name in ("local", "auto") and probe_name in hal.LATENCY_PROBES and hal.LATENCY_PROBES.get(probe_name).measures_on == "cpu":
        # This machine as the probe sees it: on a machine with a GPU, ort-cpu still measures (and
        # its energy is read on) the CPU, not the GPU that `local` would otherwise describe.
        device_name = "local-cpu"
    device = hal.load_device_spec(device_name)
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
    search_probe = None
    # Search timing is never finer than the final timing: each setting is the coarser of the two.
    search_settings = {
        **settings,
        "warmup_s": min(lat.warmup_s, lat.warmup_s if lat.search_warmup_s is None else lat.search_warmup_s),
        "min_seconds": min(lat.min_seconds, lat.min_seconds if lat.search_min_seconds is None else lat.search_min_seconds),
        "min_iterations": min(lat.min_iterations, lat.search_min_iterations or lat.min_iterations),
    }
    final_rel, search_rel = lat.relative, lat.search_relative
    search_relative = {
        "block_s": min(final_rel.block_s, search_rel.block_s),
        "min_pairs": min(final_rel.min_pairs, search_rel.min_pairs),
        "max_spread": max(final_rel.max_spread, search_rel.max_spread),
        "max_rounds": min(final_rel.max_rounds, search_rel.max_rounds),
    }
    if search_settings != settings:
        search_probe = hal.get_latency_probe(probe_name, **search_settings)
    energy = None
    if config.energy.probe:
        energy = probe.energy_probe(config.energy.probe, window_s=config.energy.window_s)
    cache = None
    if config.use_cache:
        config.resolved_run_dir.mkdir(parents=True, exist_ok=True)
        cache = hal.MeasurementCache(config.database_path)
    p = config.pipeline
    budget = config.constraints.latency_budget_ms if config.constraints.hard_latency_budget else None
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
            search_calibration_batches=min(p.calibration_batches, p.search_calibration_batches or p.calibration_batches),
            max_train_batches=p.max_train_batches,
            max_eval_batches=p.max_eval_batches,
            train_device=resolve_train_device(p.train_device),
            refresh_frozen_norms=p.refresh_frozen_norms,
        ),
        seed=config.seed,
        search_fidelity=config.search.fidelity,
        search_fidelity_macs_ref=config.search.fidelity_macs_ref,
        search_fidelity_scope=config.search.fidelity_scope,
        search_fidelity_lr=config.search.fidelity_lr,
        search_fidelity_temperature=config.search.fidelity_temperature,
        search_fidelity_alpha=config.search.fidelity_alpha,
        search_fidelity_batch_size=config.search.fidelity_batch_size,
        search_fidelity_batch_share=config.search.fidelity_batch_share,
        search_fidelity_full_scope=config.search.fidelity_full_scope,
        bn_recalibration=p.bn_recalibration,
        search_bn_select=config.search.bn_select,
        teacher_cache=p.teacher_cache,
        student_cache=p.student_cache,
        latency_budget_ms=budget,
        search_latency_probe=search_probe,
        relative_options=lat.relative.model_dump(),
        search_relative_options=search_relative,
        measurement_lock=measurement_lock,
        deployed_model=Path(config.deployed_model).read_bytes() if config.deployed_model is not None else None,
    )
