"""Shared-trunk actor-critic with factored heads over Gymnasium action spaces.

A 3-layer MLP trunk feeds one Categorical head per discrete decision (pruning, quantization,
fusion, update in the compression env; each MultiDiscrete component elsewhere), a Gaussian
head per Box part (distillation: 2-d, T = clip(x, 1, 20), alpha = sigmoid(y), the log-prob is
that of the pre-transform sample x) and a value head. Masked options get -inf logits; heads
that are inactive at a step contribute nothing to the log-prob and the entropy.

Actions travel packed in one float tensor [B, D]: one column (the option index) per
categorical head, ``d`` columns (the pre-transform sample) per Gaussian head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from gymnasium import spaces
from torch import nn

from hadmc.errors import ConfigError
from hadmc.registry import Registry

Tensor = torch.Tensor

DISTILLATION_HEAD = "distillation"


# ---------------------------------------------------------------------------------------
# observations
# ---------------------------------------------------------------------------------------


def observation_dim(space: spaces.Space) -> int:
    """Width of the encoded observation (one-hot for Discrete/MultiDiscrete, as SB3 does)."""
    if isinstance(space, spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Discrete):
        return int(space.n)
    if isinstance(space, spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, spaces.MultiBinary):
        return int(np.prod(space.shape))
    if isinstance(space, spaces.Dict):
        return sum(observation_dim(s) for s in space.spaces.values())
    raise ConfigError(f"observation space {space} is not supported; use Box, Discrete, MultiDiscrete, MultiBinary or a Dict of them")


def encode_observation(space: spaces.Space, obs: Any) -> Tensor:
    """Batched observation [B, ...] -> float tensor [B, observation_dim(space)]."""
    if isinstance(space, spaces.Box):
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        return x.reshape(x.shape[0], -1)
    if isinstance(space, spaces.Discrete):
        idx = torch.as_tensor(np.asarray(obs).reshape(-1) - space.start, dtype=torch.long)
        return nn.functional.one_hot(idx, int(space.n)).float()
    if isinstance(space, spaces.MultiDiscrete):
        arr = np.asarray(obs).reshape(np.asarray(obs).shape[0], -1) - np.asarray(space.start).reshape(-1)
        cols = [nn.functional.one_hot(torch.as_tensor(arr[:, i], dtype=torch.long), int(n)).float() for i, n in enumerate(space.nvec.reshape(-1))]
        return torch.cat(cols, dim=1)
    if isinstance(space, spaces.MultiBinary):
        x = torch.as_tensor(np.asarray(obs), dtype=torch.float32)
        return x.reshape(x.shape[0], -1)
    if isinstance(space, spaces.Dict):
        return torch.cat([encode_observation(s, obs[k]) for k, s in space.spaces.items()], dim=1)
    raise ConfigError(f"observation space {space} is not supported")


# ---------------------------------------------------------------------------------------
# heads
# ---------------------------------------------------------------------------------------


# A Box transform maps a Gaussian head's pre-transform sample into the env's Box: (x, low, high) -> action
BOX_TRANSFORMS: Registry[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]] = Registry("Box transform", ConfigError)


@BOX_TRANSFORMS.register("clip")
def _clip_transform(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    return np.clip(x, low, high)


@BOX_TRANSFORMS.register("temperature-alpha")
def _temperature_alpha(x: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    # T = clip(x, 1, 20), alpha = sigmoid(y); then kept inside the Box the env declared
    out = np.empty_like(x)
    out[..., 0] = np.clip(x[..., 0], 1.0, 20.0)
    out[..., 1] = 1.0 / (1.0 + np.exp(-x[..., 1]))
    return np.clip(out, low, high)


@dataclass(frozen=True)
class HeadSpec:
    """One factor of the action.

    :param name: head name (the Dict key, ``key/i`` for MultiDiscrete components, or
        ``action`` / ``i`` for plain spaces)
    :param kind: ``categorical`` or ``gaussian``
    :param size: options (categorical) or dimensions (gaussian)
    :param key: the Dict key it belongs to (None for plain spaces)
    :param component: index inside a MultiDiscrete part (None otherwise)
    :param start: offset added to the option index when sent to the env
    :param transform: Gaussian heads: name in ``BOX_TRANSFORMS``
    """

    name: str
    kind: str
    size: int
    key: str | None = None
    component: int | None = None
    start: int = 0
    transform: str | None = None


def _part_heads(part: spaces.Space, key: str | None, transforms: Mapping[str, str]) -> list[HeadSpec]:
    base = key if key is not None else "action"
    if isinstance(part, spaces.Discrete):
        return [HeadSpec(base, "categorical", int(part.n), key, None, int(part.start))]
    if isinstance(part, spaces.MultiDiscrete):
        if part.nvec.ndim != 1:
            raise ConfigError(f"MultiDiscrete action parts must be 1-d, got nvec shape {part.nvec.shape}")
        prefix = f"{key}/" if key is not None else ""
        return [
            HeadSpec(f"{prefix}{i}", "categorical", int(n), key, i, int(np.asarray(part.start).reshape(-1)[i]))
            for i, n in enumerate(part.nvec)
        ]
    if isinstance(part, spaces.Box):
        dims = int(np.prod(part.shape))
        default = "temperature-alpha" if key == DISTILLATION_HEAD and dims == 2 else "clip"
        transform = transforms.get(base, default)
        BOX_TRANSFORMS.get(transform)
        return [HeadSpec(base, "gaussian", dims, key, None, 0, transform)]
    raise ConfigError(f"action part {part} ({key}) is not supported; use Discrete, MultiDiscrete or Box")


def heads_for_space(space: spaces.Space, transforms: Mapping[str, str] | None = None) -> list[HeadSpec]:
    """The heads (factors) of a Dict of Discrete/MultiDiscrete/Box parts, or of a plain space."""
    transforms = dict(transforms or {})
    if isinstance(space, spaces.Dict):
        heads: list[HeadSpec] = []
        for key, part in space.spaces.items():
            heads.extend(_part_heads(part, key, transforms))
        return heads
    return _part_heads(space, None, transforms)


@dataclass
class ActionMasks:
    """Per-step masks: ``heads`` [B, H] which heads act; ``options`` [B, L] valid logits (None: all)."""

    heads: Tensor
    options: Tensor | None = None

    def index(self, idx: Tensor | slice) -> "ActionMasks":
        return ActionMasks(self.heads[idx], None if self.options is None else self.options[idx])


def _categorical_entropy(log_p: Tensor, masked: bool = True) -> Tensor:
    """-sum p log p; masked options (log p = -inf) are zeroed before the product, so neither
    the value nor the gradient sees 0 * inf (``masked`` False: no option is masked)."""
    finite = torch.where(torch.isfinite(log_p), log_p, torch.zeros_like(log_p)) if masked else log_p
    return -(log_p.exp() * finite).sum(-1)


def _layer(n_in: int, n_out: int, gain: float) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    nn.init.orthogonal_(lin.weight, gain)
    nn.init.zeros_(lin.bias)
    return lin


ACTIVATIONS: Registry[type[nn.Module]] = Registry("activation", ConfigError)
ACTIVATIONS.add("tanh", nn.Tanh)
ACTIVATIONS.add("relu", nn.ReLU)
ACTIVATIONS.add("elu", nn.ELU)


def _mlp(n_in: int, hidden: tuple[int, ...], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [_layer(n_in, h, math.sqrt(2)), ACTIVATIONS.get(activation)()]
        n_in = h
    return nn.Sequential(*layers)


class ActorCritic(nn.Module):
    """Shared-trunk actor-critic over a Gymnasium action space.

    :param observation_space: the (single-env) observation space
    :param action_space: Dict of Discrete/MultiDiscrete/Box parts, or a plain one of those
    :param hidden_sizes: trunk widths (DESIGN: a 3-layer MLP)
    :param activation: ``tanh`` | ``relu`` | ``elu``
    :param log_std_init: initial log standard deviation of Gaussian heads (state-independent)
    :param separate_critic: give the value head its own trunk of the same shape (SB3's
        default layout) instead of sharing the actor's
    :param box_transforms: head name -> ``BOX_TRANSFORMS`` name (default: ``clip``, and
        ``temperature-alpha`` for a 2-d ``distillation`` part)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        hidden_sizes: tuple[int, ...] = (64, 64, 64),
        activation: str = "tanh",
        log_std_init: float = 0.0,
        separate_critic: bool = False,
        box_transforms: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__()
        ACTIVATIONS.get(activation)  # an unknown name lists the valid ones
        if not hidden_sizes or any(h <= 0 for h in hidden_sizes):
            raise ConfigError(f"hidden_sizes must be positive widths, got {hidden_sizes}")
        self.observation_space = observation_space
        self.action_space = action_space
        self.heads = heads_for_space(action_space, box_transforms)
        self.head_names = [h.name for h in self.heads]
        obs_dim = observation_dim(observation_space)
        width = hidden_sizes[-1]
        self.trunk = _mlp(obs_dim, tuple(hidden_sizes), activation)
        self.critic_trunk = _mlp(obs_dim, tuple(hidden_sizes), activation) if separate_critic else None
        cat = [h for h in self.heads if h.kind == "categorical"]
        gauss = [h for h in self.heads if h.kind == "gaussian"]
        self.n_logits = sum(h.size for h in cat)
        self.n_gauss = sum(h.size for h in gauss)
        self.logits_head = _layer(width, self.n_logits, 0.01) if cat else None
        self.mean_head = _layer(width, self.n_gauss, 0.01) if gauss else None
        self.log_std = nn.Parameter(torch.full((self.n_gauss,), float(log_std_init))) if gauss else None
        self.value_head = _layer(width, 1, 1.0)
        # layout: logit slice / mean slice / action column slice per head
        self._logit_slice: list[slice | None] = []
        self._mean_slice: list[slice | None] = []
        self._col_slice: list[slice] = []
        lo = mo = co = 0
        for h in self.heads:
            if h.kind == "categorical":
                self._logit_slice.append(slice(lo, lo + h.size)); lo += h.size
                self._mean_slice.append(None)
                self._col_slice.append(slice(co, co + 1)); co += 1
            else:
                self._logit_slice.append(None)
                self._mean_slice.append(slice(mo, mo + h.size)); mo += h.size
                self._col_slice.append(slice(co, co + h.size)); co += h.size
        self.action_dim = co
        self.obs_dim = obs_dim
        self._cat_idx = [i for i, h in enumerate(self.heads) if h.kind == "categorical"]
        # which categorical head each logit belongs to, to find heads left with no valid option
        owner = torch.zeros(self.n_logits, len(self._cat_idx))
        for k, i in enumerate(self._cat_idx):
            owner[self._logit_slice[i], k] = 1.0  # type: ignore[index]
        self.register_buffer("_logit_owner", owner, persistent=False)
        # a plain Discrete space: all logits form one head, the fast path
        self._single_cat = len(self.heads) == 1 and self.heads[0].kind == "categorical"

    # -- layout --------------------------------------------------------------------------

    def _head_index(self, head: str) -> int:
        try:
            return self.head_names.index(head)
        except ValueError:
            raise ConfigError(f"unknown head {head!r}; valid: {', '.join(self.head_names)}") from None

    def logit_slice(self, head: str) -> slice:
        """The columns of a categorical head in the logits (and in option masks)."""
        s = self._logit_slice[self._head_index(head)]
        if s is None:
            raise ConfigError(f"head {head!r} is Gaussian: it has means, not logits")
        return s

    def mean_slice(self, head: str) -> slice:
        """The columns of a Gaussian head in the means."""
        s = self._mean_slice[self._head_index(head)]
        if s is None:
            raise ConfigError(f"head {head!r} is categorical: it has logits, not means")
        return s

    def action_slice(self, head: str) -> slice:
        """The columns of a head in the packed actions [B, D]."""
        return self._col_slice[self._head_index(head)]

    def categorical_actions(self, actions: Tensor | np.ndarray) -> dict[str, np.ndarray]:
        """Packed actions [B, D] -> the option index chosen by each categorical head, [B] each."""
        a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        return {self.heads[i].name: a[:, self._col_slice[i].start].astype(np.int64) for i in self._cat_idx}

    # -- network -------------------------------------------------------------------------

    def forward(self, obs: Tensor, detach_critic: bool = False) -> tuple[Tensor | None, Tensor | None, Tensor]:
        """(logits [B, L] or None, means [B, G] or None, value [B]).

        :param detach_critic: the value head reads the shared trunk's features without
            sending its gradient back into them (a critic that is only a diagnostic must not
            move the policy)
        """
        z = self.trunk(obs)
        if self.critic_trunk is not None:
            zc = self.critic_trunk(obs)
        else:
            zc = z.detach() if detach_critic else z
        logits = self.logits_head(z) if self.logits_head is not None else None
        means = self.mean_head(z) if self.mean_head is not None else None
        return logits, means, self.value_head(zc).squeeze(-1)

    def value(self, obs: Tensor) -> Tensor:
        """V(s) [B]."""
        zc = self.critic_trunk(obs) if self.critic_trunk is not None else self.trunk(obs)
        return self.value_head(zc).squeeze(-1)

    def critic_parameters(self) -> list[nn.Parameter]:
        """The parameters only the value estimate uses (value head, and its own trunk if any)."""
        own = list(self.critic_trunk.parameters()) if self.critic_trunk is not None else []
        return own + list(self.value_head.parameters())

    def actor_parameters(self) -> list[nn.Parameter]:
        """Every other parameter: the (shared) trunk and the action heads."""
        critic = {id(q) for q in self.critic_parameters()}
        return [q for q in self.parameters() if id(q) not in critic]

    def all_valid(self, batch: int) -> ActionMasks:
        """Masks with every head active and every option valid."""
        return ActionMasks(torch.ones(batch, len(self.heads), dtype=torch.bool), None)

    def _masked_logits(self, logits: Tensor, masks: ActionMasks | None) -> Tensor:
        """Masked options get -inf; a head whose options are all masked keeps its logits (it
        must be inactive then, and an all -inf row would make log-softmax NaN)."""
        if masks is None or masks.options is None:
            return logits
        options = masks.options
        no_valid = (options.to(self._logit_owner.dtype) @ self._logit_owner) == 0  # [B, heads]
        options = options | (no_valid.to(self._logit_owner.dtype) @ self._logit_owner.T).bool()
        return logits.masked_fill(~options, -math.inf)

    def head_log_probs(self, logits: Tensor, masks: ActionMasks | None = None) -> list[Tensor | None]:
        """log-softmax per categorical head (None for Gaussian heads)."""
        logits = self._masked_logits(logits, masks)
        out: list[Tensor | None] = []
        for s in self._logit_slice:
            out.append(None if s is None else torch.log_softmax(logits[:, s], -1))
        return out

    def _gauss_stats(self, means: Tensor, s: slice) -> tuple[Tensor, Tensor]:
        assert self.log_std is not None
        log_std = self.log_std[s].expand_as(means[:, s])
        return means[:, s], log_std

    @staticmethod
    def _gauss_log_prob(x: Tensor, mu: Tensor, log_std: Tensor) -> Tensor:
        return (-0.5 * ((x - mu) / log_std.exp()) ** 2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    @staticmethod
    def _gauss_entropy(log_std: Tensor) -> Tensor:
        return (0.5 + 0.5 * math.log(2 * math.pi) + log_std).sum(-1)

    # -- acting and evaluating -----------------------------------------------------------

    @torch.no_grad()
    def act(
        self,
        obs: Tensor,
        masks: ActionMasks | None = None,
        deterministic: bool = False,
        behaviour_logits: list[Tensor | None] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Sample (or take the mode of) every head.

        :param obs: encoded observations [B, obs_dim]
        :param masks: per-step masks (None: everything valid)
        :param deterministic: argmax / mean instead of sampling
        :param behaviour_logits: per head, log-probs of a behaviour distribution to sample the
            categorical heads from instead (e.g. optimal sampling); the returned log-probs are
            then the behaviour's, so PPO's ratios become pi_theta / q
        :return: (packed actions [B, D], per-head log-probs [B, H] (0 where inactive), V [B])
        """
        logits, means, value = self.forward(obs)
        B = obs.shape[0]
        head_mask = masks.heads if masks is not None else None
        if self._single_cat and behaviour_logits is None:
            lp = torch.log_softmax(self._masked_logits(logits, masks), -1)
            if deterministic:
                a = lp.argmax(-1)
            else:
                a = torch.multinomial(lp.exp(), 1).squeeze(-1)
            logp = lp.gather(1, a.unsqueeze(1))
            if head_mask is not None:
                logp = torch.where(head_mask, logp, torch.zeros_like(logp))
            return a.to(torch.float32).unsqueeze(1), logp, value
        actions = torch.empty(B, self.action_dim)
        logps = torch.zeros(B, len(self.heads))
        lps = self.head_log_probs(logits, masks) if logits is not None else [None] * len(self.heads)
        for i, h in enumerate(self.heads):
            col = self._col_slice[i]
            if h.kind == "categorical":
                lp = lps[i]
                assert lp is not None
                src = behaviour_logits[i] if behaviour_logits is not None and behaviour_logits[i] is not None else lp
                a = src.argmax(-1) if deterministic else torch.multinomial(src.exp(), 1).squeeze(-1)
                actions[:, col] = a.to(torch.float32).unsqueeze(1)
                logps[:, i] = src.gather(1, a.unsqueeze(1)).squeeze(1)
            else:
                ms = self._mean_slice[i]
                assert means is not None and ms is not None
                mu, log_std = self._gauss_stats(means, ms)
                x = mu if deterministic else mu + log_std.exp() * torch.randn_like(mu)
                actions[:, col] = x
                logps[:, i] = self._gauss_log_prob(x, mu, log_std)
        if head_mask is not None:
            logps = torch.where(head_mask, logps, torch.zeros_like(logps))
        return actions, logps, value

    def evaluate(
        self, obs: Tensor, actions: Tensor, masks: ActionMasks | None = None, detach_critic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(per-head log-probs [B, H], per-head entropies [B, H], V [B]); inactive heads give 0.

        :param detach_critic: see ``forward``
        """
        logits, means, value = self.forward(obs, detach_critic)
        if self._single_cat:
            lp = torch.log_softmax(self._masked_logits(logits, masks), -1)
            a = actions[:, 0].long()
            logp = lp.gather(1, a.unsqueeze(1))
            ent = _categorical_entropy(lp, masks is not None and masks.options is not None).unsqueeze(-1)
        else:
            cols_lp: list[Tensor] = []
            cols_ent: list[Tensor] = []
            lps = self.head_log_probs(logits, masks) if logits is not None else [None] * len(self.heads)
            for i, h in enumerate(self.heads):
                col = self._col_slice[i]
                if h.kind == "categorical":
                    lp = lps[i]
                    assert lp is not None
                    a = actions[:, col].long()
                    cols_lp.append(lp.gather(1, a).squeeze(1))
                    cols_ent.append(_categorical_entropy(lp))
                else:
                    ms = self._mean_slice[i]
                    assert means is not None and ms is not None
                    mu, log_std = self._gauss_stats(means, ms)
                    cols_lp.append(self._gauss_log_prob(actions[:, col], mu, log_std))
                    cols_ent.append(self._gauss_entropy(log_std))
            logp = torch.stack(cols_lp, 1)
            ent = torch.stack(cols_ent, 1)
        if masks is not None:
            # where, not a product: an inactive head's NaN must not survive as NaN * 0
            logp = torch.where(masks.heads, logp, torch.zeros_like(logp))
            ent = torch.where(masks.heads, ent, torch.zeros_like(ent))
        return logp, ent, value

    def categorical_log_probs(self, obs: Tensor, masks: ActionMasks | None = None) -> list[Tensor | None]:
        """Per head: log pi_theta over its options (None for Gaussian heads), no gradient."""
        with torch.no_grad():
            logits, _, _ = self.forward(obs)
            if logits is None:
                return [None] * len(self.heads)
            return self.head_log_probs(logits, masks)

    # -- env glue ------------------------------------------------------------------------

    def to_env_action(self, actions: Tensor | np.ndarray) -> Any:
        """Packed actions [E, D] -> a batched action of the env's action space."""
        a = actions.detach().cpu().numpy() if isinstance(actions, Tensor) else np.asarray(actions)
        space = self.action_space
        parts: dict[str | None, Any] = {}
        for i, h in enumerate(self.heads):
            col = a[:, self._col_slice[i]]
            part = space[h.key] if isinstance(space, spaces.Dict) else space
            if h.kind == "categorical":
                val = col[:, 0].astype(np.int64) + h.start
                if isinstance(part, spaces.MultiDiscrete):
                    parts.setdefault(h.key, np.zeros((a.shape[0], len(part.nvec)), dtype=part.dtype))[:, h.component] = val
                else:
                    parts[h.key] = val
            else:
                assert isinstance(part, spaces.Box) and h.transform is not None
                low = part.low.reshape(-1).astype(np.float64)
                high = part.high.reshape(-1).astype(np.float64)
                val = BOX_TRANSFORMS.get(h.transform)(col.astype(np.float64), low, high)
                parts[h.key] = val.reshape(a.shape[0], *part.shape).astype(part.dtype)
        if isinstance(space, spaces.Dict):
            return {k: parts[k] for k in space.spaces}
        return parts[None]

    def masks_from_info(self, info: Mapping[str, Any] | None, n_envs: int) -> ActionMasks:
        """Masks from a vector env's ``info["action_mask"]`` (all valid when absent).

        Accepted per env: ``{"heads": {name: bool}, name: bool[n_options]}`` (names are Dict
        keys; a key's flag covers all its MultiDiscrete components, whose option mask is the
        concatenation over components), or for a one-head space a plain bool[n_options].
        """
        heads = torch.ones(n_envs, len(self.heads), dtype=torch.bool)
        options: Tensor | None = None
        if not info or "action_mask" not in info:
            return ActionMasks(heads, None)
        am = info["action_mask"]
        present = np.asarray(info.get("_action_mask", np.ones(n_envs, dtype=bool)), dtype=bool)
        if not isinstance(am, Mapping):
            opts = np.asarray(am, dtype=bool).reshape(n_envs, -1)
            if opts.shape[1] != self.n_logits:
                raise ConfigError(f"info['action_mask'] has {opts.shape[1]} options per env, the action space has {self.n_logits}")
            opts[~present] = True
            options = torch.as_tensor(opts)
        else:
            head_flags = am.get("heads", {})
            for i, h in enumerate(self.heads):
                for name in (h.name, h.key):
                    if name is not None and name in head_flags:
                        flags = np.asarray(head_flags[name], dtype=bool).reshape(n_envs)
                        have = np.asarray(head_flags.get(f"_{name}", np.ones(n_envs, dtype=bool)), dtype=bool) & present
                        heads[:, i] = torch.as_tensor(np.where(have, flags, True))
                        break
            keyed: dict[str, list[int]] = {}
            for i, h in enumerate(self.heads):
                if h.kind == "categorical":
                    keyed.setdefault(h.key if h.key is not None else h.name, []).append(i)
            opt = np.ones((n_envs, self.n_logits), dtype=bool)
            for key, idxs in keyed.items():
                if key not in am:
                    continue
                width = sum(self.heads[i].size for i in idxs)
                vals = np.asarray(am[key], dtype=bool).reshape(n_envs, -1)
                if vals.shape[1] != width:
                    raise ConfigError(f"info['action_mask'][{key!r}] has {vals.shape[1]} options per env, head(s) expect {width}")
                have = np.asarray(am.get(f"_{key}", np.ones(n_envs, dtype=bool)), dtype=bool) & present
                start = self._logit_slice[idxs[0]].start  # type: ignore[union-attr]
                opt[have, start:start + width] = vals[have]
            options = torch.as_tensor(opt)
        # an inactive head's options do not matter; an active head needs one valid option
        for i in self._cat_idx:
            s = self._logit_slice[i]
            assert s is not None
            none_valid = ~options[:, s].any(-1)
            bad = none_valid & heads[:, i]
            if bool(bad.any()):
                env = int(bad.nonzero()[0, 0])
                raise ConfigError(
                    f"info['action_mask'] of env {env} leaves head {self.heads[i].name!r} active with no valid option; "
                    "allow at least one option or mark the head inactive in action_mask['heads']"
                )
            if bool(none_valid.any()):
                options[none_valid, s] = True
        return ActionMasks(heads, options)
