"""Terminal reward of a plan: weighted relative objective terms minus constraint hinges.

With baseline figures (subscript 0) of the uncompressed model, measured the same way:

    r =  w_acc  * (acc - acc0) / acc0
       + w_lat  * log(lat0 / lat)       (lat / lat0: the interleaved ratio where measured)
       + w_en   * log(energy0 / energy)
       + w_size * log(bytes0 / bytes)
       - c_lat  * max(0, lat / budget_ms - 1)
       - c_acc  * max(0, min_accuracy - slack - acc)

Log ratios make a 2x speed-up and a 2x slow-down symmetric and keep a 40x speed-up from
drowning every other term. A term whose figure (or baseline figure) is missing contributes 0
and is reported as None. A failed plan gets `failure_penalty` and nothing else; a plan that
missed a hard latency budget (recovery skipped) gets `failure_penalty` minus its latency hinge.
A relative `min_accuracy` (``-1pt``) is resolved against the baseline's accuracy. The slack
is 0 except for search-phase evaluations at reduced fidelity (``search.floor_slack_pt``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .config import Constraints, ObjectiveWeights
from .evaluation import Evaluation


@dataclass(frozen=True)
class RewardBreakdown:
    """The reward and each term's contribution to it (weighted; they sum to the reward).

    A term is None where its figure is missing.
    """

    reward: float
    terms: dict[str, float | None]


def _log_ratio(base: float | None, value: float | None) -> float | None:
    if base is None or value is None or base <= 0 or value <= 0:
        return None
    return math.log(base / value)


def compute_reward(
    evaluation: Evaluation,
    baseline: Evaluation,
    weights: ObjectiveWeights,
    constraints: Constraints,
    failure_penalty: float = -2.0,
    floor_slack: float = 0.0,
) -> RewardBreakdown:
    """Reward of `evaluation` against `baseline` (see module docstring).

    :param evaluation: the evaluated plan
    :param baseline: the uncompressed model's evaluation
    :param weights: weights of the relative terms
    :param constraints: latency budget, minimum accuracy and their penalty slopes
    :param failure_penalty: reward of a failed evaluation
    :param floor_slack: lower the accuracy floor by this much (a fraction; the search's
        ``floor_slack_pt`` / 100 while searching at reduced fidelity, else 0)
    """
    if not evaluation.ok:
        return RewardBreakdown(float(failure_penalty), {"failure": float(failure_penalty)})
    if evaluation.skipped is not None:
        # Over a hard constraint: infeasible, and worse the further it misses.
        hinge = 0.0
        if constraints.latency_budget_ms is not None and evaluation.latency_ms is not None:
            hinge = constraints.latency_penalty * max(0.0, evaluation.latency_ms / constraints.latency_budget_ms - 1.0)
        return RewardBreakdown(float(failure_penalty) - hinge, {"infeasible": float(failure_penalty), "latency_budget_penalty": -hinge})
    acc, acc0 = evaluation.accuracy, baseline.accuracy
    relative: dict[str, float | None] = {
        "accuracy": (acc - acc0) / acc0 if acc is not None and acc0 else None,
        # the interleaved ratio where measured: two medians minutes apart drift on a busy machine
        "latency": _log_ratio(1.0, evaluation.latency_ratio) if evaluation.latency_ratio else _log_ratio(baseline.latency_ms, evaluation.latency_ms),
        "energy": _log_ratio(baseline.energy_mj, evaluation.energy_mj),
        "size": _log_ratio(baseline.model_bytes, evaluation.model_bytes),
    }
    w = {"accuracy": weights.accuracy, "latency": weights.latency, "energy": weights.energy, "size": weights.size}
    terms: dict[str, float | None] = {k: (None if v is None else w[k] * v) for k, v in relative.items()}
    reward = sum(v for v in terms.values() if v is not None)
    lat_hinge = 0.0
    if constraints.latency_budget_ms is not None and evaluation.latency_ms is not None:
        lat_hinge = constraints.latency_penalty * max(0.0, evaluation.latency_ms / constraints.latency_budget_ms - 1.0)
    acc_hinge = 0.0
    floor = constraints.min_accuracy_for(acc0)
    if floor is not None and acc is not None:
        acc_hinge = constraints.accuracy_penalty * max(0.0, floor - floor_slack - acc)
    terms["latency_budget_penalty"] = -lat_hinge
    terms["min_accuracy_penalty"] = -acc_hinge
    reward -= lat_hinge + acc_hinge
    return RewardBreakdown(float(reward), terms)


__all__ = ["RewardBreakdown", "compute_reward"]
