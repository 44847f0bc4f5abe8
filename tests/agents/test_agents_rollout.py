"""Rollouts: sequences of a batch, the episode layout, and what a sequence-level ratio may use."""

from __future__ import annotations

import pytest
import torch

from hadmc.agents import PPOTrainer, make_vector_env
from hadmc.agents.advantages import group_advantages
from hadmc.agents.rollout import sequence_rows


def test_a_sequence_ratio_refuses_per_step_advantages_instead_of_keeping_one_of_them():
    # per-step advantages [1, -2, 3, -4] used to become -4 for the whole sequence
    log_ratio = torch.zeros(4, 2)
    hmask = torch.ones(4, 2, dtype=torch.bool)
    adv = torch.tensor([1.0, -2.0, 3.0, -4.0])
    seq_id, seq_pos = torch.zeros(4, dtype=torch.long), torch.arange(4)
    with pytest.raises(ValueError, match="one advantage per sequence"):
        sequence_rows(log_ratio, hmask, adv, seq_id, seq_pos, per_factor=False)
    _, _, per_factor = sequence_rows(log_ratio, hmask, adv, seq_id, seq_pos, per_factor=True)
    assert per_factor.tolist() == [[1.0, 1.0, -2.0, -2.0, 3.0, 3.0, -4.0, -4.0]]
    _, _, one = sequence_rows(log_ratio, hmask, torch.full((4,), 2.5), seq_id, seq_pos, per_factor=False)
    assert one.tolist() == [2.5]


def test_episode_rollouts_hold_whole_episodes_with_one_advantage_each_summing_to_zero_per_group():
    torch.set_num_threads(1)
    trainer = PPOTrainer(make_vector_env("CartPole-v1", 4), {"advantage": "group", "group_size": 2, "n_steps": 16}, sinks=[])
    batch = trainer.collect_rollouts()
    assert trainer.num_timesteps == batch.obs.shape[0] >= 16 * 4
    members = batch.sequence_members()
    assert len(members) % 4 == 0 and len(members) == len(trainer.ep_returns)
    for k, steps in enumerate(members):
        assert batch.seq_pos[steps].tolist() == list(range(len(steps)))
        assert torch.unique(batch.advantages[steps]).numel() == 1
        # the critic's targets are the discounted returns-to-go of the episode (CartPole: +1 a step)
        assert float(batch.returns[steps[-1]]) == pytest.approx(1.0)
    # CartPole pays 1 a step: each episode's return is its length, and the advantages are
    # GRPO's of those returns within each pair of episodes that shared a reset seed
    returns = torch.tensor([float(len(m)) for m in members])
    first = torch.stack([batch.advantages[m[0]] for m in members])
    assert torch.allclose(first, group_advantages(returns, torch.arange(len(members)) // 2))
    assert first.abs().max() > 0
    assert sorted(len(m) for m in members) == sorted(trainer.ep_lengths)


def test_step_rollouts_cut_sequences_at_episode_ends_and_rollout_edges():
    torch.set_num_threads(1)
    trainer = PPOTrainer(make_vector_env("CartPole-v1", 2), {"n_steps": 64}, sinks=[])
    batch = trainer.collect_rollouts()
    assert batch.obs.shape[0] == 128 and trainer.num_timesteps == 128
    starts = batch.seq_pos == 0
    assert bool(starts[0]) and bool(starts[64])  # each env's block starts a sequence
    # every finished episode starts a new sequence unless it ended on its block's last step
    finished = len(trainer.ep_returns)
    assert int(starts.sum()) == batch.n_sequences
    assert finished <= batch.n_sequences <= 2 + finished
    assert torch.equal(batch.seq_id, torch.cumsum(starts.long(), 0) - 1)
