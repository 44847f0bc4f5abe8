"""Optimal sampling distribution between the current policy and a target, and its rollout use.

q_a ∝ p_theta^a * p_target^(1-a) (the geometric family, the Pareto front of the two KLs
KL(q||p_theta), KL(q||p_target)); a* by batched bisection on

- ``kl``: KL symmetry KL(q||p_theta) = KL(q||p_target), i.e. E_q[log p_target/p_theta] = 0;
- ``ess``: exact ESS balance sum p_theta^2/q = sum p_target^2/q (ESS = 1/(1 + chi^2)).

The seed's "log ESS ≈ -KL" makes the two the same only approximately; ``criterion_gap``
measures the difference instead of hiding it.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hadmc.errors import ConfigError
from hadmc.registry import Registry

Tensor = torch.Tensor


def _support(log_theta: Tensor, log_target: Tensor) -> Tensor:
    return torch.isfinite(log_theta) & torch.isfinite(log_target)


def geometric_family_log(log_theta: Tensor, log_target: Tensor, a: Tensor) -> Tensor:
    """log q_a = a log p_theta + (1-a) log p_target - log Z_a, on the common support."""
    sup = _support(log_theta, log_target)
    a = a.unsqueeze(-1)
    mix = torch.where(sup, a * log_theta + (1.0 - a) * log_target, torch.full_like(log_theta, -math.inf))
    return mix - torch.logsumexp(mix, -1, keepdim=True)


def kl_divergence_log(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q || p) = sum q (log q - log p) over q's support."""
    q = log_q.exp()
    terms = torch.where(q > 0, q * (log_q - log_p), torch.zeros_like(q))
    return terms.sum(-1)


# A criterion for a*: (log p_theta, log p_target, a) -> residual, decreasing in a, 0 at a*
SAMPLING_CRITERIA: Registry[Callable[[Tensor, Tensor, Tensor], Tensor]] = Registry("sampling criterion", ConfigError)


@SAMPLING_CRITERIA.register("kl")
def _kl_residual(log_theta: Tensor, log_target: Tensor, a: Tensor) -> Tensor:
    # KL(q||theta) - KL(q||target) = E_q[log target - log theta]; decreasing in a (derivative -Var_q)
    log_q = geometric_family_log(log_theta, log_target, a)
    q = log_q.exp()
    ell = torch.where(q > 0, log_target - log_theta, torch.zeros_like(q))
    return (q * ell).sum(-1)


@SAMPLING_CRITERIA.register("ess")
def _ess_residual(log_theta: Tensor, log_target: Tensor, a: Tensor) -> Tensor:
    # log sum theta^2/q - log sum target^2/q: > 0 at a = 0, < 0 at a = 1
    log_q = geometric_family_log(log_theta, log_target, a)
    sup = torch.isfinite(log_q)
    neg = torch.full_like(log_q, -math.inf)
    lt = torch.logsumexp(torch.where(sup, 2 * log_theta - log_q, neg), -1)
    lg = torch.logsumexp(torch.where(sup, 2 * log_target - log_q, neg), -1)
    return lt - lg


def criterion_residual(log_theta: Tensor, log_target: Tensor, a: Tensor, criterion: str = "kl") -> Tensor:
    """The balance residual of ``criterion`` at ``a`` (0 at a*): KL or log-ESS difference."""
    return SAMPLING_CRITERIA.get(criterion)(log_theta, log_target, a)


def optimal_sampling_log(
    log_theta: Tensor, log_target: Tensor, criterion: str = "kl", tol: float = 1e-6, max_iter: int = 200
) -> tuple[Tensor, Tensor]:
    """Batched a* and log q* from log-probabilities [..., V] (``-inf`` for impossible options).

    Bisection in float64 until the bracket is below ``tol`` and the residual below ``tol`` (or
    the bracket reaches machine precision). Rows where the two distributions coincide get a = 0.5.

    :return: (log q* [..., V] in the input dtype, a* [...] float64)
    """
    if log_theta.shape != log_target.shape:
        raise ConfigError(f"optimal_sampling needs two distributions of one shape, got {tuple(log_theta.shape)} and {tuple(log_target.shape)}")
    if not _support(log_theta, log_target).any(-1).all():
        raise ConfigError("optimal_sampling: some row has no option that both distributions allow; their supports must overlap")
    lt = log_theta.detach().double()
    lg = log_target.detach().double()
    # renormalise so callers may pass unnormalised log-weights
    lt = lt - torch.logsumexp(lt, -1, keepdim=True)
    lg = lg - torch.logsumexp(lg, -1, keepdim=True)
    batch = lt.shape[:-1]
    lo = torch.zeros(batch, dtype=torch.float64)
    hi = torch.ones(batch, dtype=torch.float64)
    res_fn = SAMPLING_CRITERIA.get(criterion)
    mid = 0.5 * (lo + hi)
    for _ in range(max_iter):
        mid = 0.5 * (lo + hi)
        res = res_fn(lt, lg, mid)
        if bool((hi - lo).max() < tol) and bool(res.abs().max() < tol):
            break
        if bool((hi - lo).max() < 1e-15):
            break
        go_up = res > 0  # residual decreases in a: positive means a* lies above mid
        lo = torch.where(go_up, mid, lo)
        hi = torch.where(go_up, hi, mid)
    same = (lt - lg).abs().where(_support(lt, lg), torch.zeros_like(lt)).amax(-1) < 1e-12
    a = torch.where(same, torch.full_like(mid, 0.5), mid)
    log_q = geometric_family_log(lt, lg, a).to(log_theta.dtype)
    return log_q, a


def optimal_sampling(
    p_theta: Tensor, p_target: Tensor, criterion: str = "kl", tol: float = 1e-6, max_iter: int = 200
) -> tuple[Tensor, Tensor]:
    """q* ∝ p_theta^a* p_target^(1-a*) for batched categorical distributions.

    :param p_theta: [..., V] current policy probabilities
    :param p_target: [..., V] target probabilities
    :param criterion: ``kl`` (KL symmetry) or ``ess`` (exact ESS balance)
    :param tol: bisection tolerance on a and on the residual
    :param max_iter: iteration cap
    :return: (q [..., V], a [...])
    """
    if (p_theta < 0).any() or (p_target < 0).any():
        raise ConfigError("optimal_sampling takes probabilities (non-negative); pass log-probabilities to optimal_sampling_log")
    log_q, a = optimal_sampling_log(p_theta.log(), p_target.log(), criterion, tol, max_iter)
    return log_q.exp(), a


def criterion_gap(p_theta: Tensor, p_target: Tensor, tol: float = 1e-9) -> Tensor:
    """a*_kl - a*_ess per row: how far the KL-symmetric point is from exact ESS balance."""
    _, a_kl = optimal_sampling(p_theta, p_target, "kl", tol)
    _, a_ess = optimal_sampling(p_theta, p_target, "ess", tol)
    return a_kl - a_ess


def ess(p: Tensor, q: Tensor) -> Tensor:
    """Normalised effective sample size of importance sampling p from q: 1 / sum p^2/q."""
    return 1.0 / torch.where(q > 0, p * p / q, torch.zeros_like(q)).sum(-1)


# ---------------------------------------------------------------------------------------
# behaviour targets for rollouts
# ---------------------------------------------------------------------------------------


class EliteTarget:
    """Target distribution from the best episodes so far (cross-entropy-method style).

    Per (step index within the episode, categorical head) it counts the options chosen in
    the ``n_elite`` highest-return episodes seen, with add-``smoothing`` counts, so the target
    keeps full support and the sampling ratios stay finite.

    :param head_sizes: option count per categorical head, by name
    :param n_elite: how many best episodes define the target
    :param smoothing: pseudo-count per option
    """

    def __init__(self, head_sizes: dict[str, int], n_elite: int = 16, smoothing: float = 1.0) -> None:
        if n_elite < 1 or smoothing <= 0:
            raise ConfigError(f"EliteTarget needs n_elite >= 1 and smoothing > 0, got {n_elite}, {smoothing}")
        self.head_sizes = dict(head_sizes)
        self.n_elite = n_elite
        self.smoothing = smoothing
        self._elite: list[tuple[float, dict[str, np.ndarray]]] = []

    @classmethod
    def for_heads(cls, heads: Sequence[Any], n_elite: int = 16) -> "EliteTarget":
        """A target over the categorical ones of a policy's heads (``HeadSpec``s)."""
        sizes = {h.name: h.size for h in heads if h.kind == "categorical"}
        if not sizes:
            raise ConfigError("behaviour 'optimal-elite' needs at least one categorical head")
        return cls(sizes, n_elite)

    @property
    def ready(self) -> bool:
        return bool(self._elite)

    def observe(self, episode_return: float, actions: dict[str, np.ndarray]) -> None:
        """Offer one finished episode: its return and its per-step actions per head ([T] ints)."""
        self._elite.append((float(episode_return), {k: np.asarray(v) for k, v in actions.items() if k in self.head_sizes}))
        self._elite.sort(key=lambda x: -x[0])
        del self._elite[self.n_elite:]

    def state_dict(self) -> list[tuple[float, dict[str, list[int]]]]:
        """The elite episodes as plain lists (for weights-only checkpoints)."""
        return [(r, {k: v.tolist() for k, v in acts.items()}) for r, acts in self._elite]

    def load_state_dict(self, state: list[tuple[float, dict[str, list[int]]]]) -> None:
        """Restore what ``state_dict`` returned."""
        self._elite = [(float(r), {k: np.asarray(v) for k, v in acts.items()}) for r, acts in state]

    def log_probs(self, head: str, step_index: np.ndarray) -> Tensor:
        """log target [len(step_index), n_options] of ``head`` at the given step indices."""
        n = self.head_sizes[head]
        counts = np.full((len(step_index), n), self.smoothing, dtype=np.float64)
        for _, acts in self._elite:
            a = acts.get(head)
            if a is None:
                continue
            for row, t in enumerate(step_index):
                if t < len(a):
                    counts[row, int(a[t])] += 1.0
        probs = counts / counts.sum(-1, keepdims=True)
        return torch.as_tensor(np.log(probs), dtype=torch.float32)
