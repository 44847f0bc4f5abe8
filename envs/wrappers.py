"""Wrappers that adapt the compression MDP to off-the-shelf RL libraries."""

from __future__ import annotations

from collections.abc import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

#: Default distillation grids of `FlattenActions` (DESIGN.md: T in [1, 20], alpha in [0, 1]).
TEMPERATURE_GRID: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 12.0, 20.0)
ALPHA_GRID: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
#: Position of each head in the flat MultiDiscrete action.
FLAT_ORDER: tuple[str, ...] = ("pruning", "quantization", "temperature", "alpha", "fusion", "update")


class FlattenActions(gym.ActionWrapper):
    """Dict action space -> MultiDiscrete, so Stable-Baselines3 algorithms run on the env.

    The flat action is ``[pruning, quantization, temperature, alpha, fusion, update]``
    (``FLAT_ORDER``); the distillation Box becomes two indices into `temperature_grid` and
    `alpha_grid`. Heads inactive at a step are still sampled and then ignored by the env.
    ``action_masks()`` returns the concatenated per-option mask of the current step
    (sb3-contrib's MaskablePPO convention).

    :param env: a `HadMcCompressionEnv` (or a wrapper of one)
    :param temperature_grid: distillation temperatures offered, within [1, 20]
    :param alpha_grid: KD weights offered, within [0, 1]
    """

    def __init__(
        self,
        env: gym.Env,
        temperature_grid: Sequence[float] = TEMPERATURE_GRID,
        alpha_grid: Sequence[float] = ALPHA_GRID,
    ) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, spaces.Dict) or set(space.spaces) != {"pruning", "quantization", "distillation", "fusion", "update"}:
            raise TypeError("FlattenActions wraps the hadmc compression env (a Dict action space with its five heads)")
        box = space["distillation"]
        self.temperature_grid = np.asarray(temperature_grid, dtype=np.float32)
        self.alpha_grid = np.asarray(alpha_grid, dtype=np.float32)
        for name, grid, lo, hi in (("temperature_grid", self.temperature_grid, box.low[0], box.high[0]),
                                   ("alpha_grid", self.alpha_grid, box.low[1], box.high[1])):
            if grid.size == 0 or grid.min() < lo or grid.max() > hi:
                raise ValueError(f"{name} must be non-empty and within [{lo}, {hi}], got {grid.tolist()}")
        self._sizes = np.array(
            [
                space["pruning"].n,
                space["quantization"].n,
                len(self.temperature_grid),
                len(self.alpha_grid),
                space["fusion"].n,
                space["update"].n,
            ],
            dtype=np.int64,
        )
        self.action_space = spaces.MultiDiscrete(self._sizes)
        self._last_mask: dict | None = None

    def action(self, action: np.ndarray) -> dict:
        a = np.asarray(action, dtype=np.int64).reshape(-1)
        a = np.clip(a, 0, self._sizes - 1)
        return {
            "pruning": int(a[0]),
            "quantization": int(a[1]),
            "distillation": np.array([self.temperature_grid[a[2]], self.alpha_grid[a[3]]], dtype=np.float32),
            "fusion": int(a[4]),
            "update": int(a[5]),
        }

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self._last_mask = info.get("action_mask")
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        self._last_mask = info.get("action_mask")
        return obs, reward, terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """Concatenated valid-option mask of the current step, in `FLAT_ORDER`."""
        m = self._last_mask
        if m is None:
            return np.ones(int(self._sizes.sum()), dtype=bool)
        heads = m["heads"]
        distill = heads["distillation"]
        t = np.ones(len(self.temperature_grid), dtype=bool) if distill else _first(len(self.temperature_grid))
        a = np.ones(len(self.alpha_grid), dtype=bool) if distill else _first(len(self.alpha_grid))
        return np.concatenate([m["pruning"], m["quantization"], t, a, m["fusion"], m["update"]]).astype(bool)


def _first(n: int) -> np.ndarray:
    out = np.zeros(n, dtype=bool)
    out[0] = True
    return out


__all__ = ["ALPHA_GRID", "FLAT_ORDER", "FlattenActions", "TEMPERATURE_GRID"]
