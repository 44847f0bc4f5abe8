"""The Ray executor on a local Ray instance with 2 CPUs: actors, their nodes, a crashing actor, env-driven learners."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
from search_fixtures import (
    LEARNERS,
    Watch,
    broken_factory,
    config,
    crashing_factory,
    deadline,
    learner_config,
    learner_threads,
    surrogate_factory,
    surrogate_run,
)

from hadmc.errors import HadmcError
from hadmc.run import CompressionRun

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    # the actors import this folder's fixtures (the evaluator factories) by name
    here = str(Path(__file__).parent)
    path = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


def test_ray_actors_reach_the_front_of_one_process_and_record_the_node_of_each_evaluation(local_ray, tmp_path):
    one = surrogate_run(config("random", budget=12))
    one.search()
    cfg = config("random", budget=12, run_dir=tmp_path, execution={"executor": "ray", "workers": 2})
    run = CompressionRun(cfg, evaluator_factory=surrogate_factory)
    run.search()
    evaluations = run.evaluations("search")
    assert sorted(e.plan_key for e in evaluations) == sorted(e.plan_key for e in one.evaluations("search"))
    assert sorted(run.archive("search").keys()) == sorted(one.archive("search").keys())
    node_id = ray.get_runtime_context().get_node_id()[:12]
    assert all(e.node and e.node.startswith(f"ray:{node_id}") for e in evaluations)  # the one local node
    assert all(e.device == one.device.name for e in evaluations)
    meta = run.store.meta(run.run_id)["execution"]
    assert meta["executor"] == "ray" and meta["workers"] == 2 and meta["threads_per_worker"] == 1
    assert meta["nodes"] == [evaluations[0].node]
    assert ray.is_initialized()  # a Ray the run did not start is left running
    one.close()
    run.close()


def test_an_actor_killed_by_its_plan_is_replaced_and_the_plan_retried_once_then_recorded_failed(local_ray, tmp_path):
    probe = surrogate_run(config("random", budget=6))
    probe.search()
    crash_key = probe.evaluations("search")[1].plan_key
    probe.close()
    attempts = tmp_path / "attempts"
    factory = functools.partial(crashing_factory, crash_key=crash_key, attempts=str(attempts))
    cfg = config("random", budget=6, run_dir=tmp_path / "run", execution={"executor": "ray", "workers": 2})
    run = CompressionRun(cfg, evaluator_factory=factory)
    run.search()
    evaluations = run.evaluations("search")
    assert len(attempts.read_text().split()) == 2
    failed = [e for e in evaluations if not e.ok]
    assert [e.plan_key for e in failed] == [crash_key] and "died twice" in failed[0].error and "actor died" in failed[0].error
    assert len(evaluations) == 6 and all(e.ok for e in evaluations if e.plan_key != crash_key)
    run.close()


def test_an_actor_that_cannot_build_its_evaluator_stops_the_run_with_its_message(local_ray, tmp_path):
    cfg = config("random", budget=4, run_dir=tmp_path, execution={"executor": "ray", "workers": 2})
    with pytest.raises(HadmcError, match="could not build its evaluator: ModelError: weights file w.pt does not fit"):
        CompressionRun(cfg, evaluator_factory=broken_factory)


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_env_driven_learners_give_both_ray_actors_a_plan_at_once_and_reach_the_budget(local_ray, learner, tmp_path):
    cfg = learner_config(learner, budget=12, run_dir=tmp_path, execution={"executor": "ray", "workers": 2})
    run = CompressionRun(cfg, evaluator_factory=surrogate_factory)
    watch = Watch(run)
    with deadline(60):
        searcher = run.search()
    keys = [e.plan_key for e in run.evaluations("search")]
    assert len(keys) == len(set(keys)) == run.distinct("search") == 12  # the budget, distinct plans
    assert watch.most_in_flight == 2 and watch.workers == {0, 1}  # one env per actor, stepped at once
    assert getattr(searcher, "impl", searcher).episodes == 12 and learner_threads() == []
    run.close()
