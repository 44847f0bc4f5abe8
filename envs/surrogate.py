"""SurrogateEvaluator: a cheap, deterministic stand-in for the real PlanEvaluator. TEST ONLY.

It applies nothing and measures nothing. Accuracy, latency, energy and size come from a
closed-form toy model of the plan and the groups' shares, and every figure is labelled
``surrogate`` in its provenance, so nothing it produces can pass for a result. It exists so
the MDP, the store, the wrappers and the agents can be tested in milliseconds. Never use it
for reported results; `hadmc.evaluation.PlanEvaluator` is the evaluator of real runs.

Toy model (per group i with share s_i, kept output fraction k_i, kept input fraction k_in):

- latency = base_latency * (0.05 + 0.95 * sum_i s_i * k_i * k_in * speed(precision_i))
  + qdq_ms per int8 group (Q/DQ overhead, so INT8 on thin groups can lose, as measured in
  DESIGN.md section 9); speed = 1 (fp32), 0.6 (fp16 where the device has it), 0.3 (int8)
- accuracy = base_accuracy - damage * exp(-0.7 * budget * scope_factor), damage =
  sum_i s_i * 0.4 * r_i^2 + 0.003 per int8 group share; clipped to [0, 1]
- bytes = base_bytes * sum_i p_i * k_i * k_in * width(precision_i) / 4
- energy = latency * active power (mJ = W * ms), with active power half the device TDP
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from hadmc.evaluation import OBJECTIVES, Evaluation
from hadmc.groups import LayerGroup
from hadmc.plan import CompressionPlan

_SPEED = {"fp32": 1.0, "fp16": 0.6, "int8": 0.3}
_WIDTH = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}
_SCOPE = {"head": 0.25, "last_stage": 0.5, "half": 0.75, "full": 1.0}


class SurrogateEvaluator:
    """Deterministic toy evaluator implementing the evaluator protocol (test only).

    :param groups: layer groups of the (real or hand-built) model
    :param device: DeviceSpec of the pretended target
    :param base_accuracy: accuracy of the uncompressed model
    :param base_latency_ms: latency of the uncompressed model
    :param base_bytes: size of the uncompressed model
    :param qdq_ms: latency overhead of each int8 group
    :param fail_above_prune: plans with any group pruned at or above this ratio fail with an
        error (exercises the failure path of the MDP); None never fails
    """

    def __init__(
        self,
        groups: Sequence[LayerGroup],
        device,
        *,
        base_accuracy: float = 0.98,
        base_latency_ms: float = 5.0,
        base_bytes: int = 4_000_000,
        qdq_ms: float = 0.02,
        fail_above_prune: float | None = None,
    ) -> None:
        self.groups = list(groups)
        self.device = device
        self.base_accuracy = base_accuracy
        self.base_latency_ms = base_latency_ms
        self.base_bytes = base_bytes
        self.qdq_ms = qdq_ms
        self.fail_above_prune = fail_above_prune
        self.calls = 0  # evaluate() calls; tests use it to prove cache hits
        self._baselines = {p: self._evaluate(CompressionPlan.uniform(0.0, "fp32", "none", budget=0), p) for p in ("search", "final")}
        self.baseline = self._baselines["final"]

    def baseline_for(self, phase: str) -> Evaluation:
        return self._baselines[phase]

    def evaluate(self, plan: CompressionPlan, phase: str = "final", progress=None) -> Evaluation:
        self.calls += 1
        return self._evaluate(plan, phase)

    def _evaluate(self, plan: CompressionPlan, phase: str = "final") -> Evaluation:
        start = time.perf_counter()
        names = [g.name for g in self.groups]
        plan = plan.resolve(names)
        decisions = [plan.decision_for(n) for n in names]
        key, dumped = plan.key(), plan.model_dump(mode="json")
        if self.fail_above_prune is not None and any(d.prune_ratio >= self.fail_above_prune for d in decisions):
            return Evaluation(
                plan_key=key,
                plan=dumped,
                phase=phase,
                error=f"surrogate: prune ratio >= {self.fail_above_prune} is configured to fail",
                device=self.device.name,
                wall_s=time.perf_counter() - start,
            )
        device_precisions = set(getattr(self.device, "precisions", ("fp32",)))
        lat = bytes_ = macs = params = damage = 0.0
        int8_groups = 0
        prev_keep, prev_out = 1.0, None
        for g, d in zip(self.groups, decisions):
            keep = 1.0 - d.prune_ratio
            keep_in = prev_keep if (prev_out == g.in_channels and g.kind != "depthwise") else 1.0
            speed = _SPEED[d.precision] if d.precision in device_precisions else 1.0
            share = g.cost_share
            lat += share * keep * keep_in * speed
            bytes_ += g.params_share * keep * keep_in * _WIDTH[d.precision] / 4.0
            macs += g.macs * keep * keep_in
            params += g.params * keep * keep_in
            damage += g.flops_share * 0.4 * d.prune_ratio**2 + (0.003 if d.precision == "int8" else 0.0)
            int8_groups += d.precision == "int8"
            prev_keep, prev_out = keep, g.out_channels
        recovery = math.exp(-0.7 * plan.update.budget * _SCOPE[plan.update.scope])
        latency = self.base_latency_ms * (0.05 + 0.95 * lat) + self.qdq_ms * int8_groups
        power_w = 0.5 * float(getattr(self.device, "tdp_w", 10.0))
        return Evaluation(
            plan_key=key,
            plan=dumped,
            phase=phase,
            split="val" if phase == "search" else "test",
            accuracy=min(max(self.base_accuracy - damage * recovery, 0.0), 1.0),
            latency_ms=latency,
            energy_mj=latency * power_w,
            model_bytes=int(round(self.base_bytes * bytes_)),
            macs=int(macs),
            params=int(params),
            provenance={name: "surrogate" for name in OBJECTIVES},
            device=self.device.name,
            probe={"name": "surrogate"},
            wall_s=time.perf_counter() - start,
        )


__all__ = ["SurrogateEvaluator"]
