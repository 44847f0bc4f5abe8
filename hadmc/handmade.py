"""Hand-made plans: what a careful user builds without a search, measured in the same run.

Uniform L1 pruning at a few ratios, each at fp32 and int8, every one recovered with the same
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


def uniform_plans(
    run, ratios: tuple[float, ...] = UNIFORM_RATIOS, precisions: tuple[str, ...] = UNIFORM_PRECISIONS
) -> dict[str, CompressionPlan]:
    """Label -> uniform plan, all with the run's most thorough update and the same KD (T=4, alpha=0.7).

    :param run: a `hadmc.run.CompressionRun` (for its plan space's update options)
    """
    from .search.base import PlanSpace

    scope, budget = PlanSpace(run.groups, run.layout()).best_update()
    return {
        f"uniform {round(100 * r)}% {p}": CompressionPlan.uniform(r, p, temperature=4.0, alpha=0.7, scope=scope, budget=budget)
        for r in ratios
        for p in precisions
    }


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


__all__ = ["UNIFORM_PRECISIONS", "UNIFORM_RATIOS", "evaluate_handmade", "uniform_plans"]
