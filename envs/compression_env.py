"""HadMcCompressionEnv: one episode builds, applies and measures one compression plan.

Steps 0..G-1 decide the layer groups in order (pruning level, precision, fusion for that
group); step G decides the global recovery (distillation T and alpha, update scope and
budget). After step G the plan goes to the evaluator (the real `PlanEvaluator`: prune, KD
recovery, fold, export, quantize, measure on the target through the HAL), the terminal
reward is returned and the episode ends. Intermediate rewards are 0.

Identical plans are evaluated once: the run store is asked first (key = plan key and the
evaluation context of the run configuration and evaluator), and every new evaluation, failed
or not, is written to it with the Pareto front in one transaction. A failed evaluation gives
``config.failure_penalty``, ``info["error"]``, an error row in the store, and a clean end of
the episode; the next ``reset`` starts normally.

See `hadmc.envs.spaces` for the action space and masks, `hadmc.envs.observation` for the
observation layout and `hadmc.envs.reward` for the reward.
"""

from __future__ import annotations

import logging
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hadmc.config import RunConfig
from hadmc.evaluation import OBJECTIVES, Evaluation
from hadmc.pareto import ParetoArchive
from hadmc.plan import CompressionPlan, GroupDecision
from hadmc.store import RunStore

from .observation import OBS_BOUND, OBS_DIM, ObservationEncoder
from .reward import compute_reward
from .spaces import ActionLayout

log = logging.getLogger(__name__)


class HadMcCompressionEnv(gym.Env):
    """The compression MDP (see module docstring).

    :param config: the run configuration (None = the embedded default: digits model, local device, ort-cpu)
    :param evaluator: anything with ``groups``, ``device``, ``baseline`` and ``evaluate(plan)``;
        None builds the real one with ``hadmc.evaluation.build_evaluator(config)``
    :param store: the run store; None opens ``config.database_path`` (``runs/<name>/hadmc.db``
        unless ``config.run_dir`` says otherwise) when ``run_dir`` is set or the env builds the
        real evaluator itself; with an injected evaluator and no ``run_dir`` (tests with the
        surrogate) the store is in memory and nothing is written to disk
    """

    metadata = {"render_modes": []}

    def __init__(self, config: RunConfig | None = None, *, evaluator: Any = None, store: RunStore | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else RunConfig()
        built_here = evaluator is None
        if evaluator is None:
            # Imported here: the real evaluator pulls in torch and ONNX Runtime.
            from hadmc.evaluation import build_evaluator

            evaluator = build_evaluator(self.config)
        self.evaluator = evaluator
        # The baseline first: measuring it may attach profiled latency shares to the groups.
        self.baseline: Evaluation = evaluator.baseline
        self.groups = list(evaluator.groups)
        if not self.groups:
            from hadmc.errors import ModelError

            raise ModelError("the model has no layer groups to compress")
        self.group_names = [g.name for g in self.groups]
        self.layout = ActionLayout.from_search(self.config.search, getattr(evaluator.device, "precisions", ("fp32",)))
        self.action_space = self.layout.space()
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(OBS_DIM,), dtype=np.float32)
        self.encoder = ObservationEncoder(self.groups, evaluator.device, self.baseline)
        self._prune_valid = [g.prune_levels_valid(self.layout.prune_grid) for g in self.groups]

        self._owns_store = store is None
        if store is None:
            on_disk = self.config.run_dir is not None or built_here
            store = RunStore(self.config.database_path if on_disk else ":memory:")
        self.store = store
        self.run_id = store.open_run(self.config.name, self.config.model_dump(mode="json"))
        # The evaluator's class is part of the context so surrogate figures can never be
        # served as cache hits to a real run with the same configuration.
        self.context = f"{type(evaluator).__name__}:{self.config.evaluation_context()}"
        self.archive: ParetoArchive = store.load_archive(self.run_id, **self._pareto_frame())

        self._step = 0
        self._decisions: list[GroupDecision] = []
        self.last_evaluation: Evaluation | None = None

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
        evaluation, cached = self._evaluate(plan)
        breakdown = compute_reward(
            evaluation, self.baseline, self.config.objectives, self.config.constraints, self.config.failure_penalty
        )
        joined = False
        if not cached:
            before = set(self.archive.keys())
            self.store.record(self.run_id, evaluation, context=self.context, reward=breakdown.reward, archive=self.archive)
            joined = evaluation.plan_key in self.archive and evaluation.plan_key not in before
        self.last_evaluation = evaluation
        info: dict[str, Any] = {
            "action_mask": self.action_mask(),
            "step_type": "done",
            "plan": plan.model_dump(mode="json"),
            "plan_key": plan.key(),
            "objectives": evaluation.objectives(),
            **{name: getattr(evaluation, name) for name in OBJECTIVES},
            "provenance": dict(evaluation.provenance),
            "reward_terms": breakdown.terms,
            "cached": cached,
            "pareto": joined,
            "hypervolume": self.archive.hypervolume(),
            "evaluation": evaluation,
        }
        if not evaluation.ok:
            info["error"] = evaluation.error
        obs = self.encoder.encode(n + 1, self._decisions)
        return obs, breakdown.reward, True, False, info

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

    def _evaluate(self, plan: CompressionPlan) -> tuple[Evaluation, bool]:
        key = plan.key()
        if self.config.use_cache:
            hit = self.store.lookup(key, self.context)
            if hit is not None:
                log.debug("plan %s served from the run store", key[:12])
                # Measured figures become `cached`; estimated and surrogate ones keep saying so.
                prov = {k: ("cached" if v == "measured" else v) for k, v in hit.provenance.items()}
                return hit.model_copy(update={"provenance": prov}), True
        try:
            evaluation = self.evaluator.evaluate(plan)
        except Exception as exc:  # the evaluator should not raise; if it does the run goes on
            log.exception("evaluating plan %s raised", key[:12])
            evaluation = Evaluation(plan_key=key, plan=plan.model_dump(mode="json"), error=f"{type(exc).__name__}: {exc}")
        return evaluation, False

    def _pareto_frame(self) -> dict:
        """Reference point and scales of the hypervolume: the baseline's figures.

        A plan adds volume only where it beats the uncompressed model on latency, energy
        and size; the volume is dimensionless (each objective divided by its baseline).
        """
        b = self.baseline
        ref: dict[str, float] = {"accuracy": 0.0}
        for name in ("latency_ms", "energy_mj", "model_bytes"):
            if getattr(b, name) is not None and getattr(b, name) > 0:
                ref[name] = float(getattr(b, name))
        return {"reference": ref, "scale": {k: v for k, v in ref.items() if k != "accuracy"}}

    def close(self) -> None:
        if self._owns_store:
            self.store.close()
            self._owns_store = False
        super().close()


__all__ = ["HadMcCompressionEnv"]
