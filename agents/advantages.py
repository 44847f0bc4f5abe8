"""Advantage estimators, registered by name: gae, group (GRPO), loo (RLOO), ploo (PMD-part).

Every estimator has one signature: ``fn(trajectories, settings) -> (advantages, value
targets)``, both ``[T, C]`` over a time-major rollout (``Trajectories``). Step estimators
(``gae``) read it as ``n_steps`` per env; episode estimators need whole episodes, one per
column, grouped by context, and give each episode one advantage.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from hadmc.errors import ConfigError
from hadmc.registry import Registry

Tensor = torch.Tensor


def gae(
    rewards: Tensor,
    values: Tensor,
    terminated: Tensor,
    truncated: Tensor,
    last_values: Tensor,
    final_values: Tensor | None = None,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over a [T, E] rollout, bootstrapping timeouts.

    delta_t = r_t + gamma * V_next * (1 - done_t) + gamma * V(final_obs_t) * trunc_t - V_t and
    A_t = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}; a truncated (timed-out, not
    terminated) step bootstraps from the value of its final observation.

    :param rewards: [T, E]
    :param values: [T, E] V(s_t)
    :param terminated: [T, E] bool, true terminal states (no bootstrap)
    :param truncated: [T, E] bool, time limits (bootstrap from ``final_values``)
    :param last_values: [E] V of the observation after the last step
    :param final_values: [T, E] V(final_obs) where truncated (ignored elsewhere); None: 0
    :param gamma: discount factor
    :param gae_lambda: bias/variance trade-off of GAE
    :return: (advantages, returns = advantages + values), both [T, E]
    """
    T = rewards.shape[0]
    done = (terminated | truncated).to(rewards.dtype)
    trunc_only = (truncated & ~terminated).to(rewards.dtype)
    boot = rewards if final_values is None else rewards + gamma * final_values * trunc_only
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(last_values)
    for t in reversed(range(T)):
        next_v = last_values if t == T - 1 else values[t + 1]
        not_done = 1.0 - done[t]
        delta = boot[t] + gamma * next_v * not_done - values[t]
        last = delta + gamma * gae_lambda * not_done * last
        adv[t] = last
    return adv, adv + values


def _check_groups(returns: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor, int]:
    if returns.dim() != 1 or group_ids.shape != returns.shape:
        raise ConfigError(f"group advantages need 1-d returns and group ids of the same shape, got {tuple(returns.shape)} and {tuple(group_ids.shape)}")
    uniq, inv = torch.unique(group_ids, return_inverse=True)
    return uniq, inv, int(uniq.numel())


def _group_sum(x: Tensor, inv: Tensor, n: int) -> Tensor:
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, inv, x)


def _offsets_from_group_min(returns: Tensor, inv: Tensor, n: int) -> Tensor:
    """R_i - min_g R: every estimator here is shift-invariant per group, and the offsets are
    exact for close returns (Sterbenz), so a group of equal returns gives exact zeros and
    rounding in a group mean stays small next to the group's spread."""
    lowest = torch.full((n,), math.inf, dtype=returns.dtype, device=returns.device)
    lowest = lowest.scatter_reduce(0, inv, returns, reduce="amin")
    return returns - lowest[inv]


def group_advantages(returns: Tensor, group_ids: Tensor, eps: float = 1e-8) -> Tensor:
    """GRPO: A_i = (R_i - mean_g R) / (std_g R + eps) within each group g (unbiased std).

    :param returns: [M] one return per episode
    :param group_ids: [M] which context (group) each episode belongs to
    :param eps: keeps groups with equal returns finite (their advantages are exactly 0)
    """
    _, inv, n = _check_groups(returns, group_ids)
    x = _offsets_from_group_min(returns, inv, n)
    count = _group_sum(torch.ones_like(x), inv, n)
    mean = _group_sum(x, inv, n) / count
    dev = x - mean[inv]
    var = _group_sum(dev * dev, inv, n) / (count - 1).clamp_min(1)
    return dev / (var.sqrt()[inv] + eps)


def group_sums(advantages: Tensor, group_ids: Tensor) -> Tensor:
    """sum of the advantages within each group (GRPO's zero-sum property), one per group."""
    _, inv, n = _check_groups(advantages, group_ids)
    return _group_sum(advantages, inv, n)


def groups_sum_to_zero(advantages: Tensor, group_ids: Tensor, atol: float = 1e-4) -> bool:
    """True when every group's advantages sum to 0 within ``atol``."""
    return bool(group_sums(advantages, group_ids).abs().max() <= atol)


def loo_advantages(returns: Tensor, group_ids: Tensor) -> Tensor:
    """RLOO: A_i = R_i - mean_{j != i, same group} R_j (0 for a group of one)."""
    _, inv, n = _check_groups(returns, group_ids)
    x = _offsets_from_group_min(returns, inv, n)
    count = _group_sum(torch.ones_like(x), inv, n)[inv]
    total = _group_sum(x, inv, n)[inv]
    others = (total - x) / (count - 1).clamp_min(1)
    return torch.where(count > 1, x - others, torch.zeros_like(x))


def ploo_advantages(returns: Tensor, group_ids: Tensor, tau: float = 1.0) -> Tensor:
    """PMD-part: A_i = R_i - tau * log(1/(n-1) sum_{j != i} exp(R_j / tau)), max-subtracted.

    :param returns: [M]
    :param group_ids: [M]
    :param tau: the PMD temperature (A / tau is the target log-ratio)
    """
    if tau <= 0:
        raise ConfigError(f"ploo tau must be > 0, got {tau}")
    _, inv, n = _check_groups(returns, group_ids)
    shifted = _offsets_from_group_min(returns, inv, n)
    x = shifted / tau
    out = torch.zeros_like(returns)
    for g in range(n):
        idx = (inv == g).nonzero(as_tuple=True)[0]
        k = idx.numel()
        if k < 2:
            continue
        xg = x[idx]
        # row i: log-mean-exp over the others (diagonal masked), max subtracted inside logsumexp
        others = xg.unsqueeze(0).expand(k, k).masked_fill(torch.eye(k, dtype=torch.bool, device=x.device), -math.inf)
        lme = torch.logsumexp(others, dim=1) - torch.log(torch.tensor(k - 1.0, dtype=x.dtype, device=x.device))
        out[idx] = shifted[idx] - tau * lme
    return out


@dataclass(frozen=True)
class Trajectories:
    """A rollout's rewards, time-major: ``[T, C]``, one column per env or per episode.

    Episode columns are padded after their end with zero rewards; their last real step is
    terminated or truncated, so nothing flows back from the padding.
    """

    rewards: Tensor  # [T, C]
    values: Tensor  # [T, C] V(s_t)
    terminated: Tensor  # [T, C] bool
    truncated: Tensor  # [T, C] bool
    last_values: Tensor  # [C] V of the observation after the last step
    final_values: Tensor | None = None  # [T, C] V(final obs) where truncated
    group_ids: Tensor | None = None  # [C] the context of each episode column

    def episode_returns(self) -> Tensor:
        """[C] the undiscounted return of each (episode) column."""
        return self.rewards.sum(0)

    def discounted_returns(self, gamma: float) -> Tensor:
        """R_t = r_t + gamma * R_{t+1} within each episode, [T, C]."""
        not_done = 1.0 - (self.terminated | self.truncated).to(self.rewards.dtype)
        out = torch.zeros_like(self.rewards)
        running = torch.zeros_like(self.rewards[0])
        for t in reversed(range(self.rewards.shape[0])):
            running = self.rewards[t] + gamma * running * not_done[t]
            out[t] = running
        return out


@dataclass(frozen=True)
class AdvantageSettings:
    """:param gamma: discount :param gae_lambda: GAE lambda :param tau: the PMD temperature"""

    gamma: float = 0.99
    gae_lambda: float = 0.95
    tau: float = 1.0


@dataclass(frozen=True)
class AdvantageEstimator:
    """A registered estimator and whether it needs whole episodes grouped by context."""

    fn: Callable[[Trajectories, AdvantageSettings], tuple[Tensor, Tensor]]
    whole_episodes: bool

    def __call__(self, trajectories: Trajectories, settings: AdvantageSettings) -> tuple[Tensor, Tensor]:
        return self.fn(trajectories, settings)


ADVANTAGE_ESTIMATORS: Registry[AdvantageEstimator] = Registry("advantage estimator", ConfigError)


def register_advantage(name: str, *, whole_episodes: bool) -> Callable[[Callable[..., tuple[Tensor, Tensor]]], Callable[..., tuple[Tensor, Tensor]]]:
    """Decorator: register ``fn(trajectories, settings) -> (advantages, value targets)``."""

    def register(fn: Callable[..., tuple[Tensor, Tensor]]) -> Callable[..., tuple[Tensor, Tensor]]:
        ADVANTAGE_ESTIMATORS.add(name, AdvantageEstimator(fn, whole_episodes))
        return fn

    return register


@register_advantage("gae", whole_episodes=False)
def gae_estimator(tr: Trajectories, s: AdvantageSettings) -> tuple[Tensor, Tensor]:
    """GAE(gamma, lambda) from the critic; value targets A + V (TD(lambda) returns)."""
    return gae(tr.rewards, tr.values, tr.terminated, tr.truncated, tr.last_values, tr.final_values, s.gamma, s.gae_lambda)


def _per_episode(tr: Trajectories, s: AdvantageSettings, adv: Tensor) -> tuple[Tensor, Tensor]:
    # every step carries its episode's advantage; the (diagnostic) critic fits returns-to-go
    return adv.expand_as(tr.rewards), tr.discounted_returns(s.gamma)


def _groups(tr: Trajectories) -> Tensor:
    if tr.group_ids is None:
        raise ConfigError("episode advantages need the group (context) of each episode column")
    return tr.group_ids


@register_advantage("group", whole_episodes=True)
def group_estimator(tr: Trajectories, s: AdvantageSettings) -> tuple[Tensor, Tensor]:
    """GRPO: (R - mean_g R) / (std_g R + eps)."""
    return _per_episode(tr, s, group_advantages(tr.episode_returns(), _groups(tr)))


@register_advantage("loo", whole_episodes=True)
def loo_estimator(tr: Trajectories, s: AdvantageSettings) -> tuple[Tensor, Tensor]:
    """RLOO: R - mean of the other episodes of the group."""
    return _per_episode(tr, s, loo_advantages(tr.episode_returns(), _groups(tr)))


@register_advantage("ploo", whole_episodes=True)
def ploo_estimator(tr: Trajectories, s: AdvantageSettings) -> tuple[Tensor, Tensor]:
    """PMD-part: R - tau * log-mean-exp of the others' R / tau."""
    return _per_episode(tr, s, ploo_advantages(tr.episode_returns(), _groups(tr), s.tau))


def episode_advantages(name: str, returns: Tensor, group_ids: Tensor, tau: float = 1.0) -> Tensor:
    """One advantage per episode from its return, by the episode estimator ``name``."""
    estimator = ADVANTAGE_ESTIMATORS.get(name)
    if not estimator.whole_episodes:
        episodic = [n for n in ADVANTAGE_ESTIMATORS if ADVANTAGE_ESTIMATORS.get(n).whole_episodes]
        raise ConfigError(f"{name!r} is not an episode advantage estimator; valid: {', '.join(episodic)}")
    ends = torch.ones(1, returns.numel(), dtype=torch.bool)
    zeros = torch.zeros(returns.numel(), dtype=returns.dtype)
    one_step = Trajectories(returns.unsqueeze(0), zeros.unsqueeze(0), ends, ~ends, zeros, group_ids=group_ids)
    return estimator(one_step, AdvantageSettings(tau=tau))[0][0]
