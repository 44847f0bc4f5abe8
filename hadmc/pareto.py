"""Pareto archive over accuracy (max), latency, energy and size (min), with hypervolume.

Internally every objective is turned into one to minimise (accuracy is negated) and divided
by a per-objective scale, so the hypervolume is dimensionless when the scales are the
baseline's figures.

Missing objectives: an objective that no point in the archive has (e.g. energy on a machine
without an energy counter) is left out of dominance and hypervolume altogether. A point that
lacks an objective others have counts as worst on it: it can still be on the front through
its other objectives, but it adds no volume (the hypervolume only counts points better than
the reference on every active objective).

The hypervolume is exact in any dimension by HSO slicing (sort on the last objective, sum
slab thickness times the (d-1)-dimensional volume of the points below the slab) with a sweep
for 2-d; fine for the fronts of a compression run (tens to a few hundred points, d <= 4).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .evaluation import OBJECTIVES, Evaluation


def dominates(a: np.ndarray, b: np.ndarray) -> bool:
    """True when `a` is no worse than `b` everywhere and better somewhere (minimisation)."""
    return bool(np.all(a <= b) and np.any(a < b))


def non_dominated(points: np.ndarray) -> np.ndarray:
    """Boolean mask of the non-dominated rows of an (n, d) minimisation matrix.

    Duplicates of a non-dominated point are all kept (none dominates another).
    """
    pts = np.asarray(points, dtype=float)
    n = len(pts)
    keep = np.ones(n, dtype=bool)
    for i in range(n):
        if not keep[i]:
            continue
        worse_eq = np.all(pts[i] <= pts, axis=1) & np.any(pts[i] < pts, axis=1)
        keep &= ~worse_eq
    return keep


def hypervolume(points: np.ndarray, reference: np.ndarray) -> float:
    """Exact volume dominated by `points` and bounded by `reference` (minimisation).

    :param points: (n, d) objective matrix, smaller is better in every column
    :param reference: (d,) point every counted point must be strictly better than
    """
    ref = np.asarray(reference, dtype=float)
    pts = np.asarray(points, dtype=float).reshape(-1, ref.size)
    pts = pts[np.all(pts < ref, axis=1)]
    if len(pts) == 0:
        return 0.0
    pts = np.unique(pts[non_dominated(pts)], axis=0)
    return float(_hso(pts, ref))


def _hso(pts: np.ndarray, ref: np.ndarray) -> float:
    d = pts.shape[1]
    if d == 1:
        return float(ref[0] - pts[:, 0].min())
    if d == 2:
        order = np.argsort(pts[:, 0], kind="stable")
        vol, best_y = 0.0, ref[1]
        for x, y in pts[order]:
            if y < best_y:
                vol += (ref[0] - x) * (best_y - y)
                best_y = y
        return vol
    # Slice along the last objective: between consecutive distinct z values the cross
    # section is the (d-1)-volume of every point at or below the slab's bottom.
    order = np.argsort(pts[:, -1], kind="stable")
    pts = pts[order]
    zs = np.append(pts[:, -1], ref[-1])
    vol = 0.0
    for i in range(len(pts)):
        depth = zs[i + 1] - zs[i]
        if depth <= 0:
            continue
        below = pts[: i + 1, :-1]
        below = below[non_dominated(below)]
        vol += _hso(below, ref[:-1]) * depth
    return vol


@dataclass
class ParetoPoint:
    """One archived evaluation: its plan key and its objective figures (natural units)."""

    plan_key: str
    values: dict[str, float | None]


@dataclass
class ParetoArchive:
    """Non-dominated set of evaluations, updated as they arrive.

    :param reference: per objective, the point the hypervolume is measured from, in natural
        units (accuracy 0.0 and the baseline's latency/energy/bytes are the usual choice);
        objectives not named get no reference and the hypervolume is None until they have one
    :param scale: per objective divisor applied before the hypervolume (e.g. the baseline
        figures), so the volume is dimensionless; 1.0 where not named
    :param objectives: objective name -> "max" or "min"
    """

    reference: Mapping[str, float] | None = None
    scale: Mapping[str, float] | None = None
    objectives: Mapping[str, str] = field(default_factory=lambda: dict(OBJECTIVES))
    points: list[ParetoPoint] = field(default_factory=list)
    _hv: float | None = field(default=None, init=False, repr=False)
    _hv_fresh: bool = field(default=False, init=False, repr=False)

    # -- conversions --------------------------------------------------------------------
    def active_objectives(self, extra: Iterable[ParetoPoint] = ()) -> list[str]:
        """Objectives at least one point has a figure for (the others are ignored)."""
        pts = [*self.points, *extra]
        return [o for o in self.objectives if any(p.values.get(o) is not None for p in pts)]

    def _matrix(self, pts: list[ParetoPoint], active: list[str]) -> np.ndarray:
        m = np.empty((len(pts), len(active)))
        for i, p in enumerate(pts):
            for j, o in enumerate(active):
                v = p.values.get(o)
                m[i, j] = np.inf if v is None else self._to_min(o, float(v))
        return m

    def _to_min(self, objective: str, value: float) -> float:
        s = float((self.scale or {}).get(objective, 1.0)) or 1.0
        return (-value if self.objectives[objective] == "max" else value) / s

    # -- updates ------------------------------------------------------------------------
    def add(self, plan_key: str, values: Mapping[str, float | None]) -> bool:
        """Offer a point; returns True when it joins the front (dominated members leave)."""
        new = ParetoPoint(plan_key, {o: (None if values.get(o) is None else float(values[o])) for o in self.objectives})
        if all(v is None for v in new.values.values()):
            return False
        if any(p.plan_key == plan_key for p in self.points):
            return False
        active = self.active_objectives([new])
        m = self._matrix([*self.points, new], active)
        x = m[-1]
        if any(dominates(row, x) or np.array_equal(row, x) for row in m[:-1]):
            return False
        self.points = [p for p, row in zip(self.points, m[:-1]) if not dominates(x, row)] + [new]
        self._hv_fresh = False
        return True

    def add_evaluation(self, evaluation: Evaluation) -> bool:
        """Offer a successful evaluation; failed ones, and ones that skipped part of the
        pipeline (a missed hard constraint), never enter the front."""
        if not evaluation.complete:
            return False
        return self.add(evaluation.plan_key, evaluation.objectives())

    # -- queries ------------------------------------------------------------------------
    def hypervolume(self) -> float | None:
        """Hypervolume of the front against the reference over the active objectives.

        Recomputed only when the front changed since the last call. None without a
        reference for every active objective.
        """
        if self._hv_fresh:
            return self._hv
        active = self.active_objectives()
        ref = self.reference or {}
        if not active or any(o not in ref for o in active):
            self._hv = None
        else:
            r = np.array([self._to_min(o, float(ref[o])) for o in active])
            self._hv = hypervolume(self._matrix(self.points, active), r)
        self._hv_fresh = True
        return self._hv

    def keys(self) -> list[str]:
        return [p.plan_key for p in self.points]

    def __len__(self) -> int:
        return len(self.points)

    def __contains__(self, plan_key: object) -> bool:
        return any(p.plan_key == plan_key for p in self.points)


__all__ = ["ParetoArchive", "ParetoPoint", "dominates", "hypervolume", "non_dominated"]
