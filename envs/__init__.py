"""Gymnasium MDP for compression: state encoder, action space, reward, wrappers.

Importing `hadmc.envs` registers ``hadmc/Compression-v0``; the heavy modules (torch through
the layer groups, the real evaluator) load only when an environment is built.
"""

from __future__ import annotations

ENV_ID = "hadmc/Compression-v0"


def register_envs() -> None:
    """Register `hadmc/Compression-v0` with Gymnasium (idempotent)."""
    import gymnasium

    if ENV_ID not in gymnasium.envs.registry:
        gymnasium.register(
            id=ENV_ID,
            entry_point="hadmc.envs.compression_env:HadMcCompressionEnv",
        )


_LAZY = {
    "HadMcCompressionEnv": "compression_env",
    "FlattenActions": "wrappers",
    "SurrogateEvaluator": "surrogate",
    "ActionLayout": "spaces",
    "ObservationEncoder": "observation",
    "compute_reward": "reward",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'hadmc.envs' has no attribute {name!r}")


register_envs()

__all__ = ["ENV_ID", "register_envs", *_LAZY]
