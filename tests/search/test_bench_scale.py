"""scripts/bench_scale.py's comparison of two runs: with one latency figure per plan, latency
noise alone leaves the fronts equal, and an accuracy difference that changes dominance does not.
Synthetic evaluations, no model: fast."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hadmc.evaluation import Evaluation
from hadmc.pareto import ParetoArchive

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_scale.py"
OBJECTIVES = {"accuracy": "max", "latency_ms": "min", "model_bytes": "min"}
REFERENCE = {"accuracy": 0.9, "latency_ms": 2.0, "model_bytes": 200.0}


def bench_scale():
    spec = importlib.util.spec_from_file_location("bench_scale_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(figures: dict[str, tuple[float, float, int]]) -> dict:
    """A run as `run_mode` returns it, from plan -> (accuracy, latency ms, bytes); its own front
    built as the run builds it."""
    evs = [
        Evaluation(plan_key=k, plan={}, phase="search", split="val", accuracy=acc, latency_ms=ms, latency_ratio=ms / 2.0,
                   latency_ratio_spread=0.02, model_bytes=size)
        for k, (acc, ms, size) in figures.items()
    ]  # fmt: skip
    archive = ParetoArchive(reference=REFERENCE, scale={"accuracy": 0.01, "latency_ms": 2.0, "model_bytes": 200.0}, objectives=OBJECTIVES)
    for e in evs:
        archive.add_evaluation(e)
    return {**bench_scale().run_record(evs, archive), "load_avg_start": [1.0, 1.0, 1.0], "load_avg_end": [1.0, 1.0, 1.0]}


# p1 and p2 have the same accuracy and size; p1 is a little faster in the first run, p2 in the second
FIRST = {"p1": (0.95, 1.00, 100), "p2": (0.95, 1.01, 100), "p3": (0.90, 0.50, 50), "p4": (0.80, 1.50, 150)}
NOISY = {"p1": (0.95, 1.02, 100), "p2": (0.95, 1.00, 100), "p3": (0.90, 0.51, 50), "p4": (0.80, 1.48, 150)}


def test_latency_noise_alone_leaves_the_one_latency_fronts_equal():
    b = bench_scale()
    first, second = run(FIRST), run(NOISY)
    assert first["front"] == ["p1", "p3"] and second["front"] == ["p2", "p3"]
    row = b.compare(first, second)
    assert row["same_plans"] and not row["same_front"]
    assert row["front_only_first"] == ["p1"] and row["front_only_second"] == ["p2"]
    assert row["same_front_one_latency_per_plan"]
    assert row["front_sizes_one_latency_per_plan"] == [2, 2]
    assert row["one_latency_differing_plans"] == {} and row["plans_with_other_accuracy"] == 0 and row["plans_with_other_size"] == 0
    # the first run keeps its own figures: its rebuilt front is the one it built
    assert b.one_latency_fronts(first, second)[0] == first["front"]
    assert "_evaluations" in first and row["plans_without_first_run_latency"] == 0


def test_an_accuracy_difference_that_changes_dominance_is_a_front_difference():
    b = bench_scale()
    other = {**NOISY, "p2": (0.96, 1.00, 100)}  # one validation image more for p2: p1 no longer dominates it
    row = b.compare(run(FIRST), run(other))
    assert not row["same_front_one_latency_per_plan"]
    assert row["one_latency_front_only_first"] == [] and row["one_latency_front_only_second"] == ["p2"]
    diff = row["one_latency_differing_plans"]["p2"]
    assert diff["accuracy"] == [0.95, 0.96] and abs(diff["accuracy_difference_pt"] - 1.0) < 1e-9
    assert row["plans_with_other_accuracy"] == 1 and abs(row["accuracy_differences_pt"]["p2"] - 1.0) < 1e-9
    # an accuracy difference that dominance does not feel (p4 is dominated either way) leaves the fronts equal
    row = b.compare(run(FIRST), run({**NOISY, "p4": (0.81, 1.48, 150)}))
    assert row["same_front_one_latency_per_plan"] and row["plans_with_other_accuracy"] == 1


def test_checks_sum_up_the_comparisons_that_ran():
    b = bench_scale()
    same, other = b.compare(run(FIRST), run(NOISY)), b.compare(run(FIRST), run({**NOISY, "p2": (0.96, 1.00, 100)}))
    report = {"w2_vs_w1": [{"speedup": 1.2, **same}], "w2_vs_w1t1": [{"speedup": 1.1, **other}]}
    assert b.checks(report) == {
        "w2_faster_than_w1": True,
        "w2_same_front_as_w1": True,
        "w2_same_front_as_w1t1": False,
        "w2_same_accuracy_and_size_as_w1t1": False,
    }
    assert b.checks({"ray2_vs_w2": [{"wall_ratio": 1.0, **same}]}) == {"ray2_same_front_as_w2": True}
