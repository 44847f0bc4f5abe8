"""RunConfig: everything one compression run needs, validated where it enters.

A run configuration is plain data (pydantic, YAML or a dict). It names the model and its
weights, the data, the target device and how latency and energy are measured there, the
objective weights and constraints of the reward, the search grid, the penalty for plans that
fail, and where the run's database and artifacts live. Validation errors name the field path
and the allowed values, e.g. ``config.latency.probe: ...``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from .errors import ConfigError
from .files import check_user_file, load_mapping, write_atomic
from .plan import FUSIONS, MAX_PRUNE_RATIO, PRECISIONS, PRUNE_GRID, UPDATE_SCOPES, Fusion, Precision, UpdateScope, validate
from .validation import StrictModel



class _Strict(StrictModel):
    """Unknown fields, infinite or NaN numbers and true/false for numbers are refused."""


class LatencySettings(_Strict):
    """How latency is measured on the target (see DESIGN.md section 4)."""

    probe: str = Field("ort-cpu", description="latency probe backend by name (ort-cpu, ort-cuda, ort-trt, tensorrt, remote)")
    warmup_runs: int = Field(10, ge=0, description="warm-up inferences before timing")
    warmup_s: float = Field(0.2, ge=0.0, description="minimum warm-up wall time in seconds")
    min_iterations: int = Field(50, ge=1, description="timed inferences at least")
    min_seconds: float = Field(1.0, ge=0.0, description="timed wall time at least")
    threads: int = Field(1, ge=1, description="intra-op threads of the runtime (fixed for comparable figures)")
    batch_size: int = Field(1, ge=1)
    address: str | None = Field(None, description="remote://host:port of a `hadmc probe serve` (remote probe only)")
    token: str | None = Field(None, description="bearer token of the remote probe")
    search_warmup_s: float | None = Field(
        0.05, ge=0.0, description="minimum warm-up wall time while searching (None or more: warmup_s; warmup_runs still apply); "
        "final figures always use warmup_s",
    )  # fmt: skip
    search_min_seconds: float | None = Field(
        0.1, ge=0.0, description="timed wall time at least while searching (None or more: min_seconds); final figures always use min_seconds"
    )
    search_min_iterations: int | None = Field(
        10, ge=1, description="timed inferences at least while searching (None or more: min_iterations); final figures always use min_iterations"
    )
    relative: RelativeSettings = Field(default_factory=lambda: RelativeSettings())
    search_relative: RelativeSettings = Field(
        default_factory=lambda: RelativeSettings(block_s=0.03, min_pairs=4, max_spread=0.05, max_rounds=1),
        description="how search plans are timed against the original, each setting never finer than `relative`'s: a "
        "coarser ratio (about 5%) is enough to rank plans, and the front is re-timed with `relative` when the search ends",
    )


class RelativeSettings(_Strict):
    """How a plan is timed against the original in alternating blocks (`hal.interleave`)."""

    block_s: float = Field(0.05, gt=0.0, le=10.0, description="target length of one block of runs")
    min_pairs: int = Field(10, ge=2, le=10_000, description="block pairs in the first round, at least")
    max_spread: float = Field(0.02, gt=0.0, le=1.0, description="re-measure while the ratio's relative half-interval is above this")
    max_rounds: int = Field(4, ge=1, le=100, description="rounds at most before the ratio is flagged noisy")


class EnergySettings(_Strict):
    """How energy per inference is measured; `auto` picks NVML, RAPL or INA where readable."""

    probe: str | None = Field("auto", description="energy probe by name, `auto`, or null to skip energy")
    window_s: float = Field(2.0, ge=0.1, description="length of the back-to-back inference window")


class ObjectiveWeights(_Strict):
    """Weights of the relative terms of the reward (0 switches a term off).

    The accuracy term is the relative change of accuracy; at the default weight 20 one point
    lost costs about as much as a 1.22x speed-up gains (the latency term is a log ratio).
    """

    accuracy: float = Field(20.0, ge=0.0)
    latency: float = Field(1.0, ge=0.0)
    energy: float = Field(0.0, ge=0.0)
    size: float = Field(0.25, ge=0.0)


_RELATIVE_ACCURACY = re.compile(r"^-(\d+(\.\d+)?)pt$")


class Constraints(_Strict):
    """Constraints, enforced in the reward by hinge penalties.

    `min_accuracy` is absolute (top-1 in [0, 1]) or relative to the original model's accuracy
    on the same split: ``"-1pt"`` means at most one percentage point below it.
    """

    latency_budget_ms: float | None = Field(None, gt=0.0, description="latency the compressed model should meet")
    hard_latency_budget: bool = Field(False, description="plans over the budget are infeasible: search skips their recovery")
    min_accuracy: float | str | None = Field(None, description="lowest acceptable top-1: a number in [0, 1] or '-Npt' below the original")
    latency_penalty: float = Field(1.0, ge=0.0, description="reward lost per unit of relative latency over budget")
    accuracy_penalty: float = Field(100.0, ge=0.0, description="reward lost per unit of accuracy below the minimum (1.0 per point)")

    @field_validator("min_accuracy")
    @classmethod
    def _min_accuracy(cls, v: float | str | None) -> float | str | None:
        if v is None or isinstance(v, bool):
            if isinstance(v, bool):
                raise ValueError("must be a number in [0, 1] or '-Npt' (e.g. -1pt), not a boolean")
            return v
        if isinstance(v, str):
            text = v.strip().replace(" ", "")
            if _RELATIVE_ACCURACY.match(text):
                return text
            try:
                v = float(text)
            except ValueError:
                raise ValueError(f"must be a number in [0, 1] or points below the original such as '-1pt', got {v!r}") from None
        if not 0.0 <= float(v) <= 1.0:
            raise ValueError(f"an absolute minimum accuracy lies in [0, 1] (top-1 as a fraction), got {v}")
        return float(v)

    def min_accuracy_for(self, original: float | None) -> float | None:
        """The absolute floor: relative floors are resolved against the original's accuracy."""
        if isinstance(self.min_accuracy, str):
            if original is None:
                return None
            return original - float(_RELATIVE_ACCURACY.match(self.min_accuracy).group(1)) / 100.0
        return self.min_accuracy

    @model_validator(mode="after")
    def _hard_needs_budget(self) -> Constraints:
        if self.hard_latency_budget and self.latency_budget_ms is None:
            raise ValueError("hard_latency_budget needs latency_budget_ms")
        return self


class SearchSpace(_Strict):
    """The search: the discrete choices the controller has, the searcher, its budget and fidelity."""

    searcher: str = Field("ppo", description="searcher by name: ppo, random, nsga2, sb3-ppo, greedy")
    budget: int = Field(64, ge=1, le=100_000, description="distinct plans evaluated for real (cache hits do not count)")
    fidelity: float = Field(
        0.15, gt=0.0, le=1.0,
        description="fraction of each plan's recovery steps run while searching (1.0: full fidelity); "
        "below 1 the front is re-evaluated at full fidelity when the search ends",
    )  # fmt: skip
    fidelity_macs_ref: float = Field(
        0.4, ge=0.0, le=1.0,
        description="below full fidelity, a plan whose pruned student has fewer MACs than this share of the "
        "original's runs proportionally more of its recovery steps while searching (fidelity * ref / share, "
        "at most all): narrow students are cheap per step and read far too low after a short recovery; 0: "
        "every plan runs `fidelity`",
    )  # fmt: skip
    fidelity_lr: float = Field(
        3.0, ge=1.0, le=20.0,
        description="below full fidelity, a search recovery that runs fewer steps than the plan's own budget trains at "
        "this multiple of pipeline.learning_rate (the final evaluation always trains at the plan's own rate): a "
        "one-cycle schedule squeezed into a few steps stops short (a plan at T 1 read 93.3% after 9 of its 60 steps, "
        "98.9% at 3x, 99.0% in full); plans that distil at high temperatures still read low, and at 6x they "
        "collapse; 1: the plan's own rate",
    )  # fmt: skip
    fidelity_temperature: float = Field(
        4.0, ge=1.0, le=20.0,
        description="below full fidelity, a search recovery that runs fewer steps than the plan's own budget distils "
        "at no more than this temperature (the final evaluation always at the plan's own): high-temperature "
        "distillation matches every logit and moves the student's top class slowly, so a few steps of it read far "
        "below what the whole budget reaches (T 8, alpha 0.9: 67% after 5 of 20 steps, 88% in full; 89% with T "
        "capped at 4); one-epoch budgets searched at a few steps still read far too low whatever the temperature; "
        "20: the plan's own",
    )  # fmt: skip
    fidelity_alpha: float = Field(
        0.5, ge=0.0, le=1.0,
        description="below full fidelity, a search recovery that runs fewer steps than the plan's own budget weighs "
        "distillation by no more than this alpha, the rest being cross-entropy on the labels (the final evaluation "
        "always by the plan's own): a few steps of mostly-distillation read far below what the whole budget reaches, "
        "whatever the temperature (T 20, alpha 1, on the validation split: 67.8% after 10 of 60 steps at T 4, 97.2% "
        "in full, 91.1% with alpha capped at 0.5), so the search ranked plans by their distillation weight rather "
        "than by what they reach; 1: the plan's own",
    )  # fmt: skip
    fidelity_batch_size: int | None = Field(
        32, ge=1,
        description="below full fidelity, a search recovery that runs fewer steps than the plan's own budget trains "
        "on the same images in batches of this size, in proportionally more steps (the final evaluation always at "
        "pipeline.batch_size): on the 8 plans of a benchmark's fidelity check, batches of 32 ranked the plans like "
        "full fidelity with a Spearman of 0.78-0.83 against 0.73-0.74 at 64 (0.92 against 0.78-0.86 on 10 other "
        "plans), and at 16 every plan read alike; None: pipeline.batch_size",
    )  # fmt: skip
    fidelity_batch_share: float = Field(
        0.5, gt=0.0, le=1.0,
        description="below full fidelity, fidelity_batch_size applies to shortened search recoveries that run less than "
        "this share of the plan's steps; the rest train at pipeline.batch_size: a narrow student that fidelity_macs_ref "
        "gives most of its budget needs no more steps, and tiny students pay per step, not per image (51 of 60 steps "
        "in batches of 32 took 5.0 s to recover, all 60 in batches of 64 4.5 s, reading alike); 1: every shortened "
        "recovery",
    )  # fmt: skip
    fidelity_full_scope: bool = Field(
        True,
        description="below full fidelity, a shortened search recovery trains the whole model even when the plan's update "
        "scope trains part of it (the final evaluation always the plan's own scope): a few steps that leave a heavily "
        "pruned stem frozen read far below what the whole budget reaches (stem pruned 90%, scope half, T 4, alpha 1: "
        "82.2% after 8 of 60 steps, 96.7% in full; 87.8% at full scope). On the 8-plan pools of three benchmark runs it "
        "brought search readings nearer full fidelity (mean absolute error 3.8, 2.8, 2.6 -> 2.5, 1.7, 1.6 points; "
        "Spearman 0.48, 0.82, 0.99 -> 0.62, 0.84, 0.88); incompatible with fidelity_scope",
    )  # fmt: skip
    fidelity_scope: bool = Field(
        False,
        description="below full fidelity, a plan that trains only part of the model (update scope half, last_stage "
        "or head) runs more of its recovery steps while searching, as many more as its steps are cheaper (1.8x, 2.5x, "
        "3.3x, measured). It made up for stale BatchNorm statistics in the frozen layers (a half-scope plan read 58% "
        "after 26 of its 60 steps and 97% in full), which pipeline.refresh_frozen_norms now re-estimates before "
        "recovery; without it a bench_search fidelity check costs 14% less at a Spearman of 0.86 (0.91 with it)",
    )  # fmt: skip
    bn_select: bool = Field(
        True,
        description="with pipeline.bn_recalibration: select, search evaluations keep re-estimated BatchNorm statistics "
        "only where they raise the PyTorch student's validation accuracy, as the final ones do on the artifacts; false: "
        "search evaluations always re-estimate them, which reads plans trained long with frozen layers up to 35 points "
        "low (96% -> 61% on the embedded default)",
    )  # fmt: skip
    finalize_max: int = Field(12, ge=1, description="front plans re-evaluated at full fidelity on the test split")
    floor_slack_pt: float = Field(
        0.0, ge=0.0, le=100.0,
        description="below full fidelity, the search's reward lowers the accuracy floor by this many points: "
        "a short recovery reads accuracy low, most for aggressive plans (on the embedded default at fidelity 0.25, "
        "uniform 50% int8 read 97.2% while searching and 98.5% in full), so without slack the search avoids "
        "plans that would meet the floor; the final front and the best plan are judged against the floor itself",
    )  # fmt: skip
    batch: int = Field(1, ge=1, le=256, description="plans a searcher proposes per round")
    hypervolume_accuracy_pt: float = Field(
        2.0, ge=0.0, le=100.0, description="hypervolume reference: this many points below the original's accuracy"
    )

    prune_grid: tuple[float, ...] = Field(PRUNE_GRID, description="prune ratio levels; must start at 0.0")
    precisions: tuple[Precision, ...] = Field(PRECISIONS, description="precisions offered (the device may mask more)")
    fusions: tuple[Fusion, ...] = Field(FUSIONS)
    update_scopes: tuple[UpdateScope, ...] = Field(UPDATE_SCOPES)
    update_budgets: tuple[int, ...] = Field((0, 1, 2, 3), description="recovery epoch levels of the update head")

    @field_validator("searcher")
    @classmethod
    def _searcher_name(cls, v: str) -> str:
        from .search import SEARCHERS

        if v not in SEARCHERS:
            raise ValueError(f"unknown searcher; valid: {', '.join(SEARCHERS.names())}")
        return v

    @model_validator(mode="after")
    def _one_scope_rule(self) -> SearchSpace:
        if self.fidelity_scope and self.fidelity_full_scope:
            raise ValueError(
                "fidelity_scope gives plans that train part of the model more search steps, and fidelity_full_scope "
                "(on by default) trains the whole model in shortened search recoveries: set fidelity_full_scope: false "
                "to use fidelity_scope"
            )
        return self

    @field_validator("prune_grid")
    @classmethod
    def _grid(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if not v:
            raise ValueError("needs at least one level")
        v = tuple(round(float(x), 4) for x in v)
        if v[0] != 0.0 or list(v) != sorted(set(v)):
            raise ValueError("must be strictly increasing and start at 0.0 (no pruning)")
        if v[-1] > MAX_PRUNE_RATIO:
            raise ValueError(f"levels must lie in [0, {MAX_PRUNE_RATIO}]")
        return v

    @field_validator("precisions")
    @classmethod
    def _precisions(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if "fp32" not in v:
            raise ValueError("must include fp32 (the precision every device supports)")
        return tuple(p for p in PRECISIONS if p in v)  # canonical order, no duplicates

    @field_validator("fusions", "update_scopes")
    @classmethod
    def _nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("needs at least one option")
        return tuple(dict.fromkeys(v))

    @field_validator("update_budgets")
    @classmethod
    def _budgets(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or min(v) < 0 or max(v) > 100:
            raise ValueError("needs at least one level, each in [0, 100]")
        return tuple(sorted(set(v)))


class PipelineSettings(_Strict):
    """How a plan is applied (pruning importance, recovery, calibration)."""

    importance: Literal["l1", "taylor"] = Field("l1", description="Torch-Pruning channel importance")
    round_to: int | None = Field(None, ge=1, description="keep channel counts multiples of this (tensor cores)")
    batch_size: int = Field(64, ge=1, description="batch size of recovery training and evaluation")
    learning_rate: float = Field(0.01, gt=0.0, description="peak learning rate of recovery fine-tuning (one-cycle SGD, as `apply_plan`)")
    calibration_batches: int = Field(8, ge=1, description="batches of the training split for INT8 calibration")
    search_calibration_batches: int | None = Field(
        1, ge=1, description="INT8 calibration batches while searching (None or more: calibration_batches); final figures always use calibration_batches"
    )
    max_train_batches: int | None = Field(None, ge=1, description="cap on batches per recovery epoch (tests, quick runs)")
    max_eval_batches: int | None = Field(None, ge=1, description="cap on accuracy batches (tests only; reported runs use the full split)")
    bn_recalibration: Literal["select", "search", "always", "never"] = Field(
        "select",
        description="re-estimate BatchNorm statistics after pruning and recovery: select (only where it raises validation "
        "accuracy: final evaluations choose on the artifacts, search ones on the PyTorch student, or always re-estimate "
        "with search.bn_select false), search (only while searching), always, or never",
    )
    refresh_frozen_norms: bool = Field(
        True,
        description="when a pruned plan's update scope freezes part of the model, re-estimate BatchNorm statistics before "
        "recovery (unless bn_recalibration is never): the frozen part's BatchNorm layers otherwise keep the statistics of the "
        "network before pruning while the rest trains around them; on the embedded default a half-scope plan read 48-55% after "
        "15-45 of its 60 steps and 96% after all 60 without this, 94-97% at every step count with it",
    )  # fmt: skip
    teacher_cache: bool = Field(True, description="compute the teacher's training-split logits once per run (off for augmented data)")
    student_cache: int = Field(4, ge=0, description="recovered students kept for plans that differ only in precision or fusion")
    train_device: str = Field(
        "auto",
        description="where recovery trains: auto (the first CUDA GPU torch sees, else the CPU), cpu, cuda or cuda:N; "
        "pruning, export and every measurement stay where they are",
    )

    @field_validator("train_device")
    @classmethod
    def _train_device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"{v!r} is not a training device; use auto, cpu, cuda or cuda:N")
        return v


class AgentSettings(_Strict):
    """The PPO agent of the `ppo` and `sb3-ppo` searchers.

    :param ratio_mean: how per-factor importance ratios combine (token, joint, arithmetic,
        geometric, harmonic, power:P)
    :param loss: ppo-clip, pmd-mean or pmd-part
    :param advantage: gae, group, loo or ploo
    :param dyna: the `ppo` searcher learns between real evaluations on a predictor fitted to
        them and sends only its most promising plans to the evaluator; False runs plain
        on-policy PPO on real evaluations (for comparison)
    :param predicted_episodes: predicted episodes the policy trains on after each real batch (Dyna)
    :param candidates: plans sampled from the policy per proposal round, of which the most
        promising (in turn by predicted hypervolume gain and by predicted reward, both optimistic
        in accuracy) are evaluated for real
    :param initial: plans evaluated before the first predictor is fitted (None: max(8, budget // 8))
    :param ppo: further `hadmc.agents.PPOConfig` hyperparameters (SB3 names)
    """

    ratio_mean: str = Field("token", min_length=1)
    loss: str = Field("ppo-clip", min_length=1)
    advantage: str = Field("gae", min_length=1)
    dyna: bool = True
    predicted_episodes: int = Field(256, ge=0, le=1_000_000)
    candidates: int = Field(256, ge=1, le=100_000)
    initial: int | None = Field(None, ge=1)
    ppo: dict[str, Any] = Field(default_factory=dict)


class ExecutionSettings(_Strict):
    """Where plans are evaluated; changes no figure, so a run may resume with other settings.

    :param workers: plans evaluated at once. 1 evaluates in this process; more start worker
        processes (or Ray actors), each with its own evaluator built once, and latency is then
        measured one artifact at a time per machine under a lock the workers share
    :param executor: ``process`` (worker processes on this machine) or ``ray`` (Ray actors on
        a Ray cluster; ``pip install 'hadmc[ray]'``)
    :param address: the Ray cluster to join (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``);
        None starts a local Ray instance
    :param threads_per_worker: torch threads of each worker (None: the machine's cores divided
        by the workers, at least 1), so workers do not fight over cores
    """

    workers: int = Field(1, ge=1, le=256, description="plans evaluated at once")
    executor: Literal["process", "ray"] = Field("process", description="process (this machine) or ray (a Ray cluster)")
    address: str | None = Field(None, min_length=1, description="Ray cluster address (executor ray only); None starts Ray locally")
    threads_per_worker: int | None = Field(None, ge=1, le=1024, description="torch threads per worker (None: cores // workers)")

    @model_validator(mode="after")
    def _address_needs_ray(self) -> ExecutionSettings:
        if self.address is not None and self.executor != "ray":
            raise ValueError("address names a Ray cluster: set executor: ray (--executor ray) or drop it")
        return self

    @property
    def parallel(self) -> bool:
        """Plans go to workers (processes or actors) rather than being evaluated in this process."""
        return self.workers > 1 or self.executor == "ray"


class RunConfig(_Strict):
    """One compression run.

    :param name: run name; the run directory is ``run_dir`` (default ``runs/<name>``)
    :param model: architecture by name (``default`` = the embedded digits CNN, or a torchvision name)
    :param weights: local weights file (``.pt`` loaded with ``weights_only=True``, or ``.safetensors``)
    :param data: ``digits`` (bundled), a CIFAR-10 directory, or an ImageFolder root
    :param image_size: input side in pixels (None = the dataset's default)
    :param device: DeviceSpec name (``configs/devices/<name>.yaml``), a YAML path, or ``local`` (auto-detect)
    :param latency: latency probe and its measurement settings
    :param energy: energy probe and its window
    :param objectives: reward weights of the relative accuracy/latency/energy/size terms
    :param constraints: latency budget and minimum accuracy with their hinge penalties
    :param search: prune grid, precisions, fusions, update scopes and budgets offered; the
        searcher, its budget of distinct plans and its recovery fidelity
    :param agent: the PPO agent of the ppo / sb3-ppo searchers
    :param pipeline: how plans are applied
    :param failure_penalty: reward of a plan that fails to apply or measure (negative)
    :param deployed_model: the ONNX model the devices in the field already run: every plan's
        delta patch against it (``hadmc delta``) is sized and recorded next to its figures
    :param execution: how many plans are evaluated at once, and where (see `ExecutionSettings`)
    :param run_dir: where ``hadmc.db`` and artifacts go (None = ``runs/<name>``)
    :param use_cache: reuse the stored evaluation of an identical plan instead of re-applying it
    :param seed: seed of data splits, recovery training and the environment
    """

    name: str = Field("default", min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    model: str = Field("default", min_length=1)
    weights: Path | None = None
    data: str = Field("digits", min_length=1)
    image_size: int | None = Field(None, ge=8, le=1024)
    device: str = Field("local", min_length=1)
    latency: LatencySettings = Field(default_factory=LatencySettings)
    energy: EnergySettings = Field(default_factory=EnergySettings)
    objectives: ObjectiveWeights = Field(default_factory=ObjectiveWeights)
    constraints: Constraints = Field(default_factory=Constraints)
    search: SearchSpace = Field(default_factory=SearchSpace)
    agent: AgentSettings = Field(default_factory=AgentSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    failure_penalty: float = Field(-20.0, le=0.0, description="reward of a failed plan (at the default weights, as bad as losing all accuracy)")
    deployed_model: Path | None = Field(None, description="ONNX model already deployed: each plan's patch size against it is recorded")
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    run_dir: Path | None = None
    use_cache: bool = True
    seed: int = Field(0, ge=0)

    @field_validator("weights")
    @classmethod
    def _weights_exist(cls, weights: Path | None) -> Path | None:
        if weights is not None:
            try:
                check_user_file(weights, "weights file", ConfigError)
            except ConfigError as exc:
                raise ValueError(f"{exc}; pass a local .pt/.pth or .safetensors file") from None
        return weights

    @field_validator("deployed_model")
    @classmethod
    def _deployed_exists(cls, path: Path | None) -> Path | None:
        if path is not None:
            try:
                check_user_file(path, "deployed model", ConfigError)
            except ConfigError as exc:
                raise ValueError(f"{exc}; pass the ONNX file the devices run now") from None
        return path

    # -- construction -------------------------------------------------------------------
    @classmethod
    def parse(cls, data: dict[str, Any] | str | bytes) -> RunConfig:
        """Validate a dict or JSON text; errors name the field path and the allowed values."""
        return validate(cls, data, ConfigError, "config")

    @classmethod
    def load(cls, path: str | Path, **overrides: Any) -> RunConfig:
        """Read a YAML (or JSON) file; keyword overrides replace top-level keys (CLI flags).
        Any problem with the file or its content names the file."""
        data = load_mapping(path, "config file", ConfigError)
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.parse(data)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None

    @classmethod
    def load_stored(cls, path: str | Path) -> RunConfig:
        """A run's own ``config.yaml`` (the resolved configuration it was started with), settings
        it predates filled in with what it ran with (`with_legacy_settings`)."""
        data = load_mapping(path, "config file", ConfigError)
        try:
            return cls.parse(with_legacy_settings(data))
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None

    def dump_yaml(self) -> str:
        import yaml

        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: str | Path) -> Path:
        """Write the resolved config as YAML, atomically."""
        return write_atomic(path, self.dump_yaml(), ConfigError)

    # -- use ---------------------------------------------------------------------------
    @property
    def resolved_run_dir(self) -> Path:
        return Path(self.run_dir) if self.run_dir is not None else Path("runs") / self.name

    @property
    def database_path(self) -> Path:
        return self.resolved_run_dir / "hadmc.db"

    def evaluation_context(self, phase: str = "final") -> str:
        """Key of everything besides the plan that changes an evaluation's figures.

        Two evaluations of the same plan are interchangeable only when model, weights, data,
        image size, device, probe settings, pipeline settings and phase (split and, while
        searching, fidelity) all agree.
        """
        import hashlib
        import json

        ctx = self.model_dump(
            mode="json", include={"model", "weights", "data", "image_size", "device", "latency", "energy", "pipeline", "seed"}
        )
        ctx["latency"].pop("token", None)  # a secret, and it does not change a figure
        # The device recovery trains on, resolved (auto means another thing on another machine);
        # absent for the CPU, as in contexts from before the setting.
        ctx["pipeline"].pop("train_device", None)
        trained_on = resolve_train_device(self.pipeline.train_device)
        if trained_on != "cpu":
            ctx["train_device"] = trained_on
        if ctx["latency"].get("search_warmup_s") is None:  # absent before the setting: older contexts stay as they were
            ctx["latency"].pop("search_warmup_s", None)
        if not ctx["pipeline"].get("refresh_frozen_norms") or self.pipeline.bn_recalibration == "never":
            ctx["pipeline"].pop("refresh_frozen_norms", None)  # what runs before the setting did: their contexts stay
        ctx["phase"] = phase
        if self.deployed_model is not None:  # adds a figure (the patch size); absent, contexts stay as they were
            ctx["deployed_model"] = hashlib.sha256(Path(self.deployed_model).read_bytes()).hexdigest()
        if phase == "search":
            ctx["fidelity"] = self.search.fidelity
            if self.search.fidelity < 1.0 and self.search.fidelity_macs_ref > 0.0:  # absent at 0, so older contexts stay as they were
                ctx["fidelity_macs_ref"] = self.search.fidelity_macs_ref
            if self.search.fidelity < 1.0 and self.search.fidelity_lr != 1.0:  # absent at 1, as in older contexts
                ctx["fidelity_lr"] = self.search.fidelity_lr
            if self.search.fidelity < 1.0 and self.search.fidelity_temperature < 20.0:  # absent at 20, as in older contexts
                ctx["fidelity_temperature"] = self.search.fidelity_temperature
            if self.search.fidelity < 1.0 and self.search.fidelity_alpha < 1.0:  # absent at 1, as in older contexts
                ctx["fidelity_alpha"] = self.search.fidelity_alpha
            batch = self.search.fidelity_batch_size
            if self.search.fidelity < 1.0 and batch is not None and batch < self.pipeline.batch_size:  # absent otherwise, as in older contexts
                ctx["fidelity_batch_size"] = batch
            if self.search.fidelity < 1.0 and self.search.fidelity_scope:  # absent otherwise, as in older contexts
                ctx["fidelity_scope"] = True
            if self.search.fidelity < 1.0 and self.search.fidelity_full_scope:  # absent otherwise, as in older contexts
                ctx["fidelity_full_scope"] = True
            if self.search.fidelity < 1.0 and "fidelity_batch_size" in ctx and self.search.fidelity_batch_share < 1.0:  # likewise
                ctx["fidelity_batch_share"] = self.search.fidelity_batch_share
            if self.search.bn_select and self.pipeline.bn_recalibration == "select":  # absent otherwise, as in older contexts
                ctx["bn_select"] = True
            ctx["hard_latency_budget"] = self.constraints.latency_budget_ms if self.constraints.hard_latency_budget else None
        return hashlib.sha256(json.dumps(ctx, sort_keys=True).encode()).hexdigest()[:16]


def resolve_train_device(spec: str) -> str:
    """The torch device recovery trains on for ``pipeline.train_device``: ``auto`` is ``cuda``
    when torch sees a CUDA GPU, else ``cpu``; a GPU asked for but not there is a `ConfigError`."""
    if spec == "cpu":
        return "cpu"
    import torch

    available = torch.cuda.is_available()
    if spec == "auto":
        return "cuda" if available else "cpu"
    index = int(spec.partition(":")[2] or 0)
    if not available or index >= torch.cuda.device_count():
        seen = f"{torch.cuda.device_count()} CUDA GPU(s)" if available else "no CUDA GPU (torch.cuda.is_available() is False)"
        raise ConfigError(f"pipeline.train_device is {spec!r} but torch sees {seen}: set it to auto or cpu")
    return spec


#: Settings that came with a change of behaviour, and the value a run started before them ran
#: with (a new setting's default is otherwise what an older run ran with).
LEGACY_SETTINGS: dict[tuple[str, str], Any] = {
    ("search", "fidelity_macs_ref"): 0.0, ("search", "bn_select"): False, ("latency", "search_warmup_s"): None,
    ("search", "fidelity_scope"): False, ("pipeline", "refresh_frozen_norms"): False, ("search", "fidelity_lr"): 1.0,
    ("search", "fidelity_temperature"): 20.0, ("search", "fidelity_alpha"): 1.0,
    ("search", "fidelity_batch_size"): None, ("search", "fidelity_batch_share"): 1.0, ("search", "fidelity_full_scope"): False,
}  # fmt: skip


def with_legacy_settings(stored: dict[str, Any]) -> dict[str, Any]:
    """A run's stored (fully resolved) configuration with every `LEGACY_SETTINGS` entry it lacks
    set to what it ran with; user YAML files are not stored configurations and keep the defaults."""
    out = dict(stored)
    for (section, key), value in LEGACY_SETTINGS.items():
        part = out.get(section)
        if isinstance(part, dict) and key not in part:
            out[section] = {**part, key: value}
    return out


LatencySettings.model_rebuild()

__all__ = [
    "AgentSettings",
    "RelativeSettings",
    "Constraints",
    "EnergySettings",
    "ExecutionSettings",
    "LatencySettings",
    "ObjectiveWeights",
    "PipelineSettings",
    "RunConfig",
    "SearchSpace",
    "resolve_train_device",
]
