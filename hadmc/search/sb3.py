"""Stable-Baselines3 PPO as a searcher: the reference implementation on the same MDP.

sb3-contrib's MaskablePPO when it is installed (it honours the env's action masks), else
plain SB3 PPO, over `FlattenActions` (the Dict action space as MultiDiscrete). The learner
runs env-driven (see `bridge`); its model is checkpointed after every rollout in
``searcher/sb3_ppo.zip`` and reloaded when the run resumes.
"""

from __future__ import annotations

from typing import Any

from hadmc.errors import ConfigError

from .base import SearchContext
from .bridge import EnvDrivenSearcher, save_atomic


class SB3PPOSearcher(EnvDrivenSearcher):
    """SB3 (Maskable)PPO on the compression MDP; one rollout is 8 episodes."""

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

        flat = FlattenActions(env)
        steps = len(self.space.groups) + 1  # one episode
        if self.checkpoint.is_file():
            model = Algo.load(self.checkpoint, env=flat, device="cpu")
        else:
            ppo: dict[str, Any] = {"n_steps": 8 * steps, "batch_size": 2 * steps, "n_epochs": 10, **self.context.config.agent.ppo}
            model = Algo("MlpPolicy", flat, seed=self.context.seed, device="cpu", verbose=0, **ppo)
        path = self.checkpoint

        class Checkpoint(BaseCallback):
            def _on_step(self) -> bool:
                return True

            def _on_rollout_end(self) -> None:
                save_atomic(lambda tmp: self.model.save(tmp), path)

        model.learn(total_timesteps=10**9, callback=Checkpoint(), reset_num_timesteps=False)

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "algorithm": self.algorithm}
