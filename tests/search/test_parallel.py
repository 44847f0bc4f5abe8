"""Searching with several workers: out-of-order outcomes, worker processes, crashes, devices."""

from __future__ import annotations

import functools
import logging
import os
import random
import subprocess
import sys
import time

import pytest
from search_fixtures import (
    LEARNERS,
    Watch,
    broken_factory,
    chain,
    config,
    cpu,
    crashing_factory,
    deadline,
    learner_config,
    learner_threads,
    other_device_factory,
    surrogate_factory,
    surrogate_run,
)

from hadmc.envs.surrogate import SurrogateEvaluator
from hadmc.errors import ConfigError, HadmcError
from hadmc.parallel import LOCKED_LATENCY, Done, Executor, MeasurementLock, Task, WorkerInfo
from hadmc.run import CompressionRun

ALL = ["ppo", "ppo-onpolicy", "random", "nsga2", "sb3-ppo", "greedy"]
LEARNER_CHECKPOINTS = {"sb3-ppo": "sb3_ppo.zip", "ppo-onpolicy": "ppo_policy.pt"}


class ShuffledExecutor(Executor):
    """Evaluates in this process, but returns one result per wait, picked at random among the
    plans in flight: outcomes arrive out of order, and the searcher is asked for plans while
    others are pending, as with real workers."""

    kind = "shuffled"

    def __init__(self, workers: int = 3, seed: int = 0) -> None:
        super().__init__(workers, 1)
        self.evaluator = SurrogateEvaluator(chain(), cpu())
        self.rng = random.Random(seed)
        self.busy: list[Task] = []
        self.most_busy = 0
        self.just_sent = False

    def _idle(self) -> int:
        return self.workers - len(self.busy) if self.reference is not None else 0

    def _send(self, task: Task) -> None:
        self.busy.append(task)
        self.most_busy = max(self.most_busy, len(self.busy))
        self.just_sent = True

    def _poll(self, timeout):
        ev = self.evaluator
        if timeout is not None and self.just_sent:  # a short wait right after a plan went out: nothing finished yet
            self.just_sent = False
            time.sleep(timeout)
            return []
        if self.reference is None:
            baselines = {p: ev.baseline_for(p) for p in ("search", "final")}
            for i in range(self.workers):
                self._ready(WorkerInfo(i, "here", ev.device, ev.device.id, ev.groups, baselines, "-", type(ev).__name__))
            return []
        task = self.busy.pop(self.rng.randrange(len(self.busy)))
        return [Done(task.ticket, ev.evaluate(task.plan, phase=task.phase))]

    def close(self) -> None:
        pass


@pytest.mark.parametrize("name", ALL)
def test_every_searcher_takes_outcomes_in_any_order_and_is_asked_while_plans_are_pending(name, tmp_path):
    ex = ShuffledExecutor(workers=3)
    cfg = (learner_config if name in LEARNERS else config)(name, budget=10, run_dir=tmp_path)
    run = CompressionRun(cfg, executor=ex)
    searcher = run.make_searcher()
    run.search(searcher)
    keys = [e.plan_key for e in run.evaluations("search")]
    assert run.distinct("search") == 10 == len(keys) == len(set(keys))  # the budget, none evaluated twice
    assert ex.most_busy == 3  # every worker had a plan (env-driven learners step one env per worker)
    assert ex.in_flight == 0 and (tmp_path / "searcher" / "state.pt").is_file()
    if name == "nsga2":
        import optuna

        states = [t.state for t in searcher.impl.study.trials] if hasattr(searcher, "impl") else [t.state for t in searcher.study.trials]
        assert optuna.trial.TrialState.RUNNING not in states  # every asked trial was told or failed on close
        assert states.count(optuna.trial.TrialState.COMPLETE) == sum(e.complete for e in run.evaluations("search"))
    if name == "greedy":
        assert len(searcher.results) == len([p for p in searcher.probes if p["id"] in searcher.results]) >= 3
        assert not searcher.pending
    if name == "ppo":
        assert not searcher.impl.pending and len(searcher.impl.evaluations) == 10
    searcher.close()
    if name in LEARNERS:
        assert getattr(searcher, "impl", searcher).episodes == 10  # every outcome reached the episode that asked
        assert learner_threads() == []  # close() stopped the learner and its env threads
    run.close()


def _learner_steps(learner: str, directory) -> int:
    """Env steps counted by the learner's last checkpoint."""
    path = directory / LEARNER_CHECKPOINTS[learner]
    if learner == "sb3-ppo":
        from stable_baselines3.common.save_util import load_from_zip_file

        return int(load_from_zip_file(path, device="cpu")[0]["num_timesteps"])
    import torch

    return int(torch.load(path, weights_only=True)["num_timesteps"])


@pytest.mark.parametrize("learner", sorted(LEARNERS))
def test_env_driven_learners_give_both_worker_processes_a_plan_and_resume_after_ctrl_c(learner, tmp_path, caplog):
    # with 2 workers a rollout is 8 episodes (4 per env) of 7 steps (6 groups, then the final
    # step): Ctrl-C after 10 plans comes after the first checkpoint, in the second rollout
    cfg = learner_config(learner, budget=20, run_dir=tmp_path, execution={"workers": 2})
    run = CompressionRun(cfg, evaluator_factory=surrogate_factory)
    first = Watch(run, stop_at=10)
    with deadline(60), pytest.raises(KeyboardInterrupt):
        run.search()
    assert learner_threads() == []  # the stop ended the learner and every env thread
    before = [e.plan_key for e in run.evaluations("search")]
    run.close()
    steps_at_stop = _learner_steps(learner, tmp_path / "searcher")
    assert 10 <= len(before) < 20 and steps_at_stop == 8 * 7

    caplog.set_level(logging.INFO, logger="hadmc.search.bridge")
    again = CompressionRun(cfg, resume=True, evaluator_factory=surrogate_factory)
    second = Watch(again)
    with deadline(60):
        again.search()
    assert f"continues from its checkpoint {LEARNER_CHECKPOINTS[learner]} at {steps_at_stop} steps" in caplog.text
    keys = [e.plan_key for e in again.evaluations("search")]
    assert keys[: len(before)] == before  # nothing recorded before the stop was lost or rewritten
    assert len(keys) == len(set(keys)) == again.distinct("search") == 20  # the budget, no plan evaluated twice
    assert _learner_steps(learner, tmp_path / "searcher") > steps_at_stop
    for watch in (first, second):
        assert watch.most_in_flight == 2 and watch.workers == {0, 1}  # both workers had a plan at once
    assert learner_threads() == []
    again.close()


def test_a_checkpoint_holds_only_what_was_told_so_untold_probes_are_asked_again(tmp_path):
    from hadmc.search.greedy import GreedySearcher

    run = surrogate_run(config("greedy", budget=10, run_dir=tmp_path))
    searcher = run.make_searcher()
    first = searcher.ask(3)
    searcher.tell(first[2:], run.evaluate(first[2:]), [0.0])  # the last one back first; two still out
    state = searcher.state_dict()
    again = GreedySearcher(searcher.context)
    again.load_state_dict(state)
    assert [p.key() for p in again.ask(2)] == [p.key() for p in first[:2]]  # the two in flight at the "kill"
    run.close()


def test_worker_processes_reach_the_budget_with_the_plans_and_front_of_one_process(tmp_path):
    one = surrogate_run(config("random", budget=12))
    one.search()
    two = CompressionRun(config("random", budget=12, run_dir=tmp_path, execution={"workers": 2}), evaluator_factory=surrogate_factory)
    assert two.executor is not None and two.executor.workers == 2
    two.search()
    assert sorted(e.plan_key for e in two.evaluations("search")) == sorted(e.plan_key for e in one.evaluations("search"))
    assert sorted(two.archive("search").keys()) == sorted(one.archive("search").keys())
    meta = two.store.meta(two.run_id)["execution"]
    assert meta["workers"] == 2 and meta["executor"] == "process" and meta["latency"] == LOCKED_LATENCY
    assert meta["threads_per_worker"] == max(1, len(os.sched_getaffinity(0)) // 2)
    result = two.finalize()  # the final front is evaluated by the workers too
    assert result.front and all(e.phase == "final" for e in result.front)
    one.close()
    two.close()


def test_a_worker_killed_by_its_plan_loses_only_that_plan_which_is_retried_once_then_recorded_failed(tmp_path):
    probe = surrogate_run(config("random", budget=8))
    probe.search()
    crash_key = probe.evaluations("search")[2].plan_key  # the third plan random search proposes
    probe.close()
    attempts = tmp_path / "attempts"
    factory = functools.partial(crashing_factory, crash_key=crash_key, attempts=str(attempts))
    run = CompressionRun(config("random", budget=8, run_dir=tmp_path / "run", execution={"workers": 2}), evaluator_factory=factory)
    run.search()
    evaluations = run.evaluations("search")
    assert len(attempts.read_text().split()) == 2  # two processes died on it: the first try and one retry
    failed = [e for e in evaluations if not e.ok]
    assert [e.plan_key for e in failed] == [crash_key]
    assert "died twice" in failed[0].error and "SIGKILL" in failed[0].error
    assert len(evaluations) == run.distinct("search") == 8 and all(e.ok for e in evaluations if e.plan_key != crash_key)
    run.close()


def test_workers_that_measure_on_different_devices_are_refused_rather_than_mixed(tmp_path):
    with pytest.raises(ConfigError, match="never mixed in one front"):
        run = CompressionRun(config("random", budget=6, run_dir=tmp_path, execution={"workers": 2}), evaluator_factory=other_device_factory)
        try:
            run.search()
        finally:
            run.close()


def test_a_worker_that_cannot_build_its_evaluator_stops_the_run_with_its_message(tmp_path):
    with pytest.raises(HadmcError, match="could not build its evaluator: ModelError: weights file w.pt does not fit"):
        CompressionRun(config("random", budget=4, run_dir=tmp_path, execution={"workers": 2}), evaluator_factory=broken_factory)


def test_a_run_may_resume_with_another_number_of_workers(tmp_path):
    first = surrogate_run(config("random", budget=4, run_dir=tmp_path), resume=False)
    first.search()
    before = [e.plan_key for e in first.evaluations("search")]
    first.close()
    again = CompressionRun(config("random", budget=9, run_dir=tmp_path, execution={"workers": 2}), resume=True, evaluator_factory=surrogate_factory)
    again.search()
    keys = [e.plan_key for e in again.evaluations("search")]
    assert keys[:4] == before and len(keys) == len(set(keys)) == 9
    again.close()


#: Another process holding the lock (a plain interpreter: a spawned child could not import
#: this test module when the tests are not an importable package).
_HOLD = "import sys, time; from hadmc.parallel import MeasurementLock; MeasurementLock(sys.argv[1]).__enter__(); print('held', flush=True); time.sleep(600)"


def test_the_measurement_lock_excludes_other_processes_and_is_released_when_its_holder_dies(tmp_path):
    import fcntl

    path = tmp_path / "measure.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        fd = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by the other process
    finally:
        holder.kill()  # SIGKILL: no handler runs, the lock is not released by the holder
        holder.wait(10)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # its death released it
    os.close(fd)
    with MeasurementLock(path), MeasurementLock(path) as again, again:  # nested in one process: no deadlock
        fd = os.open(path, os.O_RDWR)
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)


def test_the_ray_executor_without_ray_names_the_extra_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ConfigError, match=r"pip install 'hadmc\[ray\]'"):
        CompressionRun(config("random", budget=4, run_dir=tmp_path, execution={"executor": "ray", "workers": 2}), evaluator_factory=surrogate_factory)


def test_an_address_without_the_ray_executor_is_refused():
    with pytest.raises(ConfigError, match="address names a Ray cluster"):
        config("random", execution={"address": "auto"})
