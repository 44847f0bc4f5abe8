"""Advantage estimators: GAE with timeout bootstrapping, GRPO groups, RLOO."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hadmc.agents.advantages import (
    episode_advantages,
    gae,
    group_advantages,
    group_sums,
    groups_sum_to_zero,
    loo_advantages,
)
from hadmc.errors import ConfigError


def test_gae_matches_hand_computation_and_bootstraps_timeouts_only():
    gamma, lam = 0.9, 0.8
    rew = torch.tensor([[1.0], [1.0], [1.0]])
    val = torch.tensor([[0.5], [0.4], [0.3]])
    term = torch.tensor([[False], [False], [False]])
    trunc = torch.tensor([[False], [True], [False]])
    last = torch.tensor([0.2])
    final = torch.tensor([[0.0], [2.0], [0.0]])
    adv, ret = gae(rew, val, term, trunc, last, final, gamma, lam)
    d2 = 1 + gamma * 0.2 - 0.3
    d1 = 1 + gamma * 2.0 - 0.4  # timeout: bootstrap V(final_obs), no carry-over
    d0 = 1 + gamma * 0.4 - 0.5
    assert torch.allclose(adv[:, 0], torch.tensor([d0 + gamma * lam * d1, d1, d2]))
    assert torch.allclose(ret, adv + val)
    # a true terminal step does not bootstrap even if final values are given
    adv_t, _ = gae(rew, val, trunc, trunc, last, final, gamma, lam)
    assert float(adv_t[1, 0]) == pytest.approx(1 - 0.4)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-100, 100), min_size=2, max_size=40), st.integers(1, 5))
@example([85.37, 85.37, 85.37], 1)
def test_group_advantages_sum_to_zero_per_group(rets, n_groups):
    r = torch.tensor(rets, dtype=torch.float64)
    g = torch.arange(len(rets)) % n_groups
    adv = group_advantages(r, g)
    assert groups_sum_to_zero(adv, g, atol=1e-6)
    assert group_sums(adv, g).shape == (int(g.unique().numel()),)


def test_group_advantages_are_standardised_within_groups():
    r = torch.tensor([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    g = torch.tensor([0, 0, 0, 1, 1, 1])
    adv = group_advantages(r, g)
    assert torch.allclose(adv[:3], torch.tensor([-1.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(adv[3:], torch.zeros(3))


def test_loo_uses_the_mean_of_the_other_episodes():
    r = torch.tensor([1.0, 2.0, 6.0, 5.0])
    g = torch.tensor([0, 0, 0, 1])
    adv = loo_advantages(r, g)
    assert torch.allclose(adv, torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5, 0.0]))
    assert torch.allclose(episode_advantages("loo", r, g), adv)
    with pytest.raises(ConfigError, match="group, loo, ploo"):
        episode_advantages("vtrace", r, g)


def test_a_group_whose_returns_are_all_equal_gets_exactly_zero_advantages():
    # float error in the group mean used to be divided by eps: [85.37] * 3 gave -1.4e-6 each,
    # [0.1] * 8 in float32 gave -0.41 each
    for dtype in (torch.float32, torch.float64):
        for value, n in ((85.37, 3), (0.1, 8), (3.3, 16), (-97.13, 5)):
            r = torch.tensor([value] * n + [1.0, 2.0], dtype=dtype)
            g = torch.tensor([0] * n + [1, 1])
            for name in ("group", "loo", "ploo"):
                adv = episode_advantages(name, r, g)
                assert torch.equal(adv[:n], torch.zeros(n, dtype=dtype)), (name, dtype, value, adv)


@settings(max_examples=200, deadline=None)
@given(st.floats(-100, 100), st.lists(st.integers(-3, 3), min_size=2, max_size=12))
def test_group_advantages_of_nearly_equal_returns_still_sum_to_zero(base, ulps):
    # returns a few ulps apart: the spread is tiny, so the mean's rounding must not dominate
    r = torch.tensor([base] * len(ulps), dtype=torch.float64)
    r = torch.tensor([math.ulp(base) * u for u in ulps], dtype=torch.float64) + r
    g = torch.zeros(len(ulps), dtype=torch.long)
    adv = group_advantages(r, g)
    assert torch.isfinite(adv).all()
    assert groups_sum_to_zero(adv, g, atol=1e-6)
