"""PPOConfig: every accepted combination of options works as named; the others are refused."""

from __future__ import annotations

import pytest

from hadmc.agents import PPOConfig
from hadmc.errors import ConfigError


def test_adaptive_mean_at_sequence_level_with_per_step_gae_advantages_is_refused():
    # adaptive_mean switches to power ratios, which at sequence level need one advantage per
    # episode; per-step GAE advantages [1, -2, 3, -4] used to become -4 for the whole episode
    with pytest.raises(ConfigError, match="adaptive_mean.*advantage group, loo or ploo"):
        PPOConfig.build(adaptive_mean=True, aggregation="sequence")
    assert PPOConfig.build(adaptive_mean=True, aggregation="sequence", advantage="group").adaptive_mean
    assert PPOConfig.build(adaptive_mean=True).aggregation == "step"


@pytest.mark.parametrize("loss,advantage", [("pmd-mean", "loo"), ("pmd-part", "ploo")])
def test_pmd_losses_regress_the_whole_episode_log_ratio_by_default(loss, advantage):
    # at step level each step's log-ratio was fit to A/tau, so the episode's reached T * A/tau
    cfg = PPOConfig.build(loss=loss, advantage=advantage)
    assert cfg.aggregation == "sequence"
    with pytest.raises(ConfigError, match="aggregation.*sequence"):
        PPOConfig.build(loss=loss, advantage=advantage, aggregation="step")
    assert PPOConfig.build().aggregation == "step"  # ppo-clip keeps SB3's per-step ratios


@pytest.mark.parametrize("options", [
    {"learn_p": True},
    {"learn_p": True, "ratio_mode": "joint"},
    {"p_schedule": "linear", "p_start": 2.0, "p_end": -2.0},
    {"p_schedule": "linear", "ratio_mode": "harmonic"},
    {"learn_p": True, "ratio_mode": "power", "adaptive_mean": True},
], ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_a_p_that_never_enters_the_loss_is_refused(options):
    # learn_p with ratio mode token built an optimiser for p and logged train/p, yet p was unused
    with pytest.raises(ConfigError, match="p_schedule|learn_p"):
        PPOConfig.build(**options)
    assert PPOConfig.build(ratio_mode="power", learn_p=True, p_start=0.5).learn_p


@pytest.mark.parametrize("options", [
    {"ratio_mode": "harmonic"}, {"stop_gradient": True}, {"log_space_clip": True}, {"dual_clip": 3.0},
    {"adaptive_mean": True},
], ids=lambda o: next(iter(o)))
def test_ratio_options_that_pmd_losses_ignore_are_refused(options):
    with pytest.raises(ConfigError, match="pmd-mean"):
        PPOConfig.build(loss="pmd-mean", advantage="loo", **options)
