"""scripts/bench_search.py --summarize reads finished searches back with the figures a full
benchmark run reports (surrogate figures, no model)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from search_fixtures import config, surrogate_run

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_search.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_search", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_summarize_reads_finished_runs_and_leaves_out_unfinished_ones(tmp_path, bench):
    expected = {}
    for seed, budget in ((0, 6), (1, 6), (2, 3)):  # seed 2 stopped half way
        name = f"random-s{seed}"
        run = surrogate_run(config("random", budget=budget, run_dir=tmp_path / name, name=name, seed=seed))
        run.search()
        expected[seed] = (bench.hv_at(run.store.hypervolume_history(run.run_id, "search"), 6), len(run.evaluations("search")))
        run.close()
    results = bench.finished_runs(tmp_path, ["random", "nsga2"], budget=6)
    assert list(results) == ["random"]  # no nsga2 run: no entry
    rs = results["random"]
    assert [r["seed"] for r in rs] == [0, 1]
    for r in rs:
        hv, n = expected[r["seed"]]
        assert r["hv"]["6"] == pytest.approx(hv) and r["evaluations"] == n == 6 and r["failed"] == 0
        assert len(r["plans"]) == 6 and r["mean_eval_s"] >= 0


def test_fidelity_plans_are_spread_evenly_over_the_accuracy_range_not_over_ranks(bench):
    # Eleven plans crowded near the top, three spread below, one plan repeated.
    accs = [0.10, 0.40, 0.70] + [0.95 + 0.004 * i for i in range(11)]
    plans = [({"p": i}, a, 1.0, 1.0) for i, a in enumerate(accs)] + [({"p": 0}, 0.10, 1.0, 1.0)]
    chosen = bench.spread_plans(plans, 5)
    # Levels 0.10, 0.3125, 0.525, 0.7375, 0.99: nearest unused plans, none twice, lowest first.
    assert [round(p[1], 3) for p in chosen] == [0.10, 0.40, 0.70, 0.95, 0.99]
    assert len({p[0]["p"] for p in chosen}) == 5
    assert bench.spread_plans(plans[:3], 5) == sorted(plans[:3], key=lambda p: p[1])


def test_fidelity_pool_does_not_depend_on_the_order_the_plans_are_read_in(bench):
    import random

    # ties of search accuracy (a validation split of 180 images gives many) used to be broken by input order
    accs = [0.5, 0.6, 0.6, 0.6, 0.8, 0.8, 0.9, 0.95, 0.95, 1.0]
    plans = [({"p": i}, a, 1.0, 1.0) for i, a in enumerate(accs)]
    first = bench.spread_plans(plans, 4)
    for seed in range(5):
        shuffled = plans[:]
        random.Random(seed).shuffle(shuffled)
        assert bench.spread_plans(shuffled, 4) == first


def test_reuse_refuses_a_finished_run_made_with_other_settings(tmp_path, bench):
    name = "random-s0"
    run = surrogate_run(config("random", budget=4, run_dir=tmp_path / name, name=name, seed=0))
    run.search()
    run.close()
    same = config("random", budget=4)
    assert [r["seed"] for r in bench.finished_runs(tmp_path, ["random"], budget=4, base_cfg=same)["random"]] == [0]
    other = config("random", budget=4, search={"searcher": "random", "budget": 4, "update_budgets": [0, 1, 2, 3],
                                                "finalize_max": 4, "fidelity": 0.5})  # fmt: skip
    with pytest.raises(bench.OtherSettings, match="other settings for: search"):
        bench.finished_run(tmp_path / name, 4, other)
    assert (tmp_path / name / "hadmc.db").is_file()  # neither reused nor deleted


def test_rank_check_compares_search_and_full_fidelity_on_the_same_split(bench):
    # The test split's own noise is not held against the proxy: this one ranks like full
    # fidelity on validation (checked) but not like the test split, which it is reported against.
    fid = {"plans": 8, "ratio": 0.2, "spearman": 0.5, "spearman_vs_full_val": 0.85, "spearman_full_val_vs_full_test": 0.6}
    assert bench.fidelity_checks(fid) == {"search_eval_le_quarter_full": True, "spearman_vs_full_val_ge_0_8": True}
    assert not bench.fidelity_checks({**fid, "spearman_vs_full_val": 0.79})["spearman_vs_full_val_ge_0_8"]
    assert not bench.fidelity_checks({**fid, "plans": 7})["spearman_vs_full_val_ge_0_8"]
    assert not any(bench.fidelity_checks({"plans": 1, "spearman": None}).values())
