"""PPOConfig: the trainer's hyperparameters, validated where they enter.

Every accepted combination of options does what its names say; a combination where an
option would be silently ignored or misapplied is refused with one message naming the fix.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator, model_validator

from hadmc.errors import ConfigError

from . import losses as L
from .advantages import ADVANTAGE_ESTIMATORS
from .policy import ACTIVATIONS
from .sampling import SAMPLING_CRITERIA

# the means adaptive_mean chooses from (losses.select_ratio_mean)
ADAPTIVE_MEANS = ("arithmetic", "geometric", "harmonic")


# fields that name a registered choice, and the check that resolves (or refuses) the name
NAME_CHECKS: dict[str, Callable[[str], Any]] = {
    "loss": L.POLICY_LOSSES.get, "ratio_mode": L.parse_ratio_mode, "p_schedule": L.P_SCHEDULES.get,
    "advantage": ADVANTAGE_ESTIMATORS.get, "sampling_criterion": SAMPLING_CRITERIA.get, "activation": ACTIVATIONS.get,
}


class PPOConfig(BaseModel):
    """Hyperparameters (SB3 names and defaults where SB3 has them).

    :param learning_rate: Adam step size
    :param lr_schedule: ``constant`` or ``linear`` (annealed to 0 over the run)
    :param n_steps: steps per env per rollout (GAE mode); with episode advantages, the
        minimum number of steps per env a rollout collects (whole episodes)
    :param batch_size: minibatch size, in steps (step aggregation) or episodes (sequence)
    :param n_epochs: passes over each rollout
    :param gamma: discount factor
    :param gae_lambda: GAE lambda
    :param clip_range: eps of the clipped surrogate (both sides unless overridden)
    :param clip_range_low: eps_low (None: clip_range)
    :param clip_range_high: eps_high (None: clip_range)
    :param clip_schedule: ``constant`` or ``linear`` (annealed like SB3's ``lin_`` ranges)
    :param dual_clip: c > 1 of dual-clip PPO (None: off)
    :param clip_range_vf: value clipping range (None: off)
    :param normalize_advantage: per-minibatch normalisation (None: on for ppo-clip with GAE)
    :param ent_coef: entropy bonus weight
    :param vf_coef: value loss weight
    :param max_grad_norm: gradient clipping norm
    :param target_kl: stop the epochs when approx KL exceeds 1.5 * target_kl (None: off)
    :param loss: ``ppo-clip`` | ``pmd-mean`` | ``pmd-part``
    :param pmd_tau: tau of the PMD losses and of ``ploo``
    :param ratio_mode: ``token`` | ``joint`` | ``power:<p>`` | ``arithmetic`` | ``geometric`` |
        ``harmonic`` | ``power`` (p from ``p_schedule`` or learned)
    :param aggregation: ``step`` or ``sequence`` (one ratio per episode); None: ``sequence``
        for the PMD losses (they regress the whole episode's log-ratio on A/tau), ``step``
        otherwise
    :param stop_gradient: GSPO-token form for power modes
    :param log_space_clip: sign-aware clipping in log space
    :param p_schedule: ``constant`` | ``linear`` | ``cosine`` from ``p_start`` to ``p_end``
        (with ``ratio_mode="power"``)
    :param p_start: p at the start of a schedule (and the initial learned p)
    :param p_end: p at the end of a schedule
    :param learn_p: learn p = p_bound * tanh(raw) with its own optimiser (with
        ``ratio_mode="power"``)
    :param p_bound: bound of the learned p
    :param p_lr: learning rate of the learned p
    :param adaptive_mean: pick harmonic/arithmetic/geometric each rollout from the
        volatility and progress of rollout/ep_rew_mean (``ratio_mode`` is then left unset or
        one of those three)
    :param volatility_threshold: adaptive rule: above it -> harmonic
    :param progress_threshold: adaptive rule: relative progress at or below it -> arithmetic
    :param adaptive_window: adaptive rule: rollouts looked at
    :param advantage: ``gae`` | ``group`` | ``loo`` | ``ploo``
    :param group_size: episodes per context for episode advantages (divides n_envs)
    :param behaviour: ``policy`` or ``optimal-elite`` (sample categorical heads from
        q* ∝ pi^a * elite^(1-a), ratios become pi_theta / q)
    :param sampling_criterion: ``kl`` or ``ess`` for a*
    :param n_elite: episodes that define the elite target
    :param hidden_sizes: trunk widths
    :param activation: trunk activation
    :param separate_critic: value head on its own trunk
    :param log_std_init: initial log std of Gaussian heads
    :param seed: seeds torch, numpy and the environments
    :param torch_threads: torch intra-op threads (None: leave as is)
    :param stats_window: episodes averaged in rollout/ep_rew_mean (SB3: 100)
    """

    model_config = ConfigDict(extra="forbid")

    learning_rate: float = 3e-4
    lr_schedule: Literal["constant", "linear"] = "constant"
    n_steps: int = 2048
    batch_size: int = 64
    n_epochs: int = 10
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    clip_range_low: float | None = None
    clip_range_high: float | None = None
    clip_schedule: Literal["constant", "linear"] = "constant"
    dual_clip: float | None = None
    clip_range_vf: float | None = None
    normalize_advantage: bool | None = None
    ent_coef: float = 0.0
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    target_kl: float | None = None
    loss: str = "ppo-clip"
    pmd_tau: float = 1.0
    ratio_mode: str = "token"
    aggregation: Literal["step", "sequence"] | None = None
    stop_gradient: bool = False
    log_space_clip: bool = False
    p_schedule: str | None = None
    p_start: float = 0.0
    p_end: float = 0.0
    learn_p: bool = False
    p_bound: float = 2.0
    p_lr: float = 1e-2
    adaptive_mean: bool = False
    volatility_threshold: float = 0.5
    progress_threshold: float = 0.0
    adaptive_window: int = 10
    advantage: str = "gae"
    group_size: int = 8
    behaviour: Literal["policy", "optimal-elite"] = "policy"
    sampling_criterion: str = "kl"
    n_elite: int = 16
    hidden_sizes: tuple[int, ...] = (64, 64, 64)
    activation: str = "tanh"
    separate_critic: bool = False
    log_std_init: float = 0.0
    seed: int = 0
    torch_threads: int | None = None
    stats_window: int = 100

    @field_validator(*NAME_CHECKS)
    @classmethod
    def _name_known(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            try:
                NAME_CHECKS[info.field_name](v)  # type: ignore[index]
            except ConfigError as exc:  # as a ValueError, so pydantic names the field
                raise ValueError(str(exc)) from None
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PPOConfig":
        for name in ("learning_rate", "n_steps", "batch_size", "n_epochs", "group_size", "pmd_tau", "stats_window"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.gae_lambda <= 1.0:
            raise ValueError("gamma and gae_lambda must lie in [0, 1]")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ValueError("dual_clip must be > 1 (e.g. 3.0)")
        spec = L.get_policy_loss(self.loss)
        if spec.uses_ratio_mode:
            self._check_ratio_options()
        else:
            self._check_pmd_options(spec.default_advantage)
        if self.aggregation is None:
            self.aggregation = "step" if spec.uses_ratio_mode else "sequence"
        return self

    def _check_ratio_options(self) -> None:
        mode = L.parse_ratio_mode(self.ratio_mode)
        if self.adaptive_mean:
            if self.learn_p or self.p_schedule is not None:
                raise ValueError("adaptive_mean chooses p itself: drop learn_p and p_schedule, or drop adaptive_mean")
            if self.ratio_mode not in ("token", *ADAPTIVE_MEANS):
                raise ValueError(f"adaptive_mean chooses among {', '.join(ADAPTIVE_MEANS)} each rollout: leave ratio_mode unset")
        elif (self.learn_p or self.p_schedule is not None) and self.ratio_mode != "power":
            raise ValueError(
                f"p_schedule and learn_p set the p of ratio_mode 'power'; with ratio_mode {self.ratio_mode!r} "
                "that p would never enter the loss: use ratio_mode 'power'"
            )
        if self.learn_p and self.p_schedule is not None:
            raise ValueError("learn_p and p_schedule both set p: pick one")
        if mode.kind == "power" and mode.p is None and self.p_schedule is None and not self.learn_p:
            raise ValueError("ratio_mode 'power' needs p_schedule or learn_p (or write power:<p>)")
        if self.stop_gradient and mode.kind != "power" and not self.adaptive_mean:
            raise ValueError("stop_gradient (GSPO-token form) needs a power ratio mode")
        if self.learn_p and not -self.p_bound < self.p_start < self.p_bound:
            raise ValueError("learn_p: p_start must lie inside (-p_bound, p_bound)")
        row_ratios = mode.kind != "token" or self.adaptive_mean
        if self.aggregation == "sequence" and row_ratios and not self.whole_episodes:
            why = "adaptive_mean switches to power ratios, which" if self.adaptive_mean else "sequence-level joint/power ratios"
            raise ValueError(f"{why} need one advantage per episode at aggregation 'sequence': use advantage group, loo or ploo")

    def _check_pmd_options(self, advantage: str) -> None:
        if not self.whole_episodes:
            raise ValueError(f"loss {self.loss} regresses episode log-ratios on A/tau: use advantage {advantage}")
        if self.aggregation == "step":
            raise ValueError(
                f"loss {self.loss} regresses the whole episode's log-ratio on A/tau; at aggregation 'step' each "
                "step's would be, so the episode's reached T * A/tau: use aggregation 'sequence' (the default)"
            )
        ignored = {
            "ratio_mode": self.ratio_mode != "token", "stop_gradient": self.stop_gradient,
            "log_space_clip": self.log_space_clip, "dual_clip": self.dual_clip is not None,
            "clip_range_low": self.clip_range_low is not None, "clip_range_high": self.clip_range_high is not None,
            "adaptive_mean": self.adaptive_mean, "learn_p": self.learn_p, "p_schedule": self.p_schedule is not None,
        }
        if any(ignored.values()):
            names = ", ".join(k for k, v in ignored.items() if v)
            raise ValueError(f"loss {self.loss} has no importance ratio to clip or average, so it would ignore {names}: remove them")

    def learning_rate_at(self, progress: float) -> float:
        """The learning rate at training progress in [0, 1] (``linear``: annealed to 0, SB3's ``lin_``)."""
        return self.learning_rate * (1.0 - progress) if self.lr_schedule == "linear" else self.learning_rate

    def clip_range_at(self, progress: float) -> tuple[float, float]:
        """(eps_low, eps_high) at training progress in [0, 1]."""
        scale = (1.0 - progress) if self.clip_schedule == "linear" else 1.0
        low = self.clip_range_low if self.clip_range_low is not None else self.clip_range
        high = self.clip_range_high if self.clip_range_high is not None else self.clip_range
        return low * scale, high * scale

    @property
    def normalizes_advantage(self) -> bool:
        """Per-minibatch advantage normalisation: as set, else on for ppo-clip with GAE (SB3)."""
        if self.normalize_advantage is not None:
            return self.normalize_advantage
        return not self.whole_episodes and L.get_policy_loss(self.loss).uses_ratio_mode

    @property
    def whole_episodes(self) -> bool:
        """The advantage estimator needs whole episodes grouped by context (group, loo, ploo);
        the critic is then only a diagnostic."""
        return ADVANTAGE_ESTIMATORS.get(self.advantage).whole_episodes

    @classmethod
    def build(cls, **kwargs: Any) -> "PPOConfig":
        """Validate ``kwargs``; a bad value raises ConfigError naming the field and the fix."""
        try:
            return cls(**kwargs)
        except ValidationError as exc:
            lines = [f"{'.'.join(str(x) for x in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()]
            raise ConfigError("invalid PPO config: " + "; ".join(lines)) from None


__all__ = ["PPOConfig"]
