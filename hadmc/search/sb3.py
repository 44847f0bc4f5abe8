"""Stable-Baselines3 PPO as a searcher: the reference implementation on the same MDP.

sb3-contrib's MaskablePPO when it is installed (it honours the env's action masks), else
plain SB3 PPO, over `FlattenActions` (the Dict action space as MultiDiscrete). The learner
runs env-driven (see `bridge`); its model is checkpointed after every rollout in
``searcher/sb3_ppo.zip`` and reloaded when the run resumes.
"""

from __future__ import annotations

import math
from typing import Any

from hadmc.errors import ConfigError

from .base import SearchContext
from .bridge import EnvDrivenSearcher, Prefetched, save_atomic, step_concurrently


class SB3PPOSearcher(EnvDrivenSearcher):
    """SB3 (Maskable)PPO on the compression MDP; one rollout is 8 episodes, with parallel
    workers 8 // workers (at least one) in each of their envs."""

    name = "sb3-ppo"

    def __init__(self, context: SearchContext) -> None:
        super().__init__(context)
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            raise ConfigError("the sb3-ppo searcher needs Stable-Baselines3: pip install 'hadmc[search]'") from None
        self.checkpoint = self.directory / "sb3_ppo.zip"
        self.algorithm = "PPO"

    def _learn(self, env) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        from hadmc.envs.wrappers import FlattenActions

        try:
            from sb3_contrib import MaskablePPO as Algo

            self.algorithm = "MaskablePPO"
        except ImportError:
            from stable_baselines3 import PPO as Algo

        steps = len(self.space.groups) + 1  # one episode
        if self.context.workers > 1:  # one env per worker, stepped at once (see bridge)
            flat = concurrent_vec_env([lambda: Prefetched(FlattenActions(self._make_env()))] * self.context.workers)
        else:
            flat = FlattenActions(env)
        if self.checkpoint.is_file():
            model = Algo.load(self.checkpoint, env=flat, device="cpu")
            self._resumed(self.checkpoint, model.num_timesteps)
        else:
            episodes = max(1, 8 // self.context.workers)  # per env
            batch = math.gcd(2, episodes * self.context.workers) * steps  # divides the rollout (SB3 warns otherwise)
            ppo: dict[str, Any] = {"n_steps": episodes * steps, "batch_size": batch, "n_epochs": 10, **self.context.config.agent.ppo}
            model = Algo("MlpPolicy", flat, seed=self.context.seed, device="cpu", verbose=0, **ppo)
        # An explicit logger: SB3's default (verbose 0) makes an empty SB3-<date> folder in /tmp per run.
        from stable_baselines3.common.logger import Logger

        model.set_logger(Logger(folder=None, output_formats=[]))
        path = self.checkpoint

        class Checkpoint(BaseCallback):
            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                save_atomic(lambda tmp: self.model.save(tmp), path)

        model.learn(total_timesteps=10**9, callback=Checkpoint(), reset_num_timesteps=False)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "algorithm": self.algorithm}


def concurrent_vec_env(env_fns):
    """An SB3 DummyVecEnv whose envs (`Prefetched`) are stepped at once."""
    from stable_baselines3.common.vec_env import DummyVecEnv

    class ConcurrentDummyVecEnv(DummyVecEnv):
        def step_wait(self):
            step_concurrently(self.envs, [self.actions[i] for i in range(self.num_envs)])
            return super().step_wait()

    return ConcurrentDummyVecEnv(env_fns)
