"""Rollouts: the policy steps a vector env; the steps become the flat batch an update reads.

Two collections share one time-major layout ``[T, C]``: ``n_steps`` per env (one column per
env, GAE advantages), or whole episodes in groups that share a context (one column per
episode, padded; episode advantages). The batch lists each column's steps in order, so
the steps of one episode piece are consecutive: a *sequence* (``seq_id``, ``seq_pos``).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import VectorEnv

from .advantages import ADVANTAGE_ESTIMATORS, AdvantageSettings, Trajectories
from .config import PPOConfig
from .policy import ActionMasks, ActorCritic, encode_observation
from .sampling import EliteTarget, optimal_sampling_log

Tensor = torch.Tensor


@dataclass
class RolloutBatch:
    """One rollout, flat [N, ...] in sequence order.

    ``old_logp`` are the log-probs of the distribution the actions were sampled from: the
    policy's, or a behaviour distribution's (``behaviour_is_policy`` False, optimal sampling),
    so ratios against them stay correct importance weights.
    """

    obs: Tensor  # [N, obs_dim]
    actions: Tensor  # [N, D]
    old_logp: Tensor  # [N, H]
    head_mask: Tensor  # [N, H]
    options: Tensor | None  # [N, L]
    advantages: Tensor  # [N]
    returns: Tensor  # [N] value targets
    old_values: Tensor  # [N]
    seq_id: Tensor  # [N] sequence (episode piece) index
    seq_pos: Tensor  # [N] position inside its sequence
    behaviour_is_policy: bool = True

    @property
    def n_sequences(self) -> int:
        return int(self.seq_id.max()) + 1

    def sequence_members(self) -> list[Tensor]:
        """The step indices of each sequence."""
        order = torch.argsort(self.seq_id, stable=True)
        return list(torch.split(order, torch.bincount(self.seq_id, minlength=self.n_sequences).tolist()))


def sequence_rows(
    log_ratio: Tensor, hmask: Tensor, adv: Tensor, seq_id: Tensor, seq_pos: Tensor, per_factor: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Steps [n, H] -> one row per sequence [S, Tmax*H] (the factors of all its steps).

    :param per_factor: keep each step's advantage on its factors (``token`` ratios);
        otherwise the row gets the sequence's one advantage, which must be the same at every
        step (episode advantages are; per-step GAE advantages are not, and are refused)
    """
    uniq, row = torch.unique(seq_id, return_inverse=True)
    S, H = int(uniq.numel()), log_ratio.shape[1]
    Tm = int(seq_pos.max()) + 1
    lr = torch.zeros(S, Tm, H, dtype=log_ratio.dtype).index_put((row, seq_pos), log_ratio)
    mk = torch.zeros(S, Tm, H, dtype=torch.bool).index_put((row, seq_pos), hmask)
    if per_factor:
        a = torch.zeros(S, Tm, H, dtype=adv.dtype).index_put((row, seq_pos), adv.unsqueeze(-1).expand(-1, H))
        return lr.reshape(S, Tm * H), mk.reshape(S, Tm * H), a.reshape(S, Tm * H)
    a = torch.zeros(S, dtype=adv.dtype).index_put((row,), adv)
    if not torch.equal(a[row], adv):
        raise ValueError("a sequence-level ratio needs one advantage per sequence; these differ between its steps")
    return lr.reshape(S, Tm * H), mk.reshape(S, Tm * H), a


def stack_obs(space: gym.Space, items: list[Any]) -> Any:
    """Single-env observations -> one batched observation of ``space``."""
    if isinstance(space, gym.spaces.Dict):
        return {k: np.stack([it[k] for it in items]) for k in space.spaces}
    return np.stack([np.asarray(it) for it in items])


def _column_major(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """[T, C, ...] -> [C*T, ...] (each column's steps in order), keeping the valid steps."""
    flat = x.transpose(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])
    return flat if valid is None else flat[valid.T.reshape(-1)]


class RolloutCollector:
    """Steps a vector env with a policy; keeps the episode statistics (SB3's ep_info_buffer).

    :param env: a vector env with same-step autoreset
    :param policy: the actor-critic that acts
    :param config: the trainer's hyperparameters
    :param rng: draws reset seeds
    :param elite: target of optimal sampling (None: sample from the policy)
    """

    def __init__(
        self, env: VectorEnv, policy: ActorCritic, config: PPOConfig, rng: np.random.Generator, elite: EliteTarget | None = None
    ) -> None:
        self.env = env
        self.policy = policy
        self.config = config
        self.rng = rng
        self.elite = elite
        self.n_envs = env.num_envs
        self.obs_space = env.single_observation_space
        self.ep_returns: deque[float] = deque(maxlen=config.stats_window)
        self.ep_lengths: deque[int] = deque(maxlen=config.stats_window)
        self.env_seed = 0
        self.estimator = ADVANTAGE_ESTIMATORS.get(config.advantage)
        self.advantage_settings = AdvantageSettings(config.gamma, config.gae_lambda, config.pmd_tau)

    def reset(self, seed: int) -> None:
        """Reset every env (env i from seed + i) and the running episode tallies."""
        self.env_seed = seed
        self._obs, self._info = self.env.reset(seed=[seed + i for i in range(self.n_envs)])
        self.env.action_space.seed(seed)
        self._clear_tallies()

    def _clear_tallies(self) -> None:
        self._ep_ret = np.zeros(self.n_envs)
        self._ep_len = np.zeros(self.n_envs, dtype=np.int64)
        self._ep_actions: list[list[np.ndarray]] = [[] for _ in range(self.n_envs)]

    def clear_statistics(self) -> None:
        self.ep_returns.clear()
        self.ep_lengths.clear()

    def state_dict(self) -> dict[str, Any]:
        return {"env_seed": self.env_seed, "ep_returns": list(self.ep_returns), "ep_lengths": list(self.ep_lengths),
                "elite": None if self.elite is None else self.elite.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ep_returns = deque(state["ep_returns"], maxlen=self.config.stats_window)
        self.ep_lengths = deque(state["ep_lengths"], maxlen=self.config.stats_window)
        if self.elite is not None and state["elite"] is not None:
            self.elite.load_state_dict(state["elite"])
        self.reset(int(state["env_seed"]))

    def collect(self) -> tuple[RolloutBatch, int]:
        """One rollout and the number of env steps it counts."""
        return self._collect_episodes() if self.estimator.whole_episodes else self._collect_steps()

    # -- stepping ------------------------------------------------------------------------

    def _masks(self, info: dict[str, Any]) -> ActionMasks | None:
        if not info or "action_mask" not in info:
            return None
        return self.policy.masks_from_info(info, self.n_envs)

    def _behaviour_logits(self, obs_t: Tensor, masks: ActionMasks | None) -> list[Tensor | None] | None:
        if self.elite is None or not self.elite.ready:
            return None
        out: list[Tensor | None] = []
        for h, lp in zip(self.policy.heads, self.policy.categorical_log_probs(obs_t, masks)):
            if lp is None:
                out.append(None)
                continue
            log_q, _ = optimal_sampling_log(lp, self.elite.log_probs(h.name, self._ep_len), self.config.sampling_criterion)
            out.append(log_q.where(torch.isfinite(lp), torch.full_like(log_q, -math.inf)))
        return out

    def _finish_episode(self, i: int) -> None:
        self.ep_returns.append(float(self._ep_ret[i]))
        self.ep_lengths.append(int(self._ep_len[i]))
        if self.elite is not None and self._ep_actions[i]:
            self.elite.observe(float(self._ep_ret[i]), self.policy.categorical_actions(np.stack(self._ep_actions[i])))
        self._ep_ret[i] = 0.0
        self._ep_len[i] = 0
        self._ep_actions[i] = []

    def _step(self, obs_t: Tensor, masks: ActionMasks | None):
        blog = self._behaviour_logits(obs_t, masks)
        actions, logp, values = self.policy.act(obs_t, masks, behaviour_logits=blog)
        obs, rew, term, trunc, info = self.env.step(self.policy.to_env_action(actions))
        rew = np.asarray(rew, dtype=np.float64)
        self._ep_ret += rew
        self._ep_len += 1
        if self.elite is not None:
            a_np = actions.numpy()
            for i in range(self.n_envs):
                self._ep_actions[i].append(a_np[i])
        return actions, logp, values, obs, rew, np.asarray(term, bool), np.asarray(trunc, bool), info

    # -- the two collections -------------------------------------------------------------

    def _collect_steps(self) -> tuple[RolloutBatch, int]:
        cfg, E, T = self.config, self.n_envs, self.config.n_steps
        H = len(self.policy.heads)
        obs_buf = torch.zeros(T, E, self.policy.obs_dim)
        act_buf = torch.zeros(T, E, self.policy.action_dim)
        logp_buf = torch.zeros(T, E, H)
        hmask_buf = torch.ones(T, E, H, dtype=torch.bool)
        opt_buf: Tensor | None = None
        val_buf = torch.zeros(T, E)
        rew_buf = torch.zeros(T, E)
        term_buf = torch.zeros(T, E, dtype=torch.bool)
        trunc_buf = torch.zeros(T, E, dtype=torch.bool)
        final_val = torch.zeros(T, E)
        for t in range(T):
            obs_t = encode_observation(self.obs_space, self._obs)
            masks = self._masks(self._info)
            actions, logp, values, obs, rew, term, trunc, info = self._step(obs_t, masks)
            obs_buf[t], act_buf[t], logp_buf[t], val_buf[t] = obs_t, actions, logp, values
            if masks is not None:
                hmask_buf[t] = masks.heads
                if masks.options is not None:
                    if opt_buf is None:
                        opt_buf = torch.ones(T, E, masks.options.shape[1], dtype=torch.bool)
                    opt_buf[t] = masks.options
            rew_buf[t] = torch.as_tensor(rew, dtype=torch.float32)
            term_buf[t] = torch.as_tensor(term)
            trunc_buf[t] = torch.as_tensor(trunc)
            timeouts = np.nonzero(trunc & ~term)[0]
            if timeouts.size:
                fin_obs = stack_obs(self.obs_space, [info["final_obs"][i] for i in timeouts])
                with torch.no_grad():
                    final_val[t, torch.as_tensor(timeouts)] = self.policy.value(encode_observation(self.obs_space, fin_obs))
            for i in np.nonzero(term | trunc)[0]:
                self._finish_episode(int(i))
            self._obs, self._info = obs, info
        with torch.no_grad():
            last_v = self.policy.value(encode_observation(self.obs_space, self._obs))
        adv, ret = self.estimator(Trajectories(rew_buf, val_buf, term_buf, trunc_buf, last_v, final_val), self.advantage_settings)
        batch = self._batch(obs_buf, act_buf, logp_buf, hmask_buf, opt_buf, adv, ret, val_buf, term_buf | trunc_buf, None)
        return batch, T * E

    def _collect_episodes(self) -> tuple[RolloutBatch, int]:
        """Whole episodes; envs [g*G, (g+1)*G) share a reset seed (one context per group)."""
        cfg, E, G = self.config, self.n_envs, self.config.group_size
        rounds: list[dict[str, Tensor]] = []
        collected = 0
        while collected < cfg.n_steps * E:
            seeds = self.rng.integers(2**31 - 1, size=E // G)
            self._obs, self._info = self.env.reset(seed=[int(seeds[i // G]) for i in range(E)])
            self._clear_tallies()
            alive = np.ones(E, dtype=bool)
            steps: list[dict[str, Tensor]] = []
            while alive.any():
                obs_t = encode_observation(self.obs_space, self._obs)
                masks = self._masks(self._info)
                actions, logp, values, obs, rew, term, trunc, info = self._step(obs_t, masks)
                done = (term | trunc) & alive
                steps.append(dict(
                    obs=obs_t, act=actions, logp=logp, val=values, rew=torch.as_tensor(rew, dtype=torch.float32),
                    hm=masks.heads if masks is not None else torch.ones(E, len(self.policy.heads), dtype=torch.bool),
                    opt=masks.options if masks is not None and masks.options is not None else None,
                    valid=torch.as_tensor(alive.copy()), term=torch.as_tensor(term & alive), trunc=torch.as_tensor(trunc & alive),
                ))
                collected += int(alive.sum())
                for i in np.nonzero(done)[0]:
                    self._finish_episode(int(i))
                alive &= ~done
                self._obs, self._info = obs, info
            rounds.append(self._stack_round(steps))
        t = _pad_and_join(rounds, self.policy.n_logits)
        n_columns = t["rew"].shape[1]
        # a column holds one episode; its env kept stepping (autoreset) until the round ended,
        # and those steps are not the episode's: zero them
        rew, val = t["rew"] * t["valid"], t["val"] * t["valid"]
        # column c is env c % E of round c // E, so its context (group) is c // G
        episodes = Trajectories(rew, val, t["term"], t["trunc"], torch.zeros(n_columns), group_ids=torch.arange(n_columns) // G)
        adv, ret = self.estimator(episodes, self.advantage_settings)
        batch = self._batch(t["obs"], t["act"], t["logp"], t["hm"], t.get("opt"), adv, ret, t["val"], t["term"] | t["trunc"], t["valid"])
        return batch, collected

    def _stack_round(self, steps: list[dict[str, Tensor]]) -> dict[str, Tensor]:
        out = {k: torch.stack([s[k] for s in steps]) for k in steps[0] if k != "opt"}
        if any(s["opt"] is not None for s in steps):
            ones = torch.ones(self.n_envs, self.policy.n_logits, dtype=torch.bool)
            out["opt"] = torch.stack([s["opt"] if s["opt"] is not None else ones for s in steps])
        return out

    def _batch(
        self, obs: Tensor, act: Tensor, logp: Tensor, hmask: Tensor, opt: Tensor | None, adv: Tensor, ret: Tensor,
        val: Tensor, done: Tensor, valid: Tensor | None,
    ) -> RolloutBatch:
        """[T, C] buffers -> the flat batch; a sequence starts each column and after each end."""
        starts = torch.ones_like(done)
        starts[1:] = done[:-1]
        starts = _column_major(starts, valid)
        seq_id = torch.cumsum(starts.long(), 0) - 1
        first = torch.nonzero(starts).squeeze(1)
        seq_pos = torch.arange(seq_id.numel()) - first[seq_id]
        return RolloutBatch(
            _column_major(obs, valid), _column_major(act, valid), _column_major(logp, valid), _column_major(hmask, valid),
            None if opt is None else _column_major(opt, valid), _column_major(adv, valid), _column_major(ret, valid),
            _column_major(val, valid), seq_id, seq_pos, behaviour_is_policy=self.elite is None,
        )


def _pad_and_join(rounds: list[dict[str, Tensor]], n_logits: int) -> dict[str, Tensor]:
    """Rounds of [T_r, E, ...] -> one [max T_r, rounds * E, ...] table (padding: zeros, invalid)."""
    T = max(r["rew"].shape[0] for r in rounds)
    if any("opt" in r for r in rounds):
        for r in rounds:
            r.setdefault("opt", torch.ones(*r["rew"].shape, n_logits, dtype=torch.bool))
    return {k: torch.cat([torch.cat([r[k], r[k].new_zeros(T - r[k].shape[0], *r[k].shape[1:])]) for r in rounds], dim=1)
            for k in rounds[0]}


__all__ = ["RolloutBatch", "RolloutCollector", "sequence_rows", "stack_obs"]
