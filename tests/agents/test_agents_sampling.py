"""Optimal sampling: KL symmetry by bisection, uniqueness, Pareto dominance, ESS gap."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hadmc.agents.sampling import (
    EliteTarget,
    criterion_gap,
    criterion_residual,
    ess,
    geometric_family_log,
    kl_divergence_log,
    optimal_sampling,
    optimal_sampling_log,
)
from hadmc.errors import ConfigError


def _random_pair(batch: int, vocab: int, seed: int, scale: float = 1.5):
    g = torch.Generator().manual_seed(seed)
    a = torch.softmax(torch.randn(batch, vocab, generator=g, dtype=torch.float64) * scale, -1)
    b = torch.softmax(torch.randn(batch, vocab, generator=g, dtype=torch.float64) * scale, -1)
    return a, b


@pytest.mark.parametrize("vocab", [10, 100, 1000, 10000])
def test_kl_symmetry_residual_below_1e_6_for_random_batches(vocab):
    p_theta, p_target = _random_pair(16, vocab, seed=vocab)
    q, a = optimal_sampling(p_theta, p_target, "kl")
    lq = q.log()
    res = kl_divergence_log(lq, p_theta.log()) - kl_divergence_log(lq, p_target.log())
    assert res.abs().max() < 1e-6
    assert ((a > 0) & (a < 1)).all()
    assert torch.allclose(q.sum(-1), torch.ones(16, dtype=torch.float64))


def test_a_star_is_unique_the_residual_is_strictly_decreasing_in_a():
    p_theta, p_target = _random_pair(8, 50, seed=3)
    grid = torch.linspace(0, 1, 401, dtype=torch.float64)
    lt, lg = p_theta.log(), p_target.log()
    res = torch.stack([criterion_residual(lt, lg, torch.full((8,), float(x), dtype=torch.float64), "kl") for x in grid], 1)
    assert (res[:, 1:] < res[:, :-1]).all()  # d/da E_q[log pt/ptheta] = -Var_q < 0
    _, a = optimal_sampling(p_theta, p_target)
    crossing = (res > 0).sum(1).double() / 400  # the grid point where the sign flips
    assert (a - crossing).abs().max() <= 1 / 400 + 1e-12


def test_every_random_q_is_weakly_pareto_dominated_by_the_geometric_family():
    p_theta, p_target = _random_pair(1, 12, seed=5)
    lt, lg = p_theta.log(), p_target.log()
    grid = torch.linspace(0, 1, 2001, dtype=torch.float64)
    fam = geometric_family_log(lt.expand(len(grid), -1), lg.expand(len(grid), -1), grid)
    kl_t = kl_divergence_log(fam, lt)
    kl_g = kl_divergence_log(fam, lg)
    g = torch.Generator().manual_seed(11)
    for _ in range(300):
        q = torch.softmax(torch.randn(12, generator=g, dtype=torch.float64) * float(torch.rand(1, generator=g) * 3), -1)
        lq = q.log()
        kq_t, kq_g = kl_divergence_log(lq, lt[0]), kl_divergence_log(lq, lg[0])
        dominated = (kl_t <= kq_t + 1e-9) & (kl_g <= kq_g + 1e-9)
        assert bool(dominated.any())


def test_ess_balance_is_exact_and_the_gap_to_kl_symmetry_is_reported(record_property):
    p_theta, p_target = _random_pair(32, 200, seed=7)
    q, a_ess = optimal_sampling(p_theta, p_target, "ess")
    assert (ess(p_theta, q) / ess(p_target, q) - 1).abs().max() < 1e-6
    gap = criterion_gap(p_theta, p_target)
    assert torch.isfinite(gap).all()
    record_property("a_kl_minus_a_ess_mean_abs", float(gap.abs().mean()))
    record_property("a_kl_minus_a_ess_max_abs", float(gap.abs().max()))
    # they are different criteria: log ESS ≈ -KL only approximately
    assert float(gap.abs().max()) > 1e-6


def test_masked_options_stay_impossible_in_q_and_bad_input_is_refused():
    lt = torch.log_softmax(torch.tensor([[0.0, 1.0, -float("inf"), 2.0]], dtype=torch.float64), -1)
    lg = torch.log_softmax(torch.tensor([[1.0, 0.0, 0.0, -1.0]], dtype=torch.float64), -1)
    log_q, a = optimal_sampling_log(lt, lg)
    assert log_q[0, 2] == -float("inf") and torch.isfinite(log_q[0, [0, 1, 3]]).all()
    with pytest.raises(ConfigError, match="criterion"):
        optimal_sampling(lt.exp(), lg.exp(), "tv")
    with pytest.raises(ConfigError, match="shape"):
        optimal_sampling(torch.ones(2, 3) / 3, torch.ones(2, 4) / 4)


def test_elite_target_concentrates_on_the_best_episodes_actions():
    elite = EliteTarget({"pruning": 4}, n_elite=2, smoothing=0.1)
    elite.observe(1.0, {"pruning": np.array([0, 0])})
    elite.observe(5.0, {"pruning": np.array([3, 1])})
    elite.observe(4.0, {"pruning": np.array([3, 2])})
    probs = elite.log_probs("pruning", np.array([0, 1])).exp()
    assert probs[0].argmax() == 3 and probs[0, 3] > 0.8
    assert probs[1, 1] == pytest.approx(probs[1, 2]) and probs[1, 0] < 0.1
