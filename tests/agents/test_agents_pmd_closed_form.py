"""PMD losses on a tabular bandit vs the closed forms of the PMD-mean paper.

Full action space, population expectation under pi_t, softmax logits optimised with the
loss (L-BFGS, float64) to convergence. Tolerances: 1e-6 on probabilities (the optimiser
reaches gradient norms near 1e-12; the Lambert-W normaliser is solved by brentq to 1e-14).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import lambertw

from hadmc.agents.advantages import ploo_advantages
from hadmc.agents.losses import pmd_loss

PROB_TOL = 1e-6


def _bandit(seed: int, k: int = 7):
    rng = np.random.default_rng(seed)
    pi_t = rng.dirichlet(np.ones(k))
    r = rng.uniform(0.0, 1.0, k)
    return pi_t, r


def _minimise(pi_t: np.ndarray, target_adv: np.ndarray, tau: float) -> np.ndarray:
    """argmin over softmax(theta) of E_{y~pi_t}[pmd_loss(log pi/pi_t, A_y)] (one factor per action)."""
    log_pt = torch.tensor(np.log(pi_t), dtype=torch.float64)
    w = torch.tensor(pi_t, dtype=torch.float64)
    adv = torch.tensor(target_adv, dtype=torch.float64)
    theta = log_pt.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe")
    mask = torch.ones(len(pi_t), 1, dtype=torch.bool)

    def closure():
        opt.zero_grad()
        l = (torch.log_softmax(theta, 0) - log_pt).unsqueeze(-1)
        loss = (w * pmd_loss(l, mask, adv, tau)).sum()
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return torch.softmax(theta, 0).detach().numpy()


def _lambert_solution(pi_t: np.ndarray, r: np.ndarray, tau: float) -> tuple[np.ndarray, float]:
    delta = r - pi_t @ r

    def pi_of(lam: float) -> np.ndarray:
        return pi_t * np.exp(delta / tau - lambertw(lam / tau**2 * np.exp(delta / tau)).real)

    A = pi_t @ np.exp(delta / tau)
    B = pi_t @ np.exp(2 * delta / tau)
    lo, hi = tau**2 * A * (A - 1) / B, tau**2 * np.log(A)  # Theorem 3.1's bracket (6)
    lam = brentq(lambda x: pi_of(x).sum() - 1.0, lo * 0.5, hi * 2 + 1e-12, xtol=1e-14)
    return pi_of(lam), lam


@pytest.mark.parametrize("seed,tau", [(0, 0.1), (1, 0.3), (2, 1.0), (3, 3.0)])
def test_pmd_mean_minimiser_is_the_lambert_w_solution_of_theorem_3_1(seed, tau):
    pi_t, r = _bandit(seed)
    delta = r - pi_t @ r  # mean-baseline advantage
    got = _minimise(pi_t, delta, tau)
    want, lam = _lambert_solution(pi_t, r, tau)
    assert abs(want.sum() - 1) < 1e-12
    assert np.abs(got - want).max() < PROB_TOL
    A = pi_t @ np.exp(delta / tau)
    B = pi_t @ np.exp(2 * delta / tau)
    assert tau**2 * A * (A - 1) / B - 1e-12 <= lam <= tau**2 * np.log(A) + 1e-12


@pytest.mark.parametrize("seed,tau", [(4, 0.2), (5, 1.0)])
def test_pmd_mean_minimiser_solves_the_mixed_kl_chi2_problem_of_prop_3_2(seed, tau):
    pi_t, r = _bandit(seed)
    got = _minimise(pi_t, r - pi_t @ r, tau)
    _, lam = _lambert_solution(pi_t, r, tau)
    # KKT of max E_pi r - tau KL(pi||pi_t) - lam/(2 tau) chi2(pi||pi_t): the gradient in pi is constant
    ratio = got / pi_t
    grad = r - tau * (np.log(ratio) + 1) - lam / tau * ratio
    assert grad.std() < 1e-6
    # and it is the maximiser: solve the mixed problem directly and compare
    log_pt = torch.tensor(np.log(pi_t))
    rt, pt = torch.tensor(r), torch.tensor(pi_t)
    theta = log_pt.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        lp = torch.log_softmax(theta, 0)
        p = lp.exp()
        obj = (p * rt).sum() - tau * (p * (lp - log_pt)).sum() - lam / (2 * tau) * ((p * p / pt).sum() - 1)
        (-obj).backward()
        return -obj

    for _ in range(5):
        opt.step(closure)
    assert np.abs(torch.softmax(theta, 0).detach().numpy() - got).max() < PROB_TOL


@pytest.mark.parametrize("seed,tau", [(6, 0.1), (7, 0.5), (8, 2.0)])
def test_pmd_part_minimiser_is_the_boltzmann_update(seed, tau):
    pi_t, r = _bandit(seed)
    log_z = np.log(pi_t @ np.exp(r / tau))
    got = _minimise(pi_t, r - tau * log_z, tau)  # A_part / tau = r/tau - log Z
    want = pi_t * np.exp(r / tau) / np.exp(log_z)
    assert np.abs(got - want).max() < PROB_TOL


def test_ploo_advantage_is_stable_for_large_rewards_over_tau():
    r = torch.tensor([1000.0, 999.0, 0.0, 500.0], dtype=torch.float64)
    g = torch.zeros(4, dtype=torch.long)
    tau = 0.5
    got = ploo_advantages(r, g, tau)
    assert torch.isfinite(got).all()
    # reference: log-mean-exp over the others, one row at a time
    for i in range(4):
        others = torch.cat([r[:i], r[i + 1:]]) / tau
        ref = r[i] - tau * (torch.logsumexp(others, 0) - np.log(3))
        assert float(got[i]) == pytest.approx(float(ref), rel=1e-12)
    # others of r_0 are {1998, 0, 1000} after /tau: log-mean-exp = 1998 - log 3 up to e^-998
    assert float(got[0]) == pytest.approx(1000.0 - tau * (1998.0 - np.log(3.0)), rel=1e-12)
