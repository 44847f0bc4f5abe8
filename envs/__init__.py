"""Gymnasium MDP for compression: state encoder, action space, reward, wrappers."""


def register_envs() -> None:
    """Register `hadmc/Compression-v0` with Gymnasium (idempotent)."""
    import gymnasium

    if "hadmc/Compression-v0" not in gymnasium.envs.registry:
        gymnasium.register(
            id="hadmc/Compression-v0",
            entry_point="hadmc.envs.compression_env:HadMcCompressionEnv",
        )
