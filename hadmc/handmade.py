"""Hand-made plans: what a careful user builds without a search, measured in the same run.

Uniform L1 pruning at a few ratios, each at fp32 and int8, and from 50% up int8 again with the
first and last groups (stem and classifier) in fp32, the usual post-training-quantization
recipe (`hadmc.search.base.ends_in_fp32`); every one recovered with the same
knowledge-distillation recipe (the run's most thorough update, T=4, alpha=0.7, as in
DESIGN.md section 9). They are evaluated through the run like any plan (final phase: test
split, full recovery, artifact saved), and their keys are recorded in the run's meta
(`hadmc.results.HANDMADE_META`) so the report marks them and keeps them apart from the
searched plans.
"""

from __future__ import annotations

import logging

from .plan import CompressionPlan
from .results import HANDMADE_META

log = logging.getLogger(__name__)

#: Uniform prune ratios of the hand-made front.
UNIFORM_RATIOS: tuple[float, ...] = (0.0, 0.5, 0.7, 0.85, 0.9)
#: Precisions of the hand-made front (CPU targets; fp16 plans are a GPU matter).
UNIFORM_PRECISIONS: tuple[str, ...] = ("fp32", "int8")
#: From this prune ratio up, int8 plans come again with their ends in fp32.
ENDS_FP32_FROM: float = 0.5


def uniform_plans(
    run, ratios: tuple[float, ...] = UNIFORM_RATIOS, precisions: tuple[str, ...] = UNIFORM_PRECISIONS
) -> dict[str, CompressionPlan]:
    """Label -> uniform plan, all with the run's most thorough update and the same KD (T=4, alpha=0.7);
    with int8 among `precisions`, the int8 plans pruned `ENDS_FP32_FROM` or more come again with the
    first and last groups in fp32 (labelled "..., ends fp32").

    :param run: a `hadmc.run.CompressionRun` (for its plan space's update options and its groups in network order)
    """
    from .search.base import PlanSpace, ends_in_fp32

    space = PlanSpace(run.groups, run.layout())
    scope, budget = space.best_update()
    plans = {
        f"uniform {round(100 * r)}% {p}": CompressionPlan.uniform(r, p, temperature=4.0, alpha=0.7, scope=scope, budget=budget)
        for r in ratios
        for p in precisions
    }
    if "int8" in precisions and len(space.group_names) > 2:
        for r in ratios:
            if r >= ENDS_FP32_FROM:
                plain = run.resolve(plans[f"uniform {round(100 * r)}% int8"])
                plans[f"uniform {round(100 * r)}% int8, ends fp32"] = ends_in_fp32(space, plain)
    return plans


def evaluate_handmade(run, plans: dict[str, CompressionPlan]) -> dict[str, object]:
    """Evaluate labelled plans in the run's final phase and mark them hand-made; label -> `Outcome`.

    Plans already evaluated in the run are answered from its store (marked `cached`).
    """
    outcomes = run.evaluate_outcomes(list(plans.values()), phase="final")
    marks = dict(run.store.meta(run.run_id).get(HANDMADE_META) or {})
    for label, outcome in zip(plans, outcomes):
        if outcome.evaluation.ok:
            marks[outcome.evaluation.plan_key] = label
        else:
            log.warning("hand-made plan %s failed: %s", label, outcome.evaluation.error)
    run.store.set_meta(run.run_id, **{HANDMADE_META: marks})
    return dict(zip(plans, outcomes))


__all__ = ["ENDS_FP32_FROM", "UNIFORM_PRECISIONS", "UNIFORM_RATIOS", "evaluate_handmade", "uniform_plans"]
