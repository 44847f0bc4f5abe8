"""Actor-critic, PPO-family loss core, advantages, optimal sampling, rollouts, trainer.

Laid out like Stable-Baselines3: ``policy.py`` (actor-critic), ``losses.py`` (loss core),
``advantages.py`` (estimators), ``sampling.py`` (optimal sampling), ``rollout.py`` (collection
and the batch), ``config.py`` (hyperparameters), ``logger.py`` (metric sinks),
``vector_env.py`` (env factory), ``ppo.py`` (the trainer).
"""

from .advantages import (
    ADVANTAGE_ESTIMATORS,
    AdvantageEstimator,
    AdvantageSettings,
    Trajectories,
    episode_advantages,
    gae,
    group_advantages,
    group_sums,
    groups_sum_to_zero,
    loo_advantages,
    ploo_advantages,
    register_advantage,
)
from .config import PPOConfig
from .logger import LoggingSink, MetricsSink, RichConsoleSink, TensorBoardSink
from .losses import (
    P_SCHEDULES,
    POLICY_LOSSES,
    RATIO_MEANS,
    LearnedPower,
    LossSettings,
    PolicyLossSpec,
    RatioMode,
    arithmetic_harmonic_mean,
    parse_ratio_mode,
    pmd_loss,
    policy_loss,
    power_mean_log,
    ppo_clip_loss,
    register_policy_loss,
    scheduled_p,
    select_ratio_mean,
)
from .policy import ActionMasks, ActorCritic, HeadSpec, heads_for_space
from .ppo import PPOTrainer
from .rollout import RolloutBatch, RolloutCollector
from .sampling import SAMPLING_CRITERIA, EliteTarget, criterion_gap, optimal_sampling, optimal_sampling_log
from .vector_env import make_vector_env

__all__ = [
    "ADVANTAGE_ESTIMATORS", "P_SCHEDULES", "POLICY_LOSSES", "RATIO_MEANS", "SAMPLING_CRITERIA",
    "ActionMasks", "ActorCritic", "AdvantageEstimator", "AdvantageSettings", "EliteTarget", "HeadSpec", "LearnedPower",
    "LoggingSink", "LossSettings", "MetricsSink", "PPOConfig", "PPOTrainer", "PolicyLossSpec", "RatioMode",
    "RichConsoleSink", "RolloutBatch", "RolloutCollector", "TensorBoardSink", "Trajectories",
    "arithmetic_harmonic_mean", "criterion_gap", "episode_advantages", "gae", "group_advantages",
    "group_sums", "groups_sum_to_zero", "heads_for_space", "loo_advantages", "make_vector_env",
    "optimal_sampling", "optimal_sampling_log", "parse_ratio_mode", "ploo_advantages", "pmd_loss",
    "policy_loss", "power_mean_log", "ppo_clip_loss", "register_advantage", "register_policy_loss", "scheduled_p",
    "select_ratio_mean",
]
