"""Greedy sensitivity search: the baseline of AIMET's and ModelOpt FastNAS's per-layer search.

1. Sensitivity: each prunable group alone at a few prune levels (the rest untouched), and each
   group alone at int8 where the device has it; every probe is recovered like any plan.
2. Threshold: one global threshold tau on the accuracy drop a group may cause. Each group gets
   its largest probed prune level whose drop is at most tau (and int8 when its int8 drop is at
   most tau and int8 made it faster). Only the observed drops change the plan, so tau runs over
   them: bisected, with a latency budget, to the smallest tau that meets it; with an accuracy
   floor, to the largest tau that keeps it; with neither, sweeping them. Once the bisection
   has converged, the remaining thresholds are swept, and then the best plan so far is
   refined one group and one level at a time, so greedy spends the same budget as the others.

The budget splits into the probes (about three quarters) and the threshold steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hadmc.plan import CompressionPlan

from .base import SearchContext, Searcher


class GreedySearcher(Searcher):
    """Per-group sensitivity, then one bisected threshold (see module docstring)."""

    name = "greedy"

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        budget = context.config.search.budget
        space = self.space
        self.update = space.best_update()
        self.probes = self._probe_plans(budget)
        self.queue: list[dict] = list(self.probes)
        self.results: dict[str, list[float | None]] = {}  # probe id -> [accuracy, latency]
        self.lo, self.hi = 0, None  # bisection interval: indices into the sorted thresholds
        self.tried: list[float] = []
        self.asked: set[str] = set()
        self.best: list | None = None  # [reward, plan] of the best complete plan so far
        #: plan key -> what it was asked for ({"probe": ...}, {"tau": ...} or {"refine": True}), until told
        self.pending: dict[str, dict[str, Any]] = {}

    # -- the probes ---------------------------------------------------------------------
    def _probe_plans(self, budget: int) -> list[dict]:
        space = self.space
        prunable = [g.name for g in space.groups if len(space.prune_options[g.name]) > 1]
        int8 = "int8" in space.precisions
        probes_budget = max(1, budget - max(4, budget // 4))
        per_group_int8 = int8 and probes_budget >= 2 * len(prunable) + len(space.group_names)
        n_int8 = len(space.group_names) if per_group_int8 else int(int8)
        levels = max(1, (probes_budget - n_int8) // max(1, len(prunable)))
        # Groups by latency share first, so a small budget probes those that matter most.
        order = sorted(prunable, key=lambda n: -(_share(space, n)))
        if levels == 1 and probes_budget - n_int8 < len(prunable):
            order = order[: max(0, probes_budget - n_int8)]
        probes = []
        for name in order:
            opts = [r for r in space.prune_options[name] if r > 0]
            for i in range(min(levels, len(opts))):
                r = opts[min(len(opts) - 1, round((i + 1) * len(opts) / min(levels, len(opts))) - 1)]
                probes.append({"id": f"{name}@{r}", "group": name, "ratio": r, "precision": "fp32"})
        if per_group_int8:
            probes += [{"id": f"{n}@int8", "group": n, "ratio": 0.0, "precision": "int8"} for n in space.group_names]
        elif int8:
            probes.append({"id": "*@int8", "group": "*", "ratio": 0.0, "precision": "int8"})
        return probes

    def _probe_plan(self, probe: dict) -> CompressionPlan:
        values: dict[str, Any] = {"update": self.update}
        for n in self.space.group_names:
            alone = probe["group"] in (n, "*")
            values[f"{n}/prune"] = probe["ratio"] if alone and probe["ratio"] > 0 else 0.0
            values[f"{n}/precision"] = probe["precision"] if alone else "fp32"
        return self.space.decode(values)

    # -- the threshold -------------------------------------------------------------------
    def _drop(self, probe_id: str) -> float | None:
        base = self.context.baseline.accuracy
        acc = (self.results.get(probe_id) or [None])[0]
        return None if acc is None or base is None else base - acc

    def _plan_for(self, tau: float) -> CompressionPlan:
        space = self.space
        base_lat = self.context.baseline.latency_ms or float("inf")
        values: dict[str, Any] = {"update": self.update}
        global_int8 = self._int8_ok("*@int8", tau, base_lat)
        for n in space.group_names:
            ratio = 0.0
            for p in self.probes:
                if p["group"] == n and p["precision"] == "fp32":
                    d = self._drop(p["id"])
                    if d is not None and d <= tau:
                        ratio = max(ratio, p["ratio"])
            values[f"{n}/prune"] = ratio
            values[f"{n}/precision"] = "int8" if (global_int8 or self._int8_ok(f"{n}@int8", tau, base_lat)) else "fp32"
        return space.decode(values)

    def _int8_ok(self, probe_id: str, tau: float, base_lat: float) -> bool:
        r = self.results.get(probe_id)
        d = self._drop(probe_id)
        return bool(r and d is not None and d <= tau and r[1] is not None and r[1] < base_lat)

    def _thresholds(self) -> list[float]:
        """The distinct thresholds: every observed drop (and 0)."""
        return sorted({0.0, *(d for p in self.probes if (d := self._drop(p["id"])) is not None)})

    def _next_tau(self) -> float | None:
        """The next threshold whose plan has not been asked yet (bisection first), or None."""
        taus = self._thresholds()
        if self.hi is None:
            self.hi = len(taus) - 1
        c = self.context.config.constraints
        bisecting = c.latency_budget_ms is not None or c.min_accuracy is not None
        if bisecting and self.hi - self.lo > 1:
            mid = (int(self.lo) + int(self.hi)) // 2
            if self._plan_for(taus[mid]).key() not in self.asked:
                return taus[mid]
        # Sweep: the untried threshold farthest from those tried.
        fresh = [t for t in taus if self._plan_for(t).key() not in self.asked]
        if not fresh:
            return None
        return max(fresh, key=lambda t: min([abs(t - x) for x in self.tried] + [float("inf")]))

    def _refinement(self) -> CompressionPlan | None:
        """A neighbour of the best plan so far (one group one prune level up or down, or its
        precision flipped) that has not been asked yet."""
        if not self.best:
            return None
        space = self.space
        best = space.encode(CompressionPlan.parse(self.best[1]))
        moves = []
        for n in space.group_names:
            opts = space.prune_options[n]
            i = opts.index(best[f"{n}/prune"])
            for j in (i + 1, i - 1):
                if 0 <= j < len(opts):
                    moves.append({**best, f"{n}/prune": opts[j]})
            for prec in space.precisions:
                if prec != best[f"{n}/precision"]:
                    moves.append({**best, f"{n}/precision": prec})
        order = self.rng.permutation(len(moves))
        for k in order:
            plan = space.decode(moves[int(k)])
            if plan.key() not in self.asked:
                return plan
        return None

    # -- ask/tell ------------------------------------------------------------------------
    def ask(self, n: int) -> list[CompressionPlan]:
        """Probes while any are queued (up to `n`); then one threshold or refinement plan per
        call. Asked while others are pending, the bisection's next step (which waits for the
        pending result) is skipped for the untried threshold farthest from those tried."""
        plans: list[CompressionPlan] = []
        if self.queue:
            batch, self.queue = self.queue[:n], self.queue[n:]
            for probe in batch:
                plans.append(self._probe_plan(probe))
                self.pending[plans[-1].key()] = {"probe": probe}
        else:
            tau = self._next_tau()
            if tau is not None:
                self.tried.append(tau)
                plans = [self._plan_for(tau)]
                self.pending[plans[0].key()] = {"tau": tau}
            else:
                plan = self._refinement()
                plans = [plan] if plan is not None else []
                if plan is not None:
                    self.pending[plan.key()] = {"refine": True}
        self.asked.update(p.key() for p in plans)
        return plans

    def tell(self, plans: Sequence[CompressionPlan], evaluations, rewards) -> None:
        """Any subset of the asked plans, in any order (parallel workers finish out of order)."""
        for p, ev, r in zip(plans, evaluations, rewards):
            self._told(p, ev, r, self.pending.pop(p.key(), {}))

    def _told(self, plan: CompressionPlan, ev, reward: float, asked: dict[str, Any]) -> None:
        if "probe" in asked:
            self.results[asked["probe"]["id"]] = [ev.accuracy if ev.complete else None, ev.latency_ms]
            return
        if ev.complete and (not self.best or reward > self.best[0]):
            self.best = [float(reward), plan.model_dump(mode="json")]
        if "tau" in asked:
            i = self._thresholds().index(asked["tau"]) if asked["tau"] in self._thresholds() else None
            c = self.context.config.constraints
            if i is None:
                return
            if c.latency_budget_ms is not None:
                meets = ev.latency_ms is not None and ev.latency_ms <= c.latency_budget_ms
                # meeting the budget: try a smaller drop; missing it: allow more
                self.hi, self.lo = (i, self.lo) if meets else (self.hi, i)
            elif c.min_accuracy is not None:
                floor = c.min_accuracy_for(self.context.baseline.accuracy)
                keeps = ev.complete and ev.accuracy is not None and floor is not None and ev.accuracy >= floor
                self.lo, self.hi = (i, self.hi) if keeps else (self.lo, i)

    def state_dict(self) -> dict[str, Any]:
        """What was told; plans asked and never told (the budget ran out, or the run was killed
        while they were evaluated) are asked again after a resume: probes go back to the queue."""
        untold = [a["probe"] for a in self.pending.values() if "probe" in a]
        return {
            **super().state_dict(), "queue": untold + self.queue, "results": self.results, "lo": self.lo, "hi": self.hi,
            "tried": [t for t in self.tried if t not in {a["tau"] for a in self.pending.values() if "tau" in a}],
            "asked": sorted(self.asked - set(self.pending)), "best": self.best,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.queue, self.results, self.lo, self.hi, self.tried = (
            state["queue"], state["results"], state["lo"], state["hi"], state["tried"]
        )  # fmt: skip
        self.asked, self.best = set(state["asked"]), state["best"]


def _share(space, name: str) -> float:
    g = next(g for g in space.groups if g.name == name)
    return g.cost_share
