"""The PPO trainer on Gymnasium tasks: SB3 identity thresholds, masks, modes, exact resume."""

from __future__ import annotations

import dataclasses
import inspect

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
    for key in ("train/approx_kl", "train/entropy_loss", "train/value_loss", "train/explained_variance", "rollout/ep_rew_mean"):
        assert key in m
    # PMD losses clip nothing, so they report no clip fraction
    assert ("train/clip_fraction" in m) == ("loss" not in extra)
    assert m["rollout/ep_rew_mean"] > 1.5  # random play scores 0.75 of 3


def test_checkpoint_resume_is_exact(tmp_path):
    torch.set_num_threads(1)
    cfg = {"n_steps": 32, "batch_size": 64, "n_epochs": 2, "seed": 5, "lr_schedule": "linear"}
    a = PPOTrainer(make_vector_env("CartPole-v1", 2), cfg, sinks=[])
    a.learn(64 * 3)
    path = a.save(tmp_path / "ckpt.pt")
    a.learn(64 * 3, reset_num_timesteps=False)
    b = PPOTrainer(make_vector_env("CartPole-v1", 2), cfg, sinks=[]).load(path)
    assert b.num_timesteps == 64 * 3
    b.learn(64 * 3, reset_num_timesteps=False)
    for pa, pb in zip(a.policy.parameters(), b.policy.parameters()):
        assert torch.equal(pa, pb)
    assert list(a.ep_returns) == list(b.ep_returns)
    with pytest.raises(ConfigError, match="different PPOConfig"):
        PPOTrainer(make_vector_env("CartPole-v1", 2), {**cfg, "seed": 6}, sinks=[]).load(path)
    older = tmp_path / "older.pt"
    torch.save({**torch.load(path, weights_only=True), "format": "hadmc.agents.ppo/1"}, older)
    with pytest.raises(ConfigError, match="train again"):
        PPOTrainer(make_vector_env("CartPole-v1", 2), cfg, sinks=[]).load(older)


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


# ---------------------------------------------------------------------------------------
# options work as named (issue 11)
# ---------------------------------------------------------------------------------------


def test_optimal_elite_sampling_with_target_kl_measures_the_policys_own_movement():
    # ratios pi_theta / q start away from 1 (q is the sampler, not the policy): measured
    # against q, approx_kl was 0.015-0.024 before any update and target_kl stopped every update
    torch.set_num_threads(1)
    venv = make_vector_env(MaskedPlanEnv, 4)
    cfg = {"n_steps": 64, "batch_size": 64, "n_epochs": 4, "learning_rate": 3e-3, "seed": 0, "gamma": 0.9,
           "behaviour": "optimal-elite", "target_kl": 0.005}
    trainer = PPOTrainer(venv, cfg, sinks=[])
    batch = trainer.collect_rollouts()  # the elite fills after the first 4-step episodes
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.train(batch)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def _actor_and_critic(policy: torch.nn.Module):
    named = dict(policy.named_parameters())
    critic = {k: v for k, v in named.items() if k.startswith(("value_head", "critic_trunk"))}
    actor = {k: v for k, v in named.items() if k not in critic}
    return actor, critic


@pytest.mark.parametrize("extra", [
    {"advantage": "group", "aggregation": "sequence", "ratio_mode": "geometric"},
    {"advantage": "loo", "loss": "pmd-mean", "aggregation": "sequence"},
    {"advantage": "ploo", "ratio_mode": "token"},
], ids=lambda e: e["advantage"])
def test_a_diagnostic_critic_leaves_the_policy_update_unchanged(extra):
    # with episode advantages the critic is only a diagnostic; its loss used to share the
    # gradient-norm clip with the policy and scale the policy's step down by ~1e-3
    torch.set_num_threads(1)

    def trained(value_scale: float):
        venv = make_vector_env("CartPole-v1", 4)
        cfg = {"n_steps": 16, "batch_size": 4, "n_epochs": 2, "group_size": 4, "seed": 0, **extra}
        trainer = PPOTrainer(venv, cfg, sinks=[])
        batch = trainer.collect_rollouts()
        trainer.train(dataclasses.replace(batch, returns=batch.returns * value_scale))
        return _actor_and_critic(trainer.policy)

    (actor_a, critic_a), (actor_b, critic_b) = trained(1.0), trained(1000.0)
    for name, p in actor_a.items():
        assert torch.equal(p, actor_b[name]), name
    assert any(not torch.equal(p, critic_b[name]) for name, p in critic_a.items())  # the critic still learns


@pytest.mark.parametrize("extra,offset,expected", [
    ({"ratio_mode": "harmonic"}, [1.0, -1.0], 1.0),  # harmonic mean of e and 1/e: 0.648, clipped
    ({"ratio_mode": "harmonic", "stop_gradient": True}, [1.0, -1.0], 1.0),
    ({"ratio_mode": "geometric"}, [1.0, -1.0], 0.0),  # geometric mean 1
    ({"ratio_mode": "token"}, [1.0, -1.0], 1.0),
    ({"ratio_mode": "joint"}, [1.0, -1.0], 0.0),
    # each step's joint ratio e^0.1 is inside the clip range, each 100-step episode's e^10 is not
    ({"ratio_mode": "joint", "aggregation": "sequence", "advantage": "group", "group_size": 2}, [0.05, 0.05], 1.0),
], ids=["harmonic", "harmonic-sg", "geometric", "token", "joint", "joint-sequence"])
def test_clip_fraction_counts_the_ratios_that_the_loss_clips(extra, offset, expected):
    torch.set_num_threads(1)
    venv = make_vector_env(lambda: IdentityEnvMultiDiscrete(4), 2)
    cfg = {"n_steps": 16, "batch_size": 1024, "n_epochs": 1, "seed": 0, **extra}
    trainer = PPOTrainer(venv, cfg, sinks=[])
    batch = trainer.collect_rollouts()
    # log pi_theta - log pi_old = offset per head before the (single) gradient step
    shifted = dataclasses.replace(batch, old_logp=batch.old_logp - torch.tensor(offset))
    metrics = trainer.train(shifted)
    assert metrics["train/clip_fraction"] == pytest.approx(expected)


def _sb3_ppo_with_our_weights(policy, n_steps: int, n_epochs: int, lr: float):
    from stable_baselines3 import PPO
    from stable_baselines3.common.logger import Logger

    sb3 = PPO("MlpPolicy", gym.make("CartPole-v1"), n_steps=n_steps, batch_size=n_steps, n_epochs=n_epochs,
              learning_rate=lr, seed=0, device="cpu")
    sb3.set_logger(Logger(None, []))
    pairs = [(sb3.policy.mlp_extractor.policy_net[0], policy.trunk[0]), (sb3.policy.mlp_extractor.policy_net[2], policy.trunk[2]),
             (sb3.policy.mlp_extractor.value_net[0], policy.critic_trunk[0]), (sb3.policy.mlp_extractor.value_net[2], policy.critic_trunk[2]),
             (sb3.policy.action_net, policy.logits_head), (sb3.policy.value_net, policy.value_head)]
    with torch.no_grad():
        for theirs, ours in pairs:
            theirs.weight.copy_(ours.weight)
            theirs.bias.copy_(ours.bias)
    return sb3, pairs


def _fill_sb3_buffer(sb3, batch) -> None:
    buf = sb3.rollout_buffer
    buf.observations[:, 0] = batch.obs.numpy()
    buf.actions[:, 0] = batch.actions.numpy()
    buf.log_probs[:, 0] = batch.old_logp[:, 0].numpy()
    buf.advantages[:, 0] = batch.advantages.numpy()
    buf.returns[:, 0] = batch.returns.numpy()
    buf.values[:, 0] = batch.old_values.numpy()
    buf.full = True


def test_one_update_reports_what_sb3_reports_for_the_same_rollout_and_weights():
    # train/approx_kl is the mean over the last epoch and train/n_updates counts epochs over
    # the whole run, as in SB3 (they were: the mean over all epochs; this update's steps)
    torch.set_num_threads(1)
    n_epochs, lr = 4, 3e-3
    cfg = {"n_steps": 64, "batch_size": 128, "n_epochs": n_epochs, "learning_rate": lr,
           "hidden_sizes": (64, 64), "separate_critic": True, "seed": 0}
    ours = PPOTrainer(make_vector_env("CartPole-v1", 2), cfg, sinks=[])
    batch = ours.collect_rollouts()
    sb3, pairs = _sb3_ppo_with_our_weights(ours.policy, 128, n_epochs, lr)
    _fill_sb3_buffer(sb3, batch)
    for call in (1, 2):
        sb3.train()
        theirs = sb3.logger.name_to_value
        mine = ours.train(batch)
        for key in ("train/approx_kl", "train/clip_fraction", "train/policy_gradient_loss", "train/value_loss",
                    "train/entropy_loss", "train/explained_variance", "train/loss"):
            assert mine[key] == pytest.approx(float(theirs[key]), rel=2e-4, abs=1e-7), key
        assert mine["train/n_updates"] == theirs["train/n_updates"] == call * n_epochs
    for theirs_layer, ours_layer in pairs:
        assert torch.allclose(theirs_layer.weight, ours_layer.weight, atol=2e-5)


def test_learn_counts_timesteps_like_sb3():
    torch.set_num_threads(1)
    assert inspect.signature(PPOTrainer.learn).parameters["reset_num_timesteps"].default is True
    trainer = PPOTrainer(make_vector_env("CartPole-v1", 2), {"n_steps": 32, "batch_size": 64, "n_epochs": 1}, sinks=[])
    trainer.learn(128)
    assert trainer.num_timesteps == 128
    trainer.learn(128)  # counts from 0 again
    assert trainer.num_timesteps == 128
    trainer.learn(128, reset_num_timesteps=False)  # 128 more
    assert trainer.num_timesteps == 256
