"""Run store: transactions, cache lookup by plan key, failed rows, Pareto rows, resume."""

from __future__ import annotations

import sqlite3

from hadmc.evaluation import Evaluation
from hadmc.pareto import ParetoArchive
from hadmc.plan import CompressionPlan
from hadmc.store import RunStore


def _evaluation(plan: CompressionPlan, accuracy=0.9, latency=2.0, error=None) -> Evaluation:
    if error:
        return Evaluation(plan_key=plan.key(), plan=plan.model_dump(mode="json"), error=error)
    return Evaluation(
        plan_key=plan.key(),
        plan=plan.model_dump(mode="json"),
        accuracy=accuracy,
        latency_ms=latency,
        model_bytes=1000,
        provenance={"accuracy": "measured", "latency_ms": "measured", "model_bytes": "measured"},
        device="cpu-test",
    )


def test_lookup_returns_the_earlier_evaluation_of_an_identical_plan(tmp_path):
    store = RunStore(tmp_path / "hadmc.db")
    run = store.open_run("r")
    plan = CompressionPlan.uniform(0.5, "int8")
    ev = _evaluation(plan)
    assert store.lookup(plan.key(), "ctx") is None
    assert store.record(run, ev, context="ctx")
    assert store.lookup(plan.key(), "ctx") == ev
    # A different context (e.g. another device) is not a hit; a second identical write is skipped.
    assert store.lookup(plan.key(), "other") is None
    assert not store.record(run, ev, context="ctx")
    assert store.count(run) == 1


def test_failed_evaluations_are_stored_each_time_but_never_cache_hits(tmp_path):
    store = RunStore(tmp_path / "hadmc.db")
    run = store.open_run("r")
    plan = CompressionPlan.uniform(0.9)
    for _ in range(2):
        assert store.record(run, _evaluation(plan, error="PipelineError: pruning failed"), reward=-2.0)
    assert store.lookup(plan.key()) is None
    errs = store.errors(run)
    assert [e.error for e in errs] == ["PipelineError: pruning failed"] * 2
    rows = sqlite3.connect(tmp_path / "hadmc.db").execute("SELECT reward, error FROM evaluations").fetchall()
    assert rows == [(-2.0, "PipelineError: pruning failed")] * 2


def test_pareto_rows_and_hypervolume_follow_the_archive(tmp_path):
    store = RunStore(tmp_path / "hadmc.db")
    run = store.open_run("r")
    archive = ParetoArchive(reference={"accuracy": 0.0, "latency_ms": 4.0, "model_bytes": 2000})
    a = _evaluation(CompressionPlan.uniform(0.1), accuracy=0.9, latency=2.0)
    b = _evaluation(CompressionPlan.uniform(0.2), accuracy=0.8, latency=3.0)  # dominated by a
    c = _evaluation(CompressionPlan.uniform(0.3), accuracy=0.95, latency=1.0)  # dominates a
    for ev in (a, b, c):
        store.record(run, ev, archive=archive)
    assert store.pareto_keys(run) == [c.plan_key]
    history = store.hypervolume_history(run)
    assert [n for n, _ in history] == [1, 3]
    assert history[-1][1] == archive.hypervolume()


def test_reopened_store_resumes_the_run_with_nothing_lost(tmp_path):
    db = tmp_path / "run" / "hadmc.db"
    store = RunStore(db)
    run = store.open_run("resume-me", {"model": "default"})
    plans = [CompressionPlan.uniform(r) for r in (0.1, 0.2, 0.3)]
    archive = ParetoArchive(reference={"accuracy": 0.0, "latency_ms": 10.0})
    for i, p in enumerate(plans):
        store.record(run, _evaluation(p, accuracy=0.9 - 0.1 * i, latency=3.0 - i), archive=archive)
    store.close()

    again = RunStore(db)
    assert again.open_run("resume-me") == run
    assert again.run_config(run) == {"model": "default"}
    assert [e.plan_key for e in again.evaluations(run)] == [p.key() for p in plans]
    rebuilt = again.load_archive(run, reference={"accuracy": 0.0, "latency_ms": 10.0})
    assert sorted(rebuilt.keys()) == sorted(archive.keys())
    assert rebuilt.hypervolume() == archive.hypervolume()
    assert again.lookup(plans[0].key()) is not None


def test_database_uses_wal_and_leaves_foreign_tables_alone(tmp_path):
    db = tmp_path / "hadmc.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE hal_measurements (k TEXT PRIMARY KEY, v TEXT)")
    con.execute("INSERT INTO hal_measurements VALUES ('a', 'b')")
    con.commit()
    con.close()
    store = RunStore(db)
    store.open_run("r")
    mode = sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert sqlite3.connect(db).execute("SELECT v FROM hal_measurements").fetchall() == [("b",)]


def test_a_failed_write_rolls_back_the_whole_transaction(tmp_path):
    store = RunStore(tmp_path / "hadmc.db")
    run = store.open_run("r")

    class Exploding(ParetoArchive):
        def add_evaluation(self, evaluation):
            raise RuntimeError("disk full")

    try:
        store.record(run, _evaluation(CompressionPlan.uniform(0.1)), archive=Exploding())
    except RuntimeError:
        pass
    assert store.count(run) == 0
