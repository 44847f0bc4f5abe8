"""The PPO trainer on Gymnasium tasks: SB3 identity thresholds, masks, modes, exact resume."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.envs import IdentityEnv, IdentityEnvMultiDiscrete

from hadmc.agents import PPOConfig, PPOTrainer, make_vector_env
from hadmc.errors import ConfigError

# SB3 tests/test_identity.py::test_discrete: DIM = 4, gamma = 0.4, 10000 steps, PPO defaults,
# one env, 20 evaluation episodes, mean reward >= 90 (of 100).
SB3_IDENTITY_STEPS = 10_000


def _evaluate(trainer: PPOTrainer, env_fn, episodes: int = 20) -> float:
    env = env_fn()
    total = 0.0
    for ep in range(episodes):
        obs, _ = env.reset(seed=1000 + ep)
        done = False
        while not done:
            action = trainer.predict(np.asarray([obs]))[0]
            obs, r, term, trunc, _ = env.step(action)
            total += r
            done = term or trunc
    return total / episodes


@pytest.mark.slow
@pytest.mark.parametrize("env_fn", [lambda: IdentityEnv(4), lambda: IdentityEnvMultiDiscrete(4)], ids=["discrete", "multidiscrete"])
def test_identity_env_reaches_sb3_threshold_after_sb3_step_count(env_fn):
    torch.set_num_threads(1)
    venv = make_vector_env(env_fn, 1)
    trainer = PPOTrainer(venv, {"gamma": 0.4, "seed": 3}, sinks=[])
    trainer.learn(SB3_IDENTITY_STEPS)
    assert _evaluate(trainer, env_fn) >= 90.0


class MaskedPlanEnv(gym.Env):
    """A 4-step toy with the compression env's Dict actions and info['action_mask'] format.

    Steps 0-2 decide pruning/quantization (quantization option 2 is unavailable); the last
    step decides distillation only. Reward: +1 per pruning choice equal to the step index.
    """

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0.0, 1.0, (4,), np.float32)
        self.action_space = spaces.Dict({
            "pruning": spaces.Discrete(4),
            "quantization": spaces.Discrete(3),
            "distillation": spaces.Box(np.array([1.0, 0.0], np.float32), np.array([20.0, 1.0], np.float32)),
        })
        self.t = 0
        self.bad_choices = 0

    def _obs(self):
        o = np.zeros(4, np.float32)
        o[self.t] = 1.0
        return o

    def _info(self):
        last = self.t == 3
        return {"action_mask": {"heads": {"pruning": not last, "quantization": not last, "distillation": last},
                                "quantization": np.array([True, True, False])}}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), self._info()

    def step(self, action):
        reward = 0.0
        if self.t < 3:
            reward = float(int(action["pruning"]) == self.t)
            self.bad_choices += int(int(action["quantization"]) == 2)
        self.t += 1
        done = self.t == 4
        if done:
            self.t = 3
        return self._obs(), reward, done, False, self._info()


@pytest.mark.parametrize("extra", [
    {"ratio_mode": "token"},
    {"ratio_mode": "joint"},
    {"ratio_mode": "harmonic", "stop_gradient": True},
    {"ratio_mode": "power", "p_schedule": "linear", "p_start": 2.0, "p_end": -2.0, "log_space_clip": True},
    {"ratio_mode": "power", "learn_p": True, "p_start": 0.5},
    {"ratio_mode": "geometric", "adaptive_mean": True},
    {"ratio_mode": "geometric", "aggregation": "sequence", "advantage": "group", "group_size": 4, "batch_size": 4},
    {"loss": "pmd-mean", "advantage": "loo", "aggregation": "sequence", "group_size": 4, "batch_size": 4},
    {"loss": "pmd-part", "advantage": "ploo", "aggregation": "sequence", "group_size": 4, "batch_size": 4},
    {"behaviour": "optimal-elite", "ratio_mode": "token"},
], ids=lambda e: "-".join(f"{v}" for v in e.values()))
def test_trainer_runs_every_mode_on_masked_dict_actions_and_learns_the_toy(extra):
    torch.set_num_threads(1)
    venv = make_vector_env(MaskedPlanEnv, 4)
    cfg = {"n_steps": 64, "batch_size": 64, "n_epochs": 4, "learning_rate": 3e-3, "seed": 0, "gamma": 0.9, **extra}
    trainer = PPOTrainer(venv, cfg, sinks=[])
    trainer.learn(3000 if extra.get("behaviour") else 4000)
    assert all(e.bad_choices == 0 for e in venv.envs)  # masked option never taken
    m = trainer.metrics
    for key in ("train/approx_kl", "train/clip_fraction", "train/entropy_loss", "train/value_loss", "train/explained_variance", "rollout/ep_rew_mean"):
        assert key in m
    assert m["rollout/ep_rew_mean"] > 1.5  # random play scores 0.75 of 3


def test_checkpoint_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    cfg = {"n_steps": 32, "batch_size": 64, "n_epochs": 2, "seed": 5, "lr_schedule": "linear"}
    a = PPOTrainer(make_vector_env("CartPole-v1", 2), cfg, sinks=[])
    a.learn(64 * 3)
    path = a.save(tmp_path / "ckpt.pt")
    a.learn(64 * 6)
    b = PPOTrainer(make_vector_env("CartPole-v1", 2), cfg, sinks=[]).load(path)
    assert b.num_timesteps == 64 * 3
    b.learn(64 * 6)
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb)
    assert list(a.ep_returns) == list(b.ep_returns)
    with pytest.raises(ConfigError, match="different PPOConfig"):
        PPOTrainer(make_vector_env("CartPole-v1", 2), {**cfg, "seed": 6}, sinks=[]).load(path)


def test_async_vector_env_and_tensorboard_sink(tmp_path):
    from hadmc.agents import TensorBoardSink

    venv = make_vector_env("CartPole-v1", 2, vectorization="async")
    try:
        trainer = PPOTrainer(venv, {"n_steps": 32, "batch_size": 32, "n_epochs": 1}, sinks=[TensorBoardSink(tmp_path)])
        trainer.learn(128)
        trainer.close()
    finally:
        venv.close()
    assert trainer.num_timesteps == 128
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_bad_config_names_the_field_and_the_valid_values():
    with pytest.raises(ConfigError, match="ratio_mode.*token"):
        PPOConfig.build(ratio_mode="median")
    with pytest.raises(ConfigError, match="advantage.*gae"):
        PPOConfig.build(advantage="vtrace")
    with pytest.raises(ConfigError, match="use advantage loo"):
        PPOConfig.build(loss="pmd-mean")
    with pytest.raises(ConfigError, match="SAME_STEP"):
        PPOTrainer(gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")]), {}, sinks=[])
