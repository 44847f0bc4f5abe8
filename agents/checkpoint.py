"""Trainer checkpoints: one file, written atomically, read with weights-only unpickling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hadmc.errors import ConfigError

from .config import PPOConfig

# /2: the learned p trains in the policy's optimiser (its own param group), n_updates is kept
CHECKPOINT_FORMAT = "hadmc.agents.ppo/2"


def write_checkpoint(path: str | Path, config: PPOConfig, state: dict[str, Any]) -> Path:
    """Write ``state`` with the config it belongs to; a crash mid-write leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": CHECKPOINT_FORMAT, "config": config.model_dump(mode="json"), **_plain(state)}, tmp)
    tmp.replace(path)
    return path


def read_checkpoint(path: str | Path, config: PPOConfig) -> dict[str, Any]:
    """The state ``write_checkpoint`` wrote, if it was written with ``config``."""
    try:
        state = torch.load(Path(path), weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path} does not exist") from None
    if not isinstance(state, dict) or not str(state.get("format", "")).startswith("hadmc.agents.ppo/"):
        raise ConfigError(f"{path} is not a hadmc PPO checkpoint")
    if state["format"] != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is a {state['format']} checkpoint; this version resumes {CHECKPOINT_FORMAT} only: train again from the start")
    if state["config"] != config.model_dump(mode="json"):
        raise ConfigError(f"checkpoint {path} was written with a different PPOConfig; build the trainer with that config to resume")
    return state


def _plain(x: Any) -> Any:
    """numpy integers -> int, so weights-only unpickling reads numpy RNG states back."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, np.integer):
        return int(x)
    return x


__all__ = ["CHECKPOINT_FORMAT", "read_checkpoint", "write_checkpoint"]
