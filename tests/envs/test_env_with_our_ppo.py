"""Our five-head actor-critic and PPO trainer on the compression MDP (surrogate figures: fast)."""

import math

import gymnasium as gym
import pytest
import torch

from hadmc.agents.ppo import PPOTrainer, make_vector_env


class RecordCorrections(gym.Wrapper):
    """Counts actions the env had to correct because they chose a masked option."""

    corrected = 0

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        RecordCorrections.corrected += len(info.get("action_corrected") or [])
        return obs, reward, terminated, truncated, info


@pytest.mark.parametrize(
    "extra",
    [
        {"ratio_mode": "token"},
        {"ratio_mode": "harmonic", "aggregation": "sequence", "advantage": "group", "group_size": 2},
    ],
    ids=["token-gae", "harmonic-sequence-group"],
)
def test_our_ppo_trains_on_the_dict_action_env_and_respects_its_masks(make_env, extra):
    torch.set_num_threads(1)
    RecordCorrections.corrected = 0
    # the CPU device masks fp16, and each step masks the heads that do not act
    venv = make_vector_env(lambda: RecordCorrections(make_env(5)), 2)
    cfg = {"n_steps": 48, "batch_size": 48, "n_epochs": 2, "seed": 0, **extra}
    trainer = PPOTrainer(venv, cfg, sinks=[])
    trainer.learn(480)
    assert math.isfinite(trainer.metrics["rollout/ep_rew_mean"])
    assert RecordCorrections.corrected == 0  # the policy never chose a masked option
    for env in venv.envs:
        inner = env.unwrapped
        assert inner.store.count(inner.run_id) > 0
    venv.close()
