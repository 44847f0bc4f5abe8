"""PlanEvaluator: real application and measurement, provenance on every figure, no re-measuring."""

import pytest

from hadmc import hal
from hadmc.evaluation import PlanEvaluator
from hadmc.plan import CompressionPlan

FAST = {"warmup_runs": 10, "warmup_s": 0.05, "min_iterations": 20, "min_seconds": 0.1}


@pytest.fixture(scope="module")
def evaluator(trained_small, digits16):
    model, _ = trained_small
    # a spec that describes no machine these tests run on: its figures must say so
    spec = hal.load_device_spec("x86-cpu").model_dump()
    cpu = hal.DeviceSpec.model_validate({**spec, "name": "imaginary-cpu", "host": {"cpu_model": "Imaginary CPU 9000", "cores": 64}})
    return PlanEvaluator(
        model,
        digits16,
        device=cpu,
        latency_probe=hal.get_latency_probe("ort-cpu", device=cpu, **FAST),
        energy_probe=hal.get_energy_probe("estimated", device=cpu),
    )


def test_baseline_is_measured_and_attaches_latency_shares(evaluator):
    base = evaluator.baseline
    assert base.ok and base.latency_ms > 0 and base.latency_iterations >= 20
    assert base.provenance == {"accuracy": "measured", "latency_ms": "measured", "model_bytes": "measured", "energy_mj": "estimated"}
    assert all(g.latency_share is not None for g in evaluator.groups)
    assert sum(g.latency_share for g in evaluator.groups) == pytest.approx(1.0, abs=0.05)


def test_evaluation_records_objectives_versions_and_timings(evaluator):
    ev = evaluator.evaluate(CompressionPlan.uniform(0.5, "int8", budget=0))
    assert ev.ok, ev.error
    assert ev.model_bytes < evaluator.baseline.model_bytes and ev.macs < evaluator.baseline.macs
    assert ev.energy_mj is not None and ev.provenance["energy_mj"] == "estimated"
    assert {"torch", "onnxruntime", "torch_pruning"} <= set(ev.versions)
    assert {"prune_s", "export_s", "quantize_s", "measure_s"} <= set(ev.timings)
    assert ev.device == evaluator.device.id and ev.probe["backend"] == "ort-cpu"


def test_identical_plan_is_not_applied_twice(evaluator):
    plan = CompressionPlan.uniform(0.3, "fp32", budget=0)
    first = evaluator.evaluate(plan)
    # the same decisions spelled out per group: same resolved key
    spelled = CompressionPlan.parse({"groups": {g.name: {"prune_ratio": 0.3 if g.prunable else 0.0} for g in evaluator.groups}, "update": {"budget": 0}})
    again = evaluator.evaluate(spelled)
    assert again.plan_key == first.plan_key
    assert again.latency_ms == first.latency_ms and again.provenance["latency_ms"] == "cached"


def test_failing_plan_returns_an_error_instead_of_raising(evaluator):
    ev = evaluator.evaluate(CompressionPlan.uniform(0.0, "fp16", budget=0))
    assert not ev.ok and "PlanError" in ev.error and "fp16" in ev.error
    assert ev.latency_ms is None and ev.accuracy is None


def test_plans_are_timed_against_the_original_and_record_where_and_under_what_load(evaluator):
    base = evaluator.baseline
    ev = evaluator.evaluate(CompressionPlan.uniform(0.5, "fp32", budget=0))
    assert ev.ok, ev.error
    assert base.latency_ratio is None  # the original is the reference
    assert ev.latency_ratio is not None and ev.latency_ratio > 0 and ev.latency_ratio_spread >= 0
    assert ev.latency_noisy in (True, False)
    for e in (base, ev):
        assert e.host["cpu_model"] == hal.describe_host().cpu_model
        assert len(e.load_avg) == 3 and e.cpu_s is not None


def test_a_device_spec_that_does_not_describe_the_measuring_host_is_flagged(evaluator):
    ev = evaluator.evaluate(CompressionPlan.uniform(0.5, "fp32", budget=0))
    assert ev.host_mismatch and "Imaginary CPU 9000" in ev.host_mismatch[0]
    assert evaluator.baseline.host_mismatch
