"""Learners that drive a Gymnasium env (Stable-Baselines3, our on-policy PPO) as ask/tell searchers.

Such a learner owns its loop: it steps the env and trains when its rollout is full. Here the
learner runs in a thread on a `HadMcCompressionEnv` whose plans go to the run through a
queue: at the end of an episode the env hands its plan to `ask()` and waits on a reply slot of
its own; the run evaluates it and `tell()` puts the outcome in that slot, which ends the
episode. Exactly one of the two threads works at any time, so the learner never races the
evaluation. While its plan is out, the learner has nothing to propose: `ask()` then returns
no plans rather than waiting (with parallel workers, the run asks again after the next tell).

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

from hadmc.errors import HadmcError
from hadmc.plan import CompressionPlan

from .base import SearchContext, Searcher

log = logging.getLogger(__name__)


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

    def _exchange(self, plan: CompressionPlan):
        """Learner side: hand `plan` to the run and wait for its outcome."""
        reply: queue.Queue = queue.Queue(maxsize=1)
        self._plans.put((plan, reply))
        outcome = reply.get()
        if outcome is None:
            raise _Stopped
        self.episodes += 1
        return outcome

    # -- ask/tell -----------------------------------------------------------------------
    def ask(self, n: int) -> list[CompressionPlan]:
        """The learner's next plan; none while its last plan is still out (it waits on that)."""
        if self._thread is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._thread = threading.Thread(target=self._run_learner, name=f"hadmc-{self.name}", daemon=True)
            self._thread.start()
        plans: list[CompressionPlan] = []
        while len(plans) < n:
            try:  # wait only when nothing is out: then the learner is working on its next plan
                item = self._plans.get(block=not self._out and not plans)
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


def save_atomic(save, path: Path) -> None:
    """Let `save(tmp_path)` write a checkpoint, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    save(tmp)
    written = tmp if tmp.exists() else tmp.with_name(tmp.name + ".zip")  # SB3 appends .zip
    written.replace(path)
