"""Actor-critic, PPO-family loss core, advantages, optimal sampling, trainer."""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    episode_advantages,
    gae,
    group_advantages,
    group_sums,
    groups_sum_to_zero,
    loo_advantages,
    ploo_advantages,
)
from .losses import (
    P_SCHEDULES,
    POLICY_LOSSES,
    LearnedPower,
    RatioMode,
    arithmetic_harmonic_mean,
    parse_ratio_mode,
    pmd_loss,
    policy_loss,
    power_mean_log,
    ppo_clip_loss,
    scheduled_p,
    select_ratio_mean,
)
from .policy import ActionMasks, ActorCritic, HeadSpec, heads_for_space
from .config import PPOConfig
from .ppo import LoggingSink, PPOTrainer, RichConsoleSink, TensorBoardSink, make_vector_env
from .sampling import EliteTarget, criterion_gap, optimal_sampling, optimal_sampling_log

__all__ = [
    "ADVANTAGE_ESTIMATORS", "P_SCHEDULES", "POLICY_LOSSES",
    "ActionMasks", "ActorCritic", "EliteTarget", "HeadSpec", "LearnedPower", "LoggingSink",
    "PPOConfig", "PPOTrainer", "RatioMode", "RichConsoleSink", "TensorBoardSink",
    "arithmetic_harmonic_mean", "criterion_gap", "episode_advantages", "gae", "group_advantages",
    "group_sums", "groups_sum_to_zero", "heads_for_space", "loo_advantages", "make_vector_env",
    "optimal_sampling", "optimal_sampling_log", "parse_ratio_mode", "ploo_advantages", "pmd_loss",
    "policy_loss", "power_mean_log", "ppo_clip_loss", "scheduled_p", "select_ratio_mean",
]
