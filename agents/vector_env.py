"""The vector environments the trainer steps: ``gymnasium.vector`` with same-step autoreset."""

from __future__ import annotations

from typing import Any, Callable, Literal

import gymnasium as gym
from gymnasium.vector import AutoresetMode, VectorEnv

from hadmc.errors import ConfigError


def make_vector_env(
    env: str | Callable[[], gym.Env], n_envs: int = 1, vectorization: Literal["sync", "async"] = "sync", **make_kwargs: Any
) -> VectorEnv:
    """A ``gymnasium.vector`` env with same-step autoreset (final observations in ``info``).

    :param env: a registered id or a zero-argument factory
    :param n_envs: number of copies
    :param vectorization: ``sync`` (one process) or ``async`` (one process per env)
    """
    fn: Callable[[], gym.Env] = (lambda: gym.make(env, **make_kwargs)) if isinstance(env, str) else env
    kwargs = dict(autoreset_mode=AutoresetMode.SAME_STEP)
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv([fn] * n_envs, **kwargs)
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv([fn] * n_envs, **kwargs)
    raise ConfigError(f"unknown vectorization {vectorization!r}; valid: sync, async")


def check_same_step_autoreset(env: VectorEnv) -> None:
    """Refuse a vector env whose final observations are not in the step's ``info``."""
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    if mode not in (AutoresetMode.SAME_STEP, "SameStep"):
        raise ConfigError("the vector env must use autoreset_mode=AutoresetMode.SAME_STEP; build it with hadmc.agents.make_vector_env")


__all__ = ["check_same_step_autoreset", "make_vector_env"]
