"""HadMcCompressionEnv: one episode builds one compression plan; the run evaluates it.

Steps 0..G-1 decide the layer groups in order (pruning level, precision, fusion for that
group); step G decides the global recovery (distillation T and alpha, update scope and
budget). After step G the plan goes to the `CompressionRun` (`run.evaluate`: prune, KD
recovery, fold, export, quantize, measure on the target through the HAL, with the run's
de-duplication, store and Pareto front), the terminal reward is returned and the episode
ends. Intermediate rewards are 0. The env is only this adapter: evaluation, caching,
recording and the front belong to the run.

A failed evaluation gives ``config.failure_penalty``, ``info["error"]``, an error row in the
store, and a clean end of the episode; the next ``reset`` starts normally.

See `hadmc.envs.spaces` for the action space and masks, `hadmc.envs.observation` for the
observation layout and `hadmc.reward` for the reward.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hadmc.config import RunConfig
from hadmc.evaluation import OBJECTIVES, Evaluation
from hadmc.plan import CompressionPlan, GroupDecision
from hadmc.store import RunStore

from .observation import OBS_BOUND, OBS_DIM, ObservationEncoder
from .spaces import ActionLayout

log = logging.getLogger(__name__)


class HadMcCompressionEnv(gym.Env):
    """The compression MDP (see module docstring).

    :param config: the run configuration (None = the embedded default: digits model, local device, ort-cpu)
    :param evaluator: anything with ``groups``, ``device``, ``baseline`` and
        ``evaluate(plan, phase=..., progress=...)``; None builds the real one with
        ``hadmc.evaluation.build_evaluator(config)``
    :param store: the run store; None opens ``config.database_path`` (``runs/<name>/hadmc.db``
        unless ``config.run_dir`` says otherwise) when ``run_dir`` is set or the env builds the
        real evaluator itself; with an injected evaluator and no ``run_dir`` (tests with the
        surrogate) the store is in memory and nothing is written to disk
    :param run: an existing `hadmc.run.CompressionRun` to adapt (then config, evaluator and
        store come from it)
    :param phase: the run phase episodes are evaluated in (``search``: validation split)
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        config: RunConfig | None = None,
        *,
        evaluator: Any = None,
        store: RunStore | None = None,
        run: Any = None,
        phase: str = "search",
    ) -> None:
        super().__init__()
        if run is None:
            from hadmc.run import CompressionRun

            run = CompressionRun(config if config is not None else RunConfig(), evaluator=evaluator, store=store)
            self._owns_run = True
        else:
            self._owns_run = False
        self.run = run
        self.config = run.config
        self.phase = phase
        self.evaluator = run.evaluator
        # The baseline first: measuring it may attach profiled latency shares to the groups.
        self.baseline: Evaluation = run.baseline(phase)
        self.groups = list(run.evaluator.groups)
        if not self.groups:
            from hadmc.errors import ModelError

            raise ModelError("the model has no layer groups to compress")
        self.group_names = [g.name for g in self.groups]
        self.layout = run.layout() if hasattr(run, "layout") else ActionLayout.from_search(
            self.config.search, getattr(run.device, "precisions", ("fp32",)), getattr(run.device, "backend", None)
        )  # fmt: skip
        self.action_space = self.layout.space()
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(OBS_DIM,), dtype=np.float32)
        self.encoder = ObservationEncoder(self.groups, run.device, self.baseline)
        self._prune_valid = [g.prune_levels_valid(self.layout.prune_grid) for g in self.groups]

        self._step = 0
        self._decisions: list[GroupDecision] = []
        self.last_evaluation: Evaluation | None = None

    # -- the run's state, for users of the env ------------------------------------------
    @property
    def store(self) -> RunStore:
        return self.run.store

    @property
    def run_id(self) -> int:
        return self.run.run_id

    @property
    def archive(self):
        return self.run.archive(self.phase)

    # -- gymnasium API ------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._step = 0
        self._decisions = []
        return self.encoder.encode(0, self._decisions), {"action_mask": self.action_mask(), "step_type": "group"}

    def step(self, action: dict) -> tuple[np.ndarray, float, bool, bool, dict]:
        n = len(self.groups)
        if self._step > n:
            raise gym.error.ResetNeeded("the episode has ended; call reset() before step()")
        if self._step < n:
            decision, corrected = self.layout.decode_group(action, self.action_mask())
            self._decisions.append(decision)
            self._step += 1
            info = {
                "action_mask": self.action_mask(),
                "step_type": "group" if self._step < n else "final",
                "decision": decision.model_dump(),
                "action_corrected": corrected,
            }
            return self.encoder.encode(self._step, self._decisions), 0.0, False, False, info

        distill, update = self.layout.decode_final(action)
        plan = CompressionPlan(
            groups=dict(zip(self.group_names, self._decisions)), distill=distill, update=update
        ).resolve(self.group_names)
        self._step += 1
        outcome = self.run.evaluate_outcomes([plan], self.phase)[0]
        evaluation = outcome.evaluation
        self.last_evaluation = evaluation
        info: dict[str, Any] = {
            "action_mask": self.action_mask(),
            "step_type": "done",
            "plan": plan.model_dump(mode="json"),
            "plan_key": plan.key(),
            "objectives": evaluation.objectives(),
            **{name: getattr(evaluation, name) for name in OBJECTIVES},
            "provenance": dict(evaluation.provenance),
            "reward_terms": outcome.terms,
            "cached": outcome.cached,
            "pareto": outcome.pareto,
            "hypervolume": self.archive.hypervolume(),
            "evaluation": evaluation,
        }
        if not evaluation.ok:
            info["error"] = evaluation.error
        obs = self.encoder.encode(n + 1, self._decisions)
        return obs, outcome.reward, True, False, info

    # -- helpers ------------------------------------------------------------------------
    def action_mask(self) -> dict:
        """Which heads act at the current step and which of their options are valid."""
        if self._step < len(self.groups):
            return self.layout.group_mask(self._prune_valid[self._step])
        return self.layout.final_mask()

    def plan_to_actions(self, plan: CompressionPlan) -> list[dict]:
        """The actions that rebuild `plan` (its ratios must lie on the prune grid)."""
        plan = plan.resolve(self.group_names)
        grid = np.asarray(self.layout.prune_grid)
        actions = []
        for name in self.group_names:
            d = plan.decision_for(name)
            level = int(np.argmin(np.abs(grid - d.prune_ratio)))
            actions.append(
                {
                    "pruning": level,
                    "quantization": self.layout.precisions.index(d.precision),
                    "distillation": np.array([plan.distill.temperature, plan.distill.alpha], dtype=np.float32),
                    "fusion": self.layout.fusions.index(d.fusion),
                    "update": 0,
                }
            )
        actions.append(
            {
                "pruning": 0,
                "quantization": 0,
                "distillation": np.array([plan.distill.temperature, plan.distill.alpha], dtype=np.float32),
                "fusion": 0,
                "update": self.layout.update_index(plan.update.scope, plan.update.budget),
            }
        )
        return actions

    def close(self) -> None:
        if self._owns_run:
            self.run.close()
            self._owns_run = False
        super().close()


__all__ = ["HadMcCompressionEnv"]
