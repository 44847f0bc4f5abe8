"""PPO-family loss core: importance-ratio means, clipped and PMD losses, diagnostics.

Imports only torch (and math/typing), so it can be reused on any task.

Shapes. A *row* is the unit an importance ratio is aggregated over: one environment step
(``aggregation="step"``) or one whole episode (``aggregation="sequence"``). Its *factors*
(the active action heads of a step, or all of them over an episode) lie along the last axis
with a boolean ``mask``: ``log_ratio[N, K]``, ``mask[N, K]``, ``advantages[N]`` (or
``[N, K]`` for per-factor advantages in ``token`` mode). Per-row losses are returned so the
caller chooses the weighting (the trainer averages over non-empty rows).

Losses, ratio means and p schedules are registered by name (``hadmc.registry``, one
signature per kind); a bad name or option raises ``hadmc.errors.ConfigError`` listing the
valid ones. Besides torch this module imports only those two small, torch-free modules of
HAD-MC, so it stays reusable on any task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

from hadmc.errors import ConfigError
from hadmc.registry import Registry

Tensor = torch.Tensor

# Below this |p| the Hölder mean uses its second-order expansion around the geometric mean.
P_EPS = 1e-4

# Log-ratios are bounded by this before exp: float32 overflows past 88.7 (a joint ratio of a
# long episode gets there), and e^20 is already far outside any clip range. Beyond the bound
# a row keeps its (huge, finite) loss and gets no gradient.
LOG_RATIO_BOUND = 20.0

RATIO_MEAN_ALIASES: Mapping[str, float] = {"arithmetic": 1.0, "geometric": 0.0, "harmonic": -1.0}


# ---------------------------------------------------------------------------------------
# masked reductions
# ---------------------------------------------------------------------------------------


def masked_sum(x: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """sum_j x_j over mask (0 for an empty row)."""
    return torch.where(mask, x, torch.zeros_like(x)).sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int = -1) -> Tensor:
    """sum_j x_j / n over mask (0 for an empty row)."""
    n = mask.sum(dim).clamp_min(1).to(x.dtype)
    return masked_sum(x, mask, dim) / n


# ---------------------------------------------------------------------------------------
# Hölder (power) means of ratios, in log space
# ---------------------------------------------------------------------------------------


def power_mean_log(log_ratio: Tensor, mask: Tensor, p: float | Tensor, p_eps: float = P_EPS) -> Tensor:
    """log M_p(r) = (logsumexp(p*l) - log n) / p, mean(l) + p*var(l)/2 for |p| < p_eps.

    Computed around the geometric mean m = mean(l): log M_p = m + log(mean exp(p*d))/p with
    d = l - m, using log1p/expm1 where |p*d| < 1 (no cancellation for p near 0) and
    logsumexp elsewhere (finite for |l| = 80 and beyond). A row with no active factor has
    ratio 1 (log 0) and no gradient.

    :param log_ratio: per-factor log-ratios ``l = log pi_theta - log pi_old``, shape [..., K]
    :param mask: bool [..., K], the factors that count
    :param p: the power (float or 0-d tensor; a tensor keeps the gradient with respect to p)
    :param p_eps: below this |p| the second-order expansion is used
    :return: log M_p per row, shape [...]
    """
    mask = mask.bool()
    empty = ~mask.any(-1)
    eff_mask = mask | empty.unsqueeze(-1)  # empty rows: all zeros, result replaced below
    l = torch.where(mask, log_ratio, torch.zeros_like(log_ratio))
    n = eff_mask.sum(-1).to(l.dtype)
    m = l.sum(-1) / n
    d = torch.where(eff_mask, l - m.unsqueeze(-1), torch.zeros_like(l))
    p_t = torch.as_tensor(p, dtype=l.dtype, device=l.device)
    small_p = p_t.abs() < p_eps
    p_safe = torch.where(small_p, torch.full_like(p_t, p_eps), p_t)
    z = p_safe * d
    # accurate branch: log mean exp(z) = log1p(mean expm1(z)), valid while |z| stays small
    z_small = z.clamp(-1.0, 1.0)
    lme_small = torch.log1p(masked_sum(torch.expm1(z_small), eff_mask) / n)
    # robust branch: logsumexp over the active factors
    lme_big = torch.logsumexp(torch.where(eff_mask, z, torch.full_like(z, -math.inf)), -1) - torch.log(n)
    use_small = torch.where(eff_mask, z.abs(), torch.zeros_like(z)).amax(-1) < 1.0
    lme = torch.where(use_small, lme_small, lme_big)
    holder = m + lme / p_safe
    var = masked_sum(d * d, eff_mask) / n
    expansion = m + 0.5 * p_t * var
    out = torch.where(small_p, expansion, holder)
    return torch.where(empty, torch.zeros_like(out), out)


def arithmetic_harmonic_mean(a: float, h: float, tol: float = 1e-12, max_iter: int = 100) -> tuple[float, int]:
    """Iterate a' = (a+h)/2, h' = 2ah/(a+h); both converge to sqrt(a*h) (the geometric mean).

    :param a: first positive number
    :param h: second positive number
    :param tol: stop when |a - h| <= tol * a
    :param max_iter: iteration cap
    :return: (limit, iterations used)
    """
    if a <= 0 or h <= 0:
        raise ConfigError(f"arithmetic_harmonic_mean needs positive numbers, got a={a}, h={h}")
    for i in range(1, max_iter + 1):
        a, h = 0.5 * (a + h), 2.0 * a * h / (a + h)
        if abs(a - h) <= tol * a:
            return 0.5 * (a + h), i
    return 0.5 * (a + h), max_iter


# ---------------------------------------------------------------------------------------
# ratio modes
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatioMode:
    """How per-factor ratios become the ratio(s) a loss clips.

    :param kind: ``token`` (one clipped surrogate per factor), ``joint`` (exp of the summed
        log-ratio) or ``power`` (Hölder mean of power ``p``)
    :param p: the power for ``power``; None means it comes from a schedule or a learned p
    """

    kind: str
    p: float | None = None

    @property
    def name(self) -> str:
        return self.kind if self.kind != "power" else f"power:{self.p if self.p is not None else 'auto'}"


# A ratio mean turns a row's per-factor log-ratios into the log of one ratio: (l, mask, p) -> log s
RatioMean = Callable[[Tensor, Tensor, "float | Tensor | None"], Tensor]
RATIO_MEANS: Registry[RatioMean] = Registry("ratio mean", ConfigError)


@RATIO_MEANS.register("joint")
def joint_log_ratio(log_ratio: Tensor, mask: Tensor, p: float | Tensor | None = None) -> Tensor:
    """log s = sum_j l_j (one ratio for the whole action, as SB3/RLlib)."""
    return masked_sum(log_ratio, mask)


@RATIO_MEANS.register("power")
def power_log_ratio(log_ratio: Tensor, mask: Tensor, p: float | Tensor | None = None) -> Tensor:
    """log s = (logsumexp(p*l) - log n) / p, the Hölder mean of the ratios."""
    if p is None:
        raise ConfigError("ratio mode 'power' without p: give power:<p>, a p schedule, or a learned p")
    return power_mean_log(log_ratio, mask, p)


def ratio_mode_names() -> list[str]:
    """Every accepted ratio-mode spelling (for messages)."""
    return ["token", *RATIO_MEANS.names(), "power:<p>", *RATIO_MEAN_ALIASES]


def parse_ratio_mode(name: str) -> RatioMode:
    """``token`` | a registered ratio mean (``joint``, ``power``: p from a schedule / learned) |
    ``power:<p>`` | an alias: ``arithmetic`` = power:1, ``geometric`` = power:0 (GSPO),
    ``harmonic`` = power:-1."""
    key = str(name).strip().lower()
    if key == "token" or key in RATIO_MEANS:
        return RatioMode(key)
    if key in RATIO_MEAN_ALIASES:
        return RatioMode("power", RATIO_MEAN_ALIASES[key])
    if key.startswith("power:"):
        try:
            p = float(key.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"ratio mode {name!r}: the power after 'power:' must be a real number, e.g. power:-0.5") from None
        if not math.isfinite(p):
            raise ConfigError(f"ratio mode {name!r}: p must be finite")
        return RatioMode("power", p)
    raise ConfigError(f"unknown ratio mode {name!r}; valid: {', '.join(ratio_mode_names())}")


def row_log_ratio(log_ratio: Tensor, mask: Tensor, mode: RatioMode, p: float | Tensor | None = None) -> Tensor:
    """log s per row under the mode's registered ratio mean (p: a scheduled or learned power)."""
    if mode.kind == "token":
        raise ConfigError("row_log_ratio is for row ratio means (joint, power), not 'token'")
    return RATIO_MEANS.get(mode.kind)(log_ratio, mask, mode.p if p is None else p)


def stop_gradient_log_ratio(log_ratio: Tensor, row_log_s: Tensor) -> Tensor:
    """GSPO-token form: l_j - sg(l_j) + sg(log s); value log s, gradient of l_j."""
    return log_ratio - log_ratio.detach() + row_log_s.detach().unsqueeze(-1)


# ---------------------------------------------------------------------------------------
# surrogates
# ---------------------------------------------------------------------------------------


def clipped_surrogate(ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float, dual_clip: float | None = None) -> Tensor:
    """max(-A r, -A clip(r, 1-eps_low, 1+eps_high)); with dual clip c: min(that, -c A) for A < 0."""
    loss = torch.max(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.min(loss, -dual_clip * adv), loss)
    return loss


def log_space_clipped_surrogate(
    log_ratio: Tensor, adv: Tensor, clip_low: float, clip_high: float, dual_clip: float | None = None
) -> Tensor:
    """-A exp(l'), l' = min(l, log(1+eps_high)) if A >= 0 else min(max(l, log(1-eps_low)), B) (and <= log c).

    Same value and gradient as ``clipped_surrogate`` but the ratio is clipped before it is
    exponentiated, for both signs of A, so extreme log-ratios cannot overflow: with A < 0 the
    surrogate does not clip large ratios, so they are bounded by B = ``LOG_RATIO_BOUND``.
    """
    hi = math.log1p(clip_high)
    lo = math.log1p(-clip_low) if clip_low < 1.0 else -math.inf
    pos = log_ratio.clamp(max=hi)
    neg = log_ratio.clamp(min=lo, max=LOG_RATIO_BOUND)
    if dual_clip is not None:
        neg = neg.clamp(max=math.log(dual_clip))
    clipped = torch.where(adv >= 0, pos, neg)
    return -adv * torch.exp(clipped)


def _row_advantage(advantages: Tensor, log_ratio: Tensor) -> Tensor:
    if advantages.dim() == log_ratio.dim() - 1:
        return advantages
    raise ConfigError(
        f"ratio modes joint/power need one advantage per row, shape {tuple(log_ratio.shape[:-1])}, "
        f"got {tuple(advantages.shape)}; per-factor advantages work with ratio mode 'token'"
    )


def ppo_clip_loss(
    log_ratio: Tensor,
    mask: Tensor | None,
    advantages: Tensor,
    mode: RatioMode = RatioMode("token"),
    p: float | Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    stop_gradient: bool = False,
    log_space_clip: bool = False,
) -> Tensor:
    """Per-row PPO clipped-surrogate loss under a ratio mode.

    :param log_ratio: [N, K] per-factor log-ratios
    :param mask: [N, K] bool, the active factors (None: all active, which skips the masking)
    :param advantages: [N] (or [N, K] in ``token`` mode)
    :param mode: the ratio mode (``parse_ratio_mode``)
    :param p: the power for ``power`` modes when it is scheduled or learned
    :param clip_low: eps_low, the ratio is kept above 1 - eps_low
    :param clip_high: eps_high, the ratio is kept below 1 + eps_high
    :param dual_clip: c > 1 bounds the loss of negative advantages by -c A (None: off)
    :param stop_gradient: ``power`` modes only: GSPO-token form, each factor carries the row
        ratio's value with its own log-ratio's gradient, clipped per factor
    :param log_space_clip: clip in log space, sign-aware, before exponentiating (without it
        log-ratios are still bounded by ``LOG_RATIO_BOUND`` before exp, so nothing overflows)
    :return: loss per row, [N]
    """
    def surrogate(lr: Tensor, adv: Tensor) -> Tensor:
        if log_space_clip:
            return log_space_clipped_surrogate(lr, adv, clip_low, clip_high, dual_clip)
        return clipped_surrogate(torch.exp(lr.clamp(max=LOG_RATIO_BOUND)), adv, clip_low, clip_high, dual_clip)

    if mode.kind == "token":
        adv = advantages if advantages.dim() == log_ratio.dim() else advantages.unsqueeze(-1)
        adv = adv.expand_as(log_ratio)
        if mask is None:
            return surrogate(log_ratio, adv).mean(-1)
        return masked_mean(surrogate(log_ratio, adv), mask.bool())  # mean_j max(-A r_j, -A clip(r_j))
    mask = torch.ones_like(log_ratio, dtype=torch.bool) if mask is None else mask.bool()
    row_adv = _row_advantage(advantages, log_ratio)
    log_s = row_log_ratio(log_ratio, mask, mode, p)
    if stop_gradient:
        if mode.kind != "power":
            raise ConfigError("stop_gradient (GSPO-token form) applies to power ratio modes")
        token_lr = stop_gradient_log_ratio(log_ratio, log_s)
        adv = row_adv.unsqueeze(-1).expand_as(log_ratio)
        return masked_mean(surrogate(token_lr, adv), mask)
    loss = surrogate(log_s, row_adv)  # max(-A s, -A clip(s))
    return torch.where(mask.any(-1), loss, torch.zeros_like(loss))


def pmd_loss(log_ratio: Tensor, mask: Tensor | None, advantages: Tensor, tau: float = 1.0) -> Tensor:
    """Per-row 0.5 * tau/|y| * (sum_j l_j - A/tau)^2 (PMD-mean / PMD-part regression).

    :param log_ratio: [N, K] per-factor log-ratios
    :param mask: [N, K] bool, the factors of each row; |y| is their count (None: all)
    :param advantages: [N]; leave-one-out mean baseline (pmd-mean) or log-mean-exp (pmd-part)
    :param tau: the KL regularisation strength of the mirror-descent step
    """
    if tau <= 0:
        raise ConfigError(f"pmd tau must be > 0, got {tau}")
    mask = torch.ones_like(log_ratio, dtype=torch.bool) if mask is None else mask.bool()
    n = mask.sum(-1).clamp_min(1).to(log_ratio.dtype)
    total = masked_sum(log_ratio, mask)
    loss = 0.5 * tau / n * (total - _row_advantage(advantages, log_ratio) / tau) ** 2
    return torch.where(mask.any(-1), loss, torch.zeros_like(loss))


@dataclass(frozen=True)
class LossSettings:
    """What a registered policy loss may read besides the tensors (each uses its own part).

    :param mode: the ratio mode (ppo-clip)
    :param p: the power of a ``power`` mode when it is scheduled or learned
    :param clip_low: eps_low
    :param clip_high: eps_high
    :param dual_clip: c of dual-clip PPO (None: off)
    :param stop_gradient: GSPO-token form
    :param log_space_clip: clip in log space before exp
    :param tau: the KL strength of the PMD losses
    """

    mode: RatioMode = RatioMode("token")
    p: float | Tensor | None = None
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    stop_gradient: bool = False
    log_space_clip: bool = False
    tau: float = 1.0


@dataclass(frozen=True)
class PolicyLossSpec:
    """A registered policy loss: ``fn(log_ratio, mask, advantages, settings) -> loss per row``,
    the advantage estimator it expects, and whether it clips a ratio of a ratio mode."""

    fn: Callable[[Tensor, "Tensor | None", Tensor, LossSettings], Tensor]
    default_advantage: str
    uses_ratio_mode: bool


POLICY_LOSSES: Registry[PolicyLossSpec] = Registry("policy loss", ConfigError)


def register_policy_loss(name: str, *, advantage: str, uses_ratio_mode: bool) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Decorator: register ``fn(log_ratio, mask, advantages, settings)`` as policy loss ``name``."""

    def register(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        POLICY_LOSSES.add(name, PolicyLossSpec(fn, advantage, uses_ratio_mode))
        return fn

    return register


@register_policy_loss("ppo-clip", advantage="gae", uses_ratio_mode=True)
def ppo_clip_policy_loss(log_ratio: Tensor, mask: Tensor | None, advantages: Tensor, s: LossSettings) -> Tensor:
    """max(-A r, -A clip(r, 1-eps_low, 1+eps_high)) over the mode's ratios."""
    return ppo_clip_loss(log_ratio, mask, advantages, s.mode, s.p, s.clip_low, s.clip_high, s.dual_clip, s.stop_gradient, s.log_space_clip)


@register_policy_loss("pmd-part", advantage="ploo", uses_ratio_mode=False)
@register_policy_loss("pmd-mean", advantage="loo", uses_ratio_mode=False)
def pmd_policy_loss(log_ratio: Tensor, mask: Tensor | None, advantages: Tensor, s: LossSettings) -> Tensor:
    """0.5 * tau/|y| * (sum_j l_j - A/tau)^2; the two differ in their advantage's baseline."""
    return pmd_loss(log_ratio, mask, advantages, s.tau)


def get_policy_loss(name: str) -> PolicyLossSpec:
    """The registered loss ``name`` (``ppo-clip``, ``pmd-mean``, ``pmd-part``)."""
    return POLICY_LOSSES.get(name)


def policy_loss(kind: str, log_ratio: Tensor, mask: Tensor | None, advantages: Tensor, **settings: object) -> Tensor:
    """Per-row loss of the registered ``kind``; ``settings`` are ``LossSettings`` fields."""
    return get_policy_loss(kind).fn(log_ratio, mask, advantages, LossSettings(**settings))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------
# value, entropy, diagnostics
# ---------------------------------------------------------------------------------------


def value_loss(values: Tensor, returns: Tensor, old_values: Tensor | None = None, clip_range_vf: float | None = None) -> Tensor:
    """mean (R - V')^2 with V' = V_old + clip(V - V_old, -c, c) when clipping (SB3's form)."""
    if clip_range_vf is not None:
        if old_values is None:
            raise ConfigError("value clipping needs old_values")
        values = old_values + (values - old_values).clamp(-clip_range_vf, clip_range_vf)
    return ((returns - values) ** 2).mean()


def mean_over_rows(per_row: Tensor, mask: Tensor | None) -> Tensor:
    """The mean of per-row losses over rows with an active factor (0 with a graph if none)."""
    if mask is None:
        return per_row.mean()
    nonempty = mask.any(-1)
    return per_row[nonempty].mean() if bool(nonempty.any()) else per_row.sum() * 0.0


def entropy_per_row(entropy: Tensor, head_mask: Tensor) -> Tensor:
    """sum over active heads of H_h (inactive heads contribute nothing)."""
    return masked_sum(entropy, head_mask.bool())


def approx_kl(log_ratio: Tensor, weights: Tensor | None = None) -> Tensor:
    """mean(w * ((r - 1) - log r)), the low-variance KL(pi_old || pi_theta) estimator (k3).

    :param log_ratio: log pi_theta - log pi_old of sampled actions
    :param weights: pi_old / q when the actions were sampled from q instead of pi_old
        (importance weights keep the estimate unbiased); None: 1
    """
    k3 = (torch.exp(log_ratio) - 1.0) - log_ratio
    return (k3 if weights is None else weights * k3).mean()


def clipped_log_ratios(
    log_ratio: Tensor, mask: Tensor | None, mode: RatioMode, p: float | Tensor | None = None, stop_gradient: bool = False
) -> tuple[Tensor, Tensor | None]:
    """The log-ratios ``ppo_clip_loss`` clips, with their mask: per factor in ``token`` mode
    and in the GSPO-token form (each factor carrying its row's ratio), one per row otherwise."""
    if mode.kind == "token":
        return log_ratio, mask
    full = torch.ones_like(log_ratio, dtype=torch.bool) if mask is None else mask.bool()
    log_s = row_log_ratio(log_ratio, full, mode, p)
    if stop_gradient:
        return log_s.unsqueeze(-1).expand_as(log_ratio), full
    return log_s.unsqueeze(-1), full.any(-1, keepdim=True)


def clip_fraction(log_ratio: Tensor, mask: Tensor | None, clip_low: float, clip_high: float) -> Tensor:
    """Share of active units (None: all) whose ratio lies outside [1 - eps_low, 1 + eps_high]."""
    r = torch.exp(log_ratio)
    out = (r < 1.0 - clip_low) | (r > 1.0 + clip_high)
    if mask is None:
        return out.to(log_ratio.dtype).mean()
    out = out & mask.bool()
    return out.sum().to(log_ratio.dtype) / mask.bool().sum().clamp_min(1).to(log_ratio.dtype)


def explained_variance(pred: Tensor, target: Tensor) -> float:
    """1 - Var(y - y_hat) / Var(y) (nan when Var(y) = 0, as in SB3)."""
    var_y = torch.var(target)
    if var_y == 0:
        return float("nan")
    return float(1.0 - torch.var(target - pred) / var_y)


# ---------------------------------------------------------------------------------------
# p: schedules, learned, adaptive
# ---------------------------------------------------------------------------------------


# A p schedule: (p_start, p_end, progress in [0, 1]) -> p
P_SCHEDULES: Registry[Callable[[float, float, float], float]] = Registry("p schedule", ConfigError)


@P_SCHEDULES.register("constant")
def constant_p(start: float, end: float, progress: float) -> float:
    return start  # p = p0


@P_SCHEDULES.register("linear")
def linear_p(start: float, end: float, progress: float) -> float:
    return start + (end - start) * progress  # p = p0 + (p1 - p0) t


@P_SCHEDULES.register("cosine")
def cosine_p(start: float, end: float, progress: float) -> float:
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))  # p1 + (p0-p1)(1+cos pi t)/2


def scheduled_p(kind: str, start: float, end: float, progress: float) -> float:
    """p at training progress in [0, 1] under schedule ``kind`` (constant, linear, cosine)."""
    return P_SCHEDULES.get(kind)(start, end, min(max(progress, 0.0), 1.0))


class LearnedPower(torch.nn.Module):
    """A learnable power bounded to (-bound, bound): p = bound * tanh(raw).

    It gets its own optimiser and learning rate in the trainer; the policy loss is
    differentiable in p through ``power_mean_log``.

    :param init: the initial p, strictly inside (-bound, bound)
    :param bound: |p| stays below it
    """

    def __init__(self, init: float = 0.0, bound: float = 2.0) -> None:
        super().__init__()
        if bound <= 0 or not -bound < init < bound:
            raise ConfigError(f"learned p needs bound > 0 and init inside (-bound, bound); got init={init}, bound={bound}")
        self.bound = float(bound)
        self.raw = torch.nn.Parameter(torch.tensor(math.atanh(init / bound), dtype=torch.float32))

    def forward(self) -> Tensor:
        return self.bound * torch.tanh(self.raw)


def select_ratio_mean(
    history: Sequence[float],
    volatility_threshold: float = 0.5,
    progress_threshold: float = 0.0,
    window: int = 10,
    eps: float = 1e-8,
) -> str:
    """Adaptive mean choice (HMPO note): high volatility -> harmonic, poor progress -> arithmetic, else geometric.

    volatility = std / (|mean| + eps) of the last ``window`` values of the tracked metric (e.g.
    rollout/ep_rew_mean); progress = (mean of the newer half - mean of the older half) /
    (|mean of the older half| + eps).

    :param history: metric values, oldest first
    :param volatility_threshold: above it the harmonic mean is chosen
    :param progress_threshold: relative progress at or below it counts as poor
    :param window: how many recent values are looked at; fewer than 4 -> geometric
    """
    recent = [float(x) for x in history[-window:]]
    if len(recent) < 4:
        return "geometric"
    t = torch.tensor(recent, dtype=torch.float64)
    volatility = float(t.std() / (t.mean().abs() + eps))
    half = len(recent) // 2
    old, new = t[:half].mean(), t[half:].mean()
    progress = float((new - old) / (old.abs() + eps))
    if volatility > volatility_threshold:
        return "harmonic"
    if progress <= progress_threshold:
        return "arithmetic"
    return "geometric"
