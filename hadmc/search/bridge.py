"""Learners that drive a Gymnasium env (Stable-Baselines3, our on-policy PPO) as ask/tell searchers.

Such a learner owns its loop: it steps the env and trains when its rollout is full. Here the
learner runs in a thread on a `HadMcCompressionEnv` whose plans go to the run through a
queue: at the end of an episode the env hands its plan to `ask()` and waits on a reply slot of
its own; the run evaluates it and `tell()` puts the outcome in that slot, which ends the
episode. Exactly one of the two threads works at any time, so the learner never races the
evaluation. While its plan is out, the learner has nothing to propose: `ask()` then returns
no plans rather than waiting (with parallel workers, the run asks again after the next tell).

With parallel workers (``context.workers`` > 1) the learner steps that many envs, all at once
(`step_concurrently`): the episodes that end together hand their plans to the run together,
so every worker has one, and each waits for its own outcome. `ask()` then takes the plans of
such a batch as they arrive (waiting at most `SIBLING_WAIT_S` for the last of them) and
answers none while any is out: the envs step in lockstep, so nothing new comes before every
plan of the batch was told.

The learner checkpoints itself (atomically, from its own thread) at the end of every rollout;
a resumed run restarts it from that checkpoint, and the episodes it replays are served from
the run store without counting against the budget.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

from hadmc.errors import HadmcError
from hadmc.plan import CompressionPlan

from .base import SearchContext, Searcher

log = logging.getLogger(__name__)

#: Seconds `ask` waits for the rest of a batch once its first plan arrived: the envs of one
#: step hand their plans over within milliseconds of each other, this bounds a slow thread.
SIBLING_WAIT_S = 0.5


class _Stopped(Exception):
    """Raised inside the learner thread when the run stops asking."""


class RunFacade:
    """What `HadMcCompressionEnv` needs of a run, with each plan's outcome from `exchange`
    (the searcher's queues here; the predictor in Dyna search)."""

    def __init__(self, context: SearchContext, exchange: Callable[[CompressionPlan], Any]) -> None:
        self._exchange = exchange
        self.config = context.config
        self.device = context.device
        self.evaluator = _Groups(context.space.groups, context.device)
        self._baseline = context.baseline
        self._layout = context.space.layout

    def baseline(self, phase: str = "search"):
        return self._baseline

    def layout(self):
        return self._layout

    def evaluate_outcomes(self, plans: Sequence[CompressionPlan], phase: str = "search") -> list:
        return [self._exchange(p) for p in plans]

    def archive(self, phase: str = "search"):
        return _NoArchive()

    def close(self) -> None:
        pass


class _Groups:
    def __init__(self, groups, device) -> None:
        self.groups, self.device = groups, device


class _NoArchive:
    def hypervolume(self) -> None:
        return None


class EnvDrivenSearcher(Searcher):
    """Base of env-driven learners (see module docstring); subclasses implement `_learn`."""

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        self._plans: queue.Queue = queue.Queue()  # (plan, reply queue) from the learner, or None when it ends
        self._out: list[tuple[CompressionPlan, queue.Queue]] = []  # handed to the run, not told yet
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.episodes = 0
        self.directory = Path(context.directory)

    # -- the learner thread -------------------------------------------------------------
    @abc.abstractmethod
    def _learn(self, env) -> None:
        """Train on `env` until `_Stopped` is raised out of one of its steps."""

    def _make_env(self):
        from hadmc.envs.compression_env import HadMcCompressionEnv

        return HadMcCompressionEnv(run=RunFacade(self.context, self._exchange))

    def _run_learner(self) -> None:
        try:
            self._learn(self._make_env())
        except _Stopped:
            pass
        except BaseException as exc:  # surfaced to the run in ask()
            log.exception("the %s learner failed", self.name)
            self._error = exc
        finally:
            self._plans.put(None)

    def _resumed(self, checkpoint: Path, steps: int) -> None:
        """Learner side: it loaded `checkpoint` and goes on from there."""
        log.info("the %s learner continues from its checkpoint %s at %d steps", self.name, checkpoint.name, steps)

    def _exchange(self, plan: CompressionPlan):
        """Learner side (one of its env threads): hand `plan` to the run and wait for its outcome."""
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._plans.put((plan, reply))
        outcome = reply.get()
        if outcome is None:
            raise _Stopped
        return outcome

    # -- ask/tell -----------------------------------------------------------------------
    def ask(self, n: int) -> list[CompressionPlan]:
        """Up to `n` plans the learner's envs have handed over; none while any plan is out
        (the learner waits on it). With nothing out, waits for the learner's next plan, then
        briefly for the other envs of its step (see module docstring)."""
        if self._thread is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._run_learner, name=f"hadmc-{self.name}", daemon=True)
            self._thread.start()
        plans: list[CompressionPlan] = []
        while len(plans) < n:
            if not self._out:
                timeout = None  # the learner is working on its next plans
            elif plans and len(self._out) < self.context.workers:
                timeout = SIBLING_WAIT_S  # a batch is arriving: the other envs of its step
            else:
                timeout = 0.0  # the learner waits for an outcome: only what is already there
            try:
                item = self._plans.get(block=timeout != 0.0, timeout=timeout)
            except queue.Empty:
                break
            if item is None:
                self._plans.put(None)  # the learner ended: every later ask sees it too
                if self._error is not None:
                    raise HadmcError(f"the {self.name} learner failed: {type(self._error).__name__}: {self._error}") from self._error
                break
            self._out.append(item)
            plans.append(item[0])
        return plans

    def tell(self, plans, evaluations, rewards) -> None:
        """Outcomes of plans handed out, in any order (matched to the episode that asked)."""
        from hadmc.run import Outcome

        for plan, ev, r in zip(plans, evaluations, rewards):
            i = next((i for i, (p, _) in enumerate(self._out) if p is plan), None)
            if i is None:
                i = next((i for i, (p, _) in enumerate(self._out) if p.key() == plan.key()), None)
            if i is not None:
                self._out.pop(i)[1].put(Outcome(ev, float(r)))
                self.episodes += 1

    def close(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            for _, reply in self._out:
                reply.put(None)
            self._out = []
            deadline = time.monotonic() + 30
            while self._thread.is_alive() and time.monotonic() < deadline:  # a plan put after the stop is answered with the stop too
                try:
                    item = self._plans.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is not None:
                    item[1].put(None)
            self._thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._thread = None

    def state_dict(self) -> dict[str, Any]:
        # The learner's own checkpoint is written from its thread; this is only bookkeeping.
        return {**super().state_dict(), "episodes": self.episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.episodes = int(state.get("episodes", 0))

    def summary(self) -> dict[str, Any]:
        return {"real_episodes": self.episodes}


class Prefetched(gym.Wrapper):
    """An env whose next step may have run already (in a thread of `step_concurrently`): a
    vector env's own, sequential step loop then picks up that result instead of stepping again."""

    def __init__(self, env) -> None:
        super().__init__(env)
        self._done: Any = None

    def prefetch(self, action) -> None:
        self._done = self.env.step(action)

    def step(self, action):
        if self._done is not None:
            out, self._done = self._done, None
            return out
        return self.env.step(action)


def step_concurrently(envs: Sequence[Prefetched], actions: Sequence[Any]) -> None:
    """Step every env at once, one thread each: the episodes that end at this step hand their
    plans to the run together (and wait for their own outcomes), so parallel workers each get
    one. Returns when every env has stepped; re-raises the first error of a step (`_Stopped`
    when the run closes the searcher)."""
    errors: list[BaseException | None] = [None] * len(envs)

    def step(i: int) -> None:
        try:
            envs[i].prefetch(actions[i])
        except BaseException as exc:  # re-raised in the learner thread below
            errors[i] = exc

    # daemon threads (not a ThreadPoolExecutor, whose threads are joined at interpreter exit):
    # an env thread still waiting for an outcome never holds up the exit of a killed run
    threads = [threading.Thread(target=step, args=(i,), name=f"hadmc-env-{i}", daemon=True) for i in range(len(envs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    error = next((e for e in errors if e is not None), None)
    if error is not None:
        raise error


def concurrent_vector_env(make_env: Callable[[], gym.Env], n_envs: int) -> gym.vector.VectorEnv:
    """A gymnasium vector env of `n_envs` envs stepped at once (same-step autoreset, as
    `hadmc.agents.make_vector_env`)."""
    from gymnasium.vector import AutoresetMode
    from gymnasium.vector.utils import iterate

    class ConcurrentVectorEnv(gym.vector.SyncVectorEnv):
        def step(self, actions):
            step_concurrently(self.envs, list(iterate(self.action_space, actions)))
            return super().step(actions)

    return ConcurrentVectorEnv([lambda: Prefetched(make_env())] * n_envs, autoreset_mode=AutoresetMode.SAME_STEP)


def save_atomic(save, path: Path) -> None:
    """Let `save(tmp_path)` write a checkpoint, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    save(tmp)
    written = tmp if tmp.exists() else tmp.with_name(tmp.name + ".zip")  # SB3 appends .zip
    written.replace(path)
