"""Reward: hand-computed relative terms and hinge penalties."""

from __future__ import annotations

import math

import pytest

from hadmc.config import Constraints, ObjectiveWeights
from hadmc.envs.reward import compute_reward
from hadmc.evaluation import Evaluation

BASE = Evaluation(plan_key="b", plan={}, accuracy=0.98, latency_ms=6.0, energy_mj=30.0, model_bytes=4000)


def _ev(**kw):
    return Evaluation(plan_key="p", plan={}, **kw)


def test_relative_terms_are_weighted_log_ratios_and_accuracy_change():
    ev = _ev(accuracy=0.96, latency_ms=1.5, energy_mj=10.0, model_bytes=1000)
    w = ObjectiveWeights(accuracy=2.0, latency=1.0, energy=0.5, size=0.25)
    out = compute_reward(ev, BASE, w, Constraints())
    expected = 2.0 * (0.96 - 0.98) / 0.98 + math.log(4.0) + 0.5 * math.log(3.0) + 0.25 * math.log(4.0)
    assert out.reward == pytest.approx(expected)
    assert out.terms["latency"] == pytest.approx(math.log(4.0))
    assert out.terms["latency_budget_penalty"] == 0.0 and out.terms["min_accuracy_penalty"] == 0.0


def test_hinges_penalise_a_missed_latency_budget_and_accuracy_floor():
    ev = _ev(accuracy=0.90, latency_ms=3.0, model_bytes=4000)
    c = Constraints(latency_budget_ms=2.0, min_accuracy=0.95, latency_penalty=1.0, accuracy_penalty=10.0)
    w = ObjectiveWeights(accuracy=0.0, latency=0.0, energy=0.0, size=0.0)
    out = compute_reward(ev, BASE, w, c)
    assert out.terms["latency_budget_penalty"] == pytest.approx(-0.5)
    assert out.terms["min_accuracy_penalty"] == pytest.approx(-0.5)
    assert out.reward == pytest.approx(-1.0)
    # Meeting both constraints costs nothing.
    ok = compute_reward(_ev(accuracy=0.97, latency_ms=1.0), BASE, w, c)
    assert ok.reward == 0.0


def test_missing_energy_contributes_nothing_and_is_reported_as_none():
    out = compute_reward(_ev(accuracy=0.98, latency_ms=6.0, model_bytes=4000), BASE, ObjectiveWeights(energy=1.0), Constraints())
    assert out.terms["energy"] is None and out.reward == pytest.approx(0.0)


def test_failed_evaluation_gets_exactly_the_failure_penalty():
    out = compute_reward(_ev(error="PipelineError: x"), BASE, ObjectiveWeights(), Constraints(min_accuracy=0.9), -4.0)
    assert out.reward == -4.0 and out.terms == {"failure": -4.0}


def test_the_latency_term_uses_the_interleaved_ratio_not_two_distant_medians():
    # medians say 6.0 -> 3.0 ms (2x), but timed in alternating blocks the plan took 0.25x
    ev = _ev(accuracy=0.98, latency_ms=3.0, latency_ratio=0.25, model_bytes=4000)
    out = compute_reward(ev, BASE, ObjectiveWeights(accuracy=0.0, latency=1.0, energy=0.0, size=0.0), Constraints())
    assert out.terms["latency"] == pytest.approx(math.log(4.0))


def test_floor_slack_lowers_only_the_accuracy_floor():
    ev = _ev(accuracy=0.94, latency_ms=3.0, model_bytes=4000)
    c = Constraints(min_accuracy="-2pt", accuracy_penalty=100.0)  # floor 96%
    w = ObjectiveWeights(accuracy=0.0, latency=0.0, energy=0.0, size=0.0)
    assert compute_reward(ev, BASE, w, c).terms["min_accuracy_penalty"] == pytest.approx(-2.0)
    assert compute_reward(ev, BASE, w, c, floor_slack=0.01).terms["min_accuracy_penalty"] == pytest.approx(-1.0)
    assert compute_reward(ev, BASE, w, c, floor_slack=0.03).terms["min_accuracy_penalty"] == 0.0
