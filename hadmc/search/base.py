"""The searcher protocol and the plan space every searcher chooses from.

A searcher is an ask/tell object (Olive's samplers, Optuna's study): `ask(n)` proposes up to
`n` plans, `tell(plans, evaluations, rewards)` reports what the run measured. It never
evaluates anything itself; the `CompressionRun` owns evaluation, de-duplication, the store and
the budget. `state_dict()` / `load_state_dict()` make a searcher resumable; the run writes
them atomically after every `tell`.

`PlanSpace` is the discrete grid of the MDP (`hadmc.envs.spaces.ActionLayout`) seen as named
categorical dimensions: per layer group its valid prune levels, the precisions the device runs
and the fusions that change the artifact on this backend; globally the (scope, budget) of the
update and the distillation temperature and weight. Every searcher sees the same space.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hadmc.plan import CompressionPlan, DistillConfig, GroupDecision, UpdateConfig

if TYPE_CHECKING:
    from hadmc.config import RunConfig
    from hadmc.evaluation import Evaluation
    from hadmc.groups import LayerGroup
    from hadmc.envs.spaces import ActionLayout

#: Distillation grids of the discrete searchers (the Gymnasium wrapper uses the same).
TEMPERATURES: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 12.0, 20.0)
ALPHAS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)


@dataclass(frozen=True)
class Dimension:
    """One categorical choice: its name (``GROUP/prune``, ``update``, ...) and its options."""

    name: str
    options: tuple[Any, ...]


class PlanSpace:
    """Named categorical dimensions of the plan grid (see module docstring).

    :param groups: the model's layer groups, in order
    :param layout: the MDP's action layout (prune grid, precisions, fusions, update options)
    :param temperatures: distillation temperatures offered
    :param alphas: distillation weights offered
    """

    def __init__(
        self,
        groups: Sequence[LayerGroup],
        layout: ActionLayout,
        temperatures: Sequence[float] = TEMPERATURES,
        alphas: Sequence[float] = ALPHAS,
    ) -> None:
        self.groups = list(groups)
        self.layout = layout
        self.group_names = [g.name for g in self.groups]
        grid = np.asarray(layout.prune_grid)
        self.prune_options: dict[str, tuple[float, ...]] = {
            g.name: tuple(float(r) for r, ok in zip(grid, g.prune_levels_valid(layout.prune_grid)) if ok) for g in self.groups
        }
        self.precisions = layout.precision_options()
        self.fusions = layout.fusion_options()
        self.updates: tuple[tuple[str, int], ...] = tuple((s, b) for s in layout.update_scopes for b in layout.update_budgets)
        self.temperatures = tuple(float(t) for t in temperatures)
        self.alphas = tuple(float(a) for a in alphas)
        dims = []
        for name in self.group_names:
            dims.append(Dimension(f"{name}/prune", self.prune_options[name]))
            dims.append(Dimension(f"{name}/precision", self.precisions))
            dims.append(Dimension(f"{name}/fusion", self.fusions))
        dims += [Dimension("update", self.updates), Dimension("temperature", self.temperatures), Dimension("alpha", self.alphas)]
        #: every dimension, including those with a single option
        self.all_dimensions = dims
        #: the dimensions with a real choice
        self.dimensions = [d for d in dims if len(d.options) > 1]

    # -- plans <-> choices ----------------------------------------------------------------
    def decode(self, values: dict[str, Any]) -> CompressionPlan:
        """The plan of a choice per dimension (option values; single-option dimensions may be left out)."""

        def get(name: str, options: tuple) -> Any:
            return values.get(name, options[0])

        groups = {
            n: GroupDecision(
                prune_ratio=get(f"{n}/prune", self.prune_options[n]),
                precision=get(f"{n}/precision", self.precisions),
                fusion=get(f"{n}/fusion", self.fusions),
            )
            for n in self.group_names
        }
        scope, budget = get("update", self.updates)
        return CompressionPlan(
            groups=groups,
            distill=DistillConfig(temperature=get("temperature", self.temperatures), alpha=get("alpha", self.alphas)),
            update=UpdateConfig(scope=scope, budget=budget),
        ).resolve(self.group_names)

    def encode(self, plan: CompressionPlan) -> dict[str, Any]:
        """The option of every dimension a plan takes (nearest option for off-grid values)."""
        plan = plan.resolve(self.group_names)
        out: dict[str, Any] = {}
        for n in self.group_names:
            d = plan.decision_for(n)
            out[f"{n}/prune"] = _nearest(self.prune_options[n], d.prune_ratio)
            out[f"{n}/precision"] = d.precision if d.precision in self.precisions else self.precisions[0]
            out[f"{n}/fusion"] = d.fusion if d.fusion in self.fusions else self.fusions[0]
        upd = (plan.update.scope, plan.update.budget)
        out["update"] = upd if upd in self.updates else self.updates[-1]
        out["temperature"] = _nearest(self.temperatures, plan.distill.temperature)
        out["alpha"] = _nearest(self.alphas, plan.distill.alpha)
        return out

    def indices(self, plan: CompressionPlan) -> np.ndarray:
        """Option index per dimension of `all_dimensions` (features for predictors)."""
        enc = self.encode(plan)
        return np.array([d.options.index(enc[d.name]) for d in self.all_dimensions], dtype=np.int64)

    def sample(self, rng: np.random.Generator) -> CompressionPlan:
        """A plan uniform over the grid (each dimension independently)."""
        return self.decode({d.name: d.options[int(rng.integers(len(d.options)))] for d in self.dimensions})

    def uniform(
        self, prune_ratio: float, precision: str = "fp32", update: tuple[str, int] | None = None, temperature: float = 4.0, alpha: float = 0.7
    ) -> CompressionPlan:
        """The same decision for every group (the level at or below `prune_ratio` each group allows)."""
        values: dict[str, Any] = {}
        for n in self.group_names:
            values[f"{n}/prune"] = self.level_at_or_below(n, prune_ratio)
            values[f"{n}/precision"] = precision if precision in self.precisions else self.precisions[0]
        values["update"] = update if update in self.updates else self.best_update()
        values["temperature"] = _nearest(self.temperatures, temperature)
        values["alpha"] = _nearest(self.alphas, alpha)
        return self.decode(values)

    def level_at_or_below(self, group: str, prune_ratio: float) -> float:
        """The largest prune level of `group` at or below `prune_ratio` (its least where none is)."""
        opts = self.prune_options[group]
        return max((r for r in opts if r <= prune_ratio + 1e-9), default=opts[0])

    def best_update(self) -> tuple[str, int]:
        """The most thorough recovery offered: widest scope, largest budget."""
        order = ("head", "last_stage", "half", "full")
        return max(self.updates, key=lambda u: (u[1], order.index(u[0])))

    def log10_size(self) -> float:
        return float(sum(np.log10(len(d.options)) for d in self.dimensions))


def _nearest(options: Sequence[float], value: float) -> float:
    return min(options, key=lambda o: abs(float(o) - float(value)))


@dataclass
class SearchContext:
    """What a searcher may know about the run it proposes plans for.

    :param space: the plan grid
    :param config: the resolved run configuration
    :param baseline: the original model's search-phase evaluation (validation split)
    :param reward: the run's reward of an evaluation (the configured objective)
    :param reference: hypervolume reference point per objective (natural units)
    :param objectives: objective -> "max"/"min" of the run's Pareto archive
    :param directory: where the searcher may keep files (checkpoints, an Optuna study)
    :param database: the run's SQLite file (Optuna stores its study there)
    :param run_name: the run's name
    :param seed: the search seed
    :param workers: plans the run evaluates at once (env-driven learners step as many envs)
    """

    space: PlanSpace
    config: RunConfig
    baseline: Evaluation
    reward: Any
    reference: dict[str, float]
    objectives: dict[str, str]
    directory: Path
    database: Path | None
    run_name: str
    seed: int = 0
    device: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    workers: int = 1


class Searcher(abc.ABC):
    """Ask/tell plan proposer (see module docstring).

    :param context: the run it searches for
    """

    #: registry name
    name: ClassVar[str] = ""
    #: the evaluations it is told about should carry per-group latency profiles
    wants_profiles: ClassVar[bool] = False

    def __init__(self, context: SearchContext) -> None:
        self.context = context
        self.space = context.space
        self.rng = np.random.default_rng(context.seed)

    @abc.abstractmethod
    def ask(self, n: int) -> list[CompressionPlan]:
        """Up to `n` plans to evaluate next (fewer, or none, when the searcher is done).

        With parallel workers the run asks while earlier plans are still being evaluated;
        answering none then means "tell me first", not "done"."""

    def tell(self, plans: Sequence[CompressionPlan], evaluations: Sequence[Evaluation], rewards: Sequence[float]) -> None:
        """What the run measured for `plans` (aligned lists; cached figures included): any
        subset of the plans asked so far, in any order (workers finish out of order). Plans
        asked and never told (the budget ran out, the run was killed) are simply dropped."""

    def state_dict(self) -> dict[str, Any]:
        """Everything a resume needs (JSON-serialisable; tensors allowed for `torch.save`)."""
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]

    def summary(self) -> dict[str, Any]:
        """Facts for the report (e.g. predicted episodes the agent trained on)."""
        return {}

    def close(self) -> None:
        """Release threads or files the searcher holds."""




def ends_in_fp32(space: PlanSpace, plan: CompressionPlan) -> CompressionPlan:
    """`plan` with its first and last groups (the stem, which sees the raw input, and the
    classifier, whose output is the logits) in fp32, where the space offers fp32 and the model
    has more than two groups.

    Keeping the ends in higher precision is the common post-training-quantization recipe, and
    on the embedded default it is worth about a point: over 14 bench_search runs, mostly-INT8
    plans pruned 60% or more with 3 recovery epochs read a median 98.33% (validation) with both
    ends fp32 and 97.22% with both INT8 (the ends are a sliver of the MACs, so they cost little
    latency). The greedy searcher found such plans by probing each group's INT8 alone; the
    anchors give the policy them from the start."""
    if "fp32" not in space.precisions or len(space.group_names) <= 2:
        return plan
    return plan.with_precision([space.group_names[0], space.group_names[-1]], "fp32")


__all__ = ["ALPHAS", "TEMPERATURES", "Dimension", "PlanSpace", "SearchContext", "Searcher", "ends_in_fp32"]
