"""The MDP's terminal reward: the run's reward (`hadmc.reward`), re-exported for the env's users."""

from hadmc.reward import RewardBreakdown, compute_reward

__all__ = ["RewardBreakdown", "compute_reward"]
