"""PPO-family trainer over ``gymnasium.vector`` environments.

Rollouts: ``n_steps`` per env with GAE (``advantage="gae"``), or whole episodes in groups of
``group_size`` that share a context (the same reset seed) for ``group``/``loo``/``ploo``.
Updates: minibatch epochs over steps (``aggregation="step"``) or episodes
(``aggregation="sequence"``) with the loss core of ``losses.py``; target-KL early stop,
linear annealing of the learning rate and clip range, exact-resume checkpoints. A step's
active heads are the factors; the steps of an episode form a sequence.

Metrics use Stable-Baselines3's names and go to the sinks given (logging by default; a rich
console table and TensorBoard are opt-in).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Protocol, Sequence

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv

from hadmc.errors import ConfigError

from . import losses as L
from .advantages import episode_advantages, gae
from .config import PPOConfig
from .policy import ActionMasks, ActorCritic, encode_observation
from .sampling import EliteTarget, optimal_sampling_log

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# metric sinks
# ---------------------------------------------------------------------------------------


class MetricsSink(Protocol):
    def write(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class LoggingSink:
    """Metrics as one ``logging`` line per rollout (the default sink)."""

    def write(self, metrics: dict[str, float], step: int) -> None:
        logger.info("step %d | %s", step, " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))

    def close(self) -> None:
        pass


class RichConsoleSink:
    """A rich table of the metrics per rollout, for CLIs and notebooks (opt-in).

    :param console: a ``rich.console.Console`` (None: a new one on stderr)
    :param every: write every ``every`` rollouts
    """

    def __init__(self, console: Any = None, every: int = 1) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.every = max(1, every)
        self._n = 0

    def write(self, metrics: dict[str, float], step: int) -> None:
        self._n += 1
        if self._n % self.every:
            return
        from rich.table import Table

        table = Table(title=f"step {step}", show_header=False)
        for k, v in sorted(metrics.items()):
            table.add_row(k, f"{v:.5g}")
        self.console.print(table)

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Scalars to TensorBoard (``torch.utils.tensorboard``, imported when constructed).

    :param log_dir: event file directory
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ConfigError("TensorBoard logging needs the tensorboard package: pip install 'hadmc[tensorboard]'") from exc
        self.writer = SummaryWriter(str(log_dir))

    def write(self, metrics: dict[str, float], step: int) -> None:
        for k, v in metrics.items():
            if math.isfinite(v):
                self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ---------------------------------------------------------------------------------------
# environments
# ---------------------------------------------------------------------------------------


def make_vector_env(
    env: str | Callable[[], gym.Env], n_envs: int = 1, vectorization: Literal["sync", "async"] = "sync", **make_kwargs: Any
) -> VectorEnv:
    """A ``gymnasium.vector`` env with same-step autoreset (final observations in ``info``).

    :param env: a registered id or a zero-argument factory
    :param n_envs: number of copies
    :param vectorization: ``sync`` (one process) or ``async`` (one process per env)
    """
    fn: Callable[[], gym.Env] = (lambda: gym.make(env, **make_kwargs)) if isinstance(env, str) else env
    kwargs = dict(autoreset_mode=AutoresetMode.SAME_STEP)
    if vectorization == "sync":
        return gym.vector.SyncVectorEnv([fn] * n_envs, **kwargs)
    if vectorization == "async":
        return gym.vector.AsyncVectorEnv([fn] * n_envs, **kwargs)
    raise ConfigError(f"unknown vectorization {vectorization!r}; valid: sync, async")


@dataclass
class _Batch:
    obs: torch.Tensor  # [N, obs_dim]
    actions: torch.Tensor  # [N, D]
    old_logp: torch.Tensor  # [N, H]
    head_mask: torch.Tensor  # [N, H]
    options: torch.Tensor | None  # [N, L]
    advantages: torch.Tensor  # [N]
    returns: torch.Tensor  # [N]
    old_values: torch.Tensor  # [N]
    seq_id: torch.Tensor  # [N] sequence (episode piece) index
    seq_pos: torch.Tensor  # [N] position inside its sequence


class PPOTrainer:
    """Trains an ``ActorCritic`` with the configured PPO-family loss.

    :param env: a ``gymnasium.vector`` env with ``AutoresetMode.SAME_STEP`` (see
        ``make_vector_env``)
    :param config: hyperparameters (a ``PPOConfig`` or a dict)
    :param policy: an existing policy (None: built from the env's spaces and the config)
    :param sinks: metric sinks (None: ``LoggingSink``)
    """

    def __init__(
        self,
        env: VectorEnv,
        config: PPOConfig | dict[str, Any] | None = None,
        policy: ActorCritic | None = None,
        sinks: Sequence[MetricsSink] | None = None,
    ) -> None:
        self.config = config if isinstance(config, PPOConfig) else PPOConfig.build(**(config or {}))
        cfg = self.config
        mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
        if mode not in (AutoresetMode.SAME_STEP, "SameStep"):
            raise ConfigError("the vector env must use autoreset_mode=AutoresetMode.SAME_STEP; build it with hadmc.agents.make_vector_env")
        self.env = env
        self.n_envs = env.num_envs
        if cfg.advantage != "gae" and self.n_envs % cfg.group_size:
            raise ConfigError(f"group_size {cfg.group_size} must divide the number of envs {self.n_envs}")
        if cfg.torch_threads is not None:
            torch.set_num_threads(cfg.torch_threads)
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.obs_space = env.single_observation_space
        self.policy = policy if policy is not None else ActorCritic(
            self.obs_space, env.single_action_space, tuple(cfg.hidden_sizes), cfg.activation,
            cfg.log_std_init, cfg.separate_critic,
        )
        # kept as a list: clipping and zeroing then skip walking the module tree every step
        self._params = [q for q in self.policy.parameters() if q.requires_grad]
        self.optimizer = _adam(self._params, cfg.learning_rate)
        self.p_module: L.LearnedPower | None = None
        self.p_optimizer: torch.optim.Optimizer | None = None
        if cfg.learn_p:
            self.p_module = L.LearnedPower(cfg.p_start, cfg.p_bound)
            self.p_optimizer = torch.optim.Adam(self.p_module.parameters(), lr=cfg.p_lr)
        self.loss_spec = L.get_policy_loss(cfg.loss)
        self.base_mode = L.parse_ratio_mode(cfg.ratio_mode)
        self.sinks: list[MetricsSink] = list(sinks) if sinks is not None else [LoggingSink()]
        self.num_timesteps = 0
        self.iteration = 0
        self.total_timesteps = 0
        self.ep_returns: deque[float] = deque(maxlen=cfg.stats_window)
        self.ep_lengths: deque[int] = deque(maxlen=cfg.stats_window)
        self.rew_history: list[float] = []
        self.mode_history: list[str] = []
        self.elite = None
        if cfg.behaviour == "optimal-elite":
            sizes = {h.name: h.size for h in self.policy.heads if h.kind == "categorical"}
            if not sizes:
                raise ConfigError("behaviour 'optimal-elite' needs at least one categorical head")
            self.elite = EliteTarget(sizes, cfg.n_elite)
        self.metrics: dict[str, float] = {}
        self._reset_envs(int(self.rng.integers(2**31 - 1)))

    # -- helpers -------------------------------------------------------------------------

    def _reset_envs(self, seed: int) -> None:
        self._env_seed = seed
        obs, info = self.env.reset(seed=[seed + i for i in range(self.n_envs)])
        self.env.action_space.seed(seed)
        self._obs, self._info = obs, info
        self._ep_ret = np.zeros(self.n_envs)
        self._ep_len = np.zeros(self.n_envs, dtype=np.int64)
        self._ep_actions: list[list[np.ndarray]] = [[] for _ in range(self.n_envs)]

    def _masks(self, info: dict[str, Any]) -> ActionMasks | None:
        if not info or "action_mask" not in info:
            return None
        return self.policy.masks_from_info(info, self.n_envs)

    def _progress(self) -> float:
        return min(1.0, self.num_timesteps / max(1, self.total_timesteps))

    def _current_lr(self) -> float:
        cfg = self.config
        return cfg.learning_rate * (1.0 - self._progress()) if cfg.lr_schedule == "linear" else cfg.learning_rate

    def _current_clip(self) -> tuple[float, float]:
        cfg = self.config
        scale = (1.0 - self._progress()) if cfg.clip_schedule == "linear" else 1.0
        low = cfg.clip_range_low if cfg.clip_range_low is not None else cfg.clip_range
        high = cfg.clip_range_high if cfg.clip_range_high is not None else cfg.clip_range
        return low * scale, high * scale

    def _current_mode_and_p(self) -> tuple[L.RatioMode, float | torch.Tensor | None]:
        cfg = self.config
        mode = self.base_mode
        if cfg.adaptive_mean:
            name = L.select_ratio_mean(self.rew_history, cfg.volatility_threshold, cfg.progress_threshold, cfg.adaptive_window)
            self.mode_history.append(name)
            mode = L.parse_ratio_mode(name)
        if mode.kind != "power":
            return mode, None
        if self.p_module is not None:
            return L.RatioMode("power", None), self.p_module()
        if mode.p is None or (cfg.p_schedule is not None and not cfg.adaptive_mean):
            return L.RatioMode("power", None), L.scheduled_p(cfg.p_schedule or "constant", cfg.p_start, cfg.p_end, self._progress())
        return mode, mode.p

    def _behaviour_logits(self, obs_t: torch.Tensor, masks: ActionMasks | None) -> list[torch.Tensor | None] | None:
        if self.elite is None or not self.elite.ready:
            return None
        lps = self.policy.categorical_log_probs(obs_t, masks)
        out: list[torch.Tensor | None] = []
        for h, lp in zip(self.policy.heads, lps):
            if lp is None:
                out.append(None)
                continue
            target = self.elite.log_probs(h.name, self._ep_len)
            log_q, _ = optimal_sampling_log(lp, target, self.config.sampling_criterion)
            out.append(log_q.where(torch.isfinite(lp), torch.full_like(log_q, -math.inf)))
        return out

    def _finish_episode(self, i: int) -> None:
        self.ep_returns.append(float(self._ep_ret[i]))
        self.ep_lengths.append(int(self._ep_len[i]))
        if self.elite is not None and self._ep_actions[i]:
            acts = np.stack(self._ep_actions[i])
            per_head = {h.name: acts[:, self.policy._col_slice[j].start].astype(np.int64)
                        for j, h in enumerate(self.policy.heads) if h.kind == "categorical"}
            self.elite.observe(float(self._ep_ret[i]), per_head)
        self._ep_ret[i] = 0.0
        self._ep_len[i] = 0
        self._ep_actions[i] = []

    def _env_step(self, obs_t: torch.Tensor, masks: ActionMasks | None):
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

    # -- rollouts ------------------------------------------------------------------------

    def _collect_gae(self) -> _Batch:
        cfg, E, T = self.config, self.n_envs, self.config.n_steps
        obs_buf = torch.zeros(T, E, self._obs_dim())
        act_buf = torch.zeros(T, E, self.policy.action_dim)
        logp_buf = torch.zeros(T, E, len(self.policy.heads))
        hmask_buf = torch.ones(T, E, len(self.policy.heads), dtype=torch.bool)
        opt_buf: torch.Tensor | None = None
        val_buf = torch.zeros(T, E)
        rew_buf = torch.zeros(T, E)
        term_buf = torch.zeros(T, E, dtype=torch.bool)
        trunc_buf = torch.zeros(T, E, dtype=torch.bool)
        final_val = torch.zeros(T, E)
        for t in range(T):
            obs_t = encode_observation(self.obs_space, self._obs)
            masks = self._masks(self._info)
            actions, logp, values, obs, rew, term, trunc, info = self._env_step(obs_t, masks)
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
            done = term | trunc
            if trunc.any():
                idx = np.nonzero(trunc & ~term)[0]
                if idx.size:
                    fin = info["final_obs"]
                    fin_obs = _stack_obs(self.obs_space, [fin[i] for i in idx])
                    with torch.no_grad():
                        final_val[t, torch.as_tensor(idx)] = self.policy.value(encode_observation(self.obs_space, fin_obs))
            for i in np.nonzero(done)[0]:
                self._finish_episode(int(i))
            self._obs, self._info = obs, info
            self.num_timesteps += E
        with torch.no_grad():
            last_v = self.policy.value(encode_observation(self.obs_space, self._obs))
        adv, ret = gae(rew_buf, val_buf, term_buf, trunc_buf, last_v, final_val, cfg.gamma, cfg.gae_lambda)
        # sequences: runs of steps of one env between episode ends (or rollout edges)
        done = (term_buf | trunc_buf).T.reshape(-1)  # env-major order
        starts = torch.cat([torch.ones(1, dtype=torch.bool), done[:-1]]) | (torch.arange(E * T) % T == 0)
        seq_id = torch.cumsum(starts.long(), 0) - 1
        first = torch.nonzero(starts).squeeze(1)
        seq_pos = torch.arange(E * T) - first[seq_id]

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.transpose(0, 1).reshape(E * T, *x.shape[2:])

        return _Batch(flat(obs_buf), flat(act_buf), flat(logp_buf), flat(hmask_buf),
                      None if opt_buf is None else flat(opt_buf), flat(adv), flat(ret), flat(val_buf), seq_id, seq_pos)

    def _collect_episodes(self) -> tuple[_Batch, torch.Tensor]:
        """Whole episodes; envs [g*G, (g+1)*G) share a reset seed (one context per group)."""
        cfg, E, G = self.config, self.n_envs, self.config.group_size
        steps: list[dict[str, Any]] = []
        ep_returns: list[float] = []
        ep_groups: list[int] = []
        collected = 0
        group_base = 0
        while collected < cfg.n_steps * E:
            seeds = self.rng.integers(2**31 - 1, size=E // G)
            obs, info = self.env.reset(seed=[int(seeds[i // G]) for i in range(E)])
            self._obs, self._info = obs, info
            self._ep_ret[:] = 0.0
            self._ep_len[:] = 0
            self._ep_actions = [[] for _ in range(E)]
            alive = np.ones(E, dtype=bool)
            ep_index = np.arange(E) + len(ep_returns)
            ep_returns.extend([0.0] * E)
            ep_groups.extend([group_base + i // G for i in range(E)])
            group_base += E // G
            while alive.any():
                obs_t = encode_observation(self.obs_space, self._obs)
                masks = self._masks(self._info)
                actions, logp, values, obs, rew, term, trunc, info = self._env_step(obs_t, masks)
                for i in np.nonzero(alive)[0]:
                    steps.append(dict(
                        obs=obs_t[i], act=actions[i], logp=logp[i], val=values[i], rew=float(rew[i]),
                        hm=None if masks is None else masks.heads[i],
                        opt=None if masks is None or masks.options is None else masks.options[i],
                        ep=int(ep_index[i]),
                    ))
                    ep_returns[ep_index[i]] += float(rew[i])
                    collected += 1
                done = (term | trunc) & alive
                for i in np.nonzero(done)[0]:
                    self._finish_episode(int(i))
                alive &= ~done
                self._obs, self._info = obs, info
        self.num_timesteps += collected
        returns = torch.tensor(ep_returns, dtype=torch.float32)
        groups = torch.tensor(ep_groups)
        ep_adv = episode_advantages(cfg.advantage, returns, groups, cfg.pmd_tau)
        ep = torch.tensor([s["ep"] for s in steps])
        order = torch.argsort(ep, stable=True)
        ep = ep[order]
        pick = [steps[int(k)] for k in order]
        rew = torch.tensor([s["rew"] for s in pick])
        # value targets: discounted returns-to-go (the critic is only a diagnostic here)
        ret = torch.zeros_like(rew)
        running = 0.0
        for k in range(len(pick) - 1, -1, -1):
            if k == len(pick) - 1 or ep[k + 1] != ep[k]:
                running = 0.0
            running = float(rew[k]) + cfg.gamma * running
            ret[k] = running
        starts = torch.cat([torch.ones(1, dtype=torch.bool), ep[1:] != ep[:-1]])
        seq_id = torch.cumsum(starts.long(), 0) - 1
        first = torch.nonzero(starts).squeeze(1)
        H = len(self.policy.heads)
        hm = torch.stack([s["hm"] if s["hm"] is not None else torch.ones(H, dtype=torch.bool) for s in pick])
        has_opt = any(s["opt"] is not None for s in pick)
        opt = torch.stack([s["opt"] if s["opt"] is not None else torch.ones(self.policy.n_logits, dtype=torch.bool) for s in pick]) if has_opt else None
        batch = _Batch(
            torch.stack([s["obs"] for s in pick]), torch.stack([s["act"] for s in pick]),
            torch.stack([s["logp"] for s in pick]), hm, opt, ep_adv[ep], ret,
            torch.stack([s["val"] for s in pick]), seq_id, torch.arange(len(pick)) - first[seq_id],
        )
        return batch, returns

    def _obs_dim(self) -> int:
        return self.policy.trunk[0].in_features

    # -- update --------------------------------------------------------------------------

    def _update(self, batch: _Batch) -> dict[str, float]:
        cfg = self.config
        lr = self._current_lr()
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        clip_low, clip_high = self._current_clip()
        mode, p = self._current_mode_and_p()
        normalize = cfg.normalize_advantage if cfg.normalize_advantage is not None else (cfg.advantage == "gae" and self.loss_spec.uses_ratio_mode)
        sequence = cfg.aggregation == "sequence"
        n_units = int(batch.seq_id.max()) + 1 if sequence else batch.obs.shape[0]
        seq_members: list[torch.Tensor] = []
        if sequence:
            order = torch.argsort(batch.seq_id, stable=True)
            counts = torch.bincount(batch.seq_id, minlength=n_units)
            seq_members = list(torch.split(order, counts.tolist()))
        # a rollout without masks (every head active, every option valid, e.g. CartPole)
        # skips the mask machinery: no masked fills, products or boolean row selection
        unmasked = batch.options is None and bool(batch.head_mask.all())
        # metrics stay tensors until the end of the update: no per-minibatch syncs to Python
        pg_losses: list[torch.Tensor] = []
        v_losses: list[torch.Tensor] = []
        ent_losses: list[torch.Tensor] = []
        kls: list[torch.Tensor] = []
        clipfracs: list[torch.Tensor] = []
        n_updates = 0
        stop = False
        for _epoch in range(cfg.n_epochs):
            perm = torch.randperm(n_units, generator=self.shuffle_gen)
            for start in range(0, n_units, cfg.batch_size):
                units = perm[start:start + cfg.batch_size]
                idx = torch.cat([seq_members[int(u)] for u in units]) if sequence else units
                hmask = batch.head_mask[idx]
                masks = None if unmasked else ActionMasks(hmask, None if batch.options is None else batch.options[idx])
                logp, ent, values = self.policy.evaluate(batch.obs[idx], batch.actions[idx], masks)
                log_ratio = (logp - batch.old_logp[idx])
                adv = batch.advantages[idx]
                if normalize and adv.numel() > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                if sequence:
                    rows_lr, rows_mask, rows_adv = _to_sequences(log_ratio, hmask, adv, batch.seq_id[idx], batch.seq_pos[idx], token=mode.kind == "token" and self.loss_spec.uses_ratio_mode)
                else:
                    rows_lr, rows_mask, rows_adv = log_ratio, (None if unmasked else hmask), adv
                per_row = L.policy_loss(
                    cfg.loss, rows_lr, rows_mask, rows_adv, mode=mode, p=p, clip_low=clip_low, clip_high=clip_high,
                    dual_clip=cfg.dual_clip, stop_gradient=cfg.stop_gradient, log_space_clip=cfg.log_space_clip, tau=cfg.pmd_tau,
                )
                if rows_mask is None:
                    pg_loss = per_row.mean()
                else:
                    nonempty = rows_mask.any(-1)
                    pg_loss = per_row[nonempty].mean() if bool(nonempty.any()) else per_row.sum() * 0.0
                v_loss = L.value_loss(values, batch.returns[idx], batch.old_values[idx], cfg.clip_range_vf)
                ent_loss = -(ent.sum(-1) if unmasked else L.entropy_per_row(ent, hmask)).mean()
                loss = pg_loss + cfg.vf_coef * v_loss
                if cfg.ent_coef != 0.0:
                    # with ent_coef 0 the entropy is only reported: keeping it out of the graph
                    # spares its backward pass (its gradient would be exactly 0)
                    loss = loss + cfg.ent_coef * ent_loss
                with torch.no_grad():
                    step_lr = log_ratio.sum(-1) if unmasked else L.masked_sum(log_ratio, hmask)
                    kl = L.approx_kl(step_lr)
                    unit_lr = log_ratio if mode.kind == "token" else step_lr.unsqueeze(-1)
                    unit_mask = None if unmasked else (hmask if mode.kind == "token" else hmask.any(-1, keepdim=True))
                    clipfracs.append(L.clip_fraction(unit_lr, unit_mask, clip_low, clip_high))
                kls.append(kl)
                if cfg.target_kl is not None and float(kl) > 1.5 * cfg.target_kl:
                    stop = True
                    break
                self.optimizer.zero_grad(set_to_none=True)
                if self.p_optimizer is not None:
                    self.p_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self._params, cfg.max_grad_norm, foreach=True)
                self.optimizer.step()
                if self.p_optimizer is not None:
                    self.p_optimizer.step()
                    assert self.p_module is not None
                    p = self.p_module()
                n_updates += 1
                pg_losses.append(pg_loss.detach())
                v_losses.append(v_loss.detach())
                ent_losses.append(ent_loss.detach())
            if stop:
                break
        ev = L.explained_variance(batch.old_values, batch.returns)
        out = {
            "train/policy_gradient_loss": _mean(pg_losses),
            "train/value_loss": _mean(v_losses),
            "train/entropy_loss": _mean(ent_losses),
            "train/approx_kl": _mean(kls),
            "train/clip_fraction": _mean(clipfracs),
            "train/explained_variance": ev,
            "train/learning_rate": lr,
            "train/clip_range": clip_high,
            "train/n_updates": float(n_updates),
            "train/early_stop": float(stop),
        }
        if mode.kind == "power" or p is not None:
            out["train/p"] = float(p.detach()) if isinstance(p, torch.Tensor) else float(p if p is not None else mode.p)  # type: ignore[arg-type]
        return out

    # -- public --------------------------------------------------------------------------

    def learn(self, total_timesteps: int, reset_num_timesteps: bool = False) -> "PPOTrainer":
        """Train until ``total_timesteps`` environment steps (across envs) have been taken.

        :param total_timesteps: the target count (schedules anneal over it)
        :param reset_num_timesteps: start counting from 0 instead of continuing
        """
        if total_timesteps <= 0:
            raise ConfigError(f"total_timesteps must be > 0, got {total_timesteps}")
        if reset_num_timesteps:
            self.num_timesteps = 0
        self.total_timesteps = int(total_timesteps)
        while self.num_timesteps < self.total_timesteps:
            t0 = time.perf_counter()
            start_steps = self.num_timesteps
            if self.config.advantage == "gae":
                batch = self._collect_gae()
            else:
                batch, _ = self._collect_episodes()
            train_metrics = self._update(batch)
            self.iteration += 1
            rew_mean = float(np.mean(self.ep_returns)) if self.ep_returns else float("nan")
            if self.ep_returns:
                self.rew_history.append(rew_mean)
            dt = time.perf_counter() - t0
            self.metrics = {
                **train_metrics,
                "rollout/ep_rew_mean": rew_mean,
                "rollout/ep_len_mean": float(np.mean(self.ep_lengths)) if self.ep_lengths else float("nan"),
                "time/fps": (self.num_timesteps - start_steps) / max(dt, 1e-9),
                "time/iterations": float(self.iteration),
                "time/total_timesteps": float(self.num_timesteps),
            }
            for sink in self.sinks:
                sink.write(self.metrics, self.num_timesteps)
        return self

    def predict(self, obs: Any, info: dict[str, Any] | None = None, deterministic: bool = True) -> Any:
        """Batched env actions for batched observations (masks from a vector ``info``)."""
        obs_t = encode_observation(self.obs_space, obs)
        masks = self.policy.masks_from_info(info, obs_t.shape[0]) if info else None
        actions, _, _ = self.policy.act(obs_t, masks, deterministic=deterministic)
        return self.policy.to_env_action(actions)

    def save(self, path: str | Path) -> Path:
        """Checkpoint everything a resume needs; the envs restart from a seed stored in it.

        Saving re-seeds and resets the envs, so the run that goes on and a run resumed from
        this file see the same environment stream: resuming is exact.
        """
        seed = int(self.rng.integers(2**31 - 1))
        self._reset_envs(seed)
        state = {
            "format": "hadmc.agents.ppo/1",
            "config": self.config.model_dump(mode="json"),
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "p_module": None if self.p_module is None else self.p_module.state_dict(),
            "p_optimizer": None if self.p_optimizer is None else self.p_optimizer.state_dict(),
            "num_timesteps": self.num_timesteps,
            "total_timesteps": self.total_timesteps,
            "iteration": self.iteration,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle_gen.get_state(),
            "numpy_rng": _jsonable(self.rng.bit_generator.state),
            "env_seed": seed,
            "ep_returns": list(self.ep_returns),
            "ep_lengths": list(self.ep_lengths),
            "rew_history": list(self.rew_history),
            "elite": None if self.elite is None else [(r, {k: v.tolist() for k, v in a.items()}) for r, a in self.elite._elite],
        }
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(state, tmp)
        tmp.replace(path)
        return path

    def load(self, path: str | Path) -> "PPOTrainer":
        """Restore a checkpoint written by ``save`` (weights-only unpickling)."""
        try:
            state = torch.load(Path(path), weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"checkpoint {path} does not exist") from None
        if not isinstance(state, dict) or state.get("format") != "hadmc.agents.ppo/1":
            raise ConfigError(f"{path} is not a hadmc PPO checkpoint")
        if state["config"] != self.config.model_dump(mode="json"):
            raise ConfigError(f"checkpoint {path} was written with a different PPOConfig; build the trainer with that config to resume")
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.p_module is not None and state["p_module"] is not None:
            self.p_module.load_state_dict(state["p_module"])
            assert self.p_optimizer is not None
            self.p_optimizer.load_state_dict(state["p_optimizer"])
        self.num_timesteps = int(state["num_timesteps"])
        self.total_timesteps = int(state["total_timesteps"])
        self.iteration = int(state["iteration"])
        torch.set_rng_state(state["torch_rng"])
        self.shuffle_gen.set_state(state["shuffle_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.ep_returns = deque(state["ep_returns"], maxlen=self.config.stats_window)
        self.ep_lengths = deque(state["ep_lengths"], maxlen=self.config.stats_window)
        self.rew_history = list(state["rew_history"])
        if self.elite is not None and state["elite"] is not None:
            self.elite._elite = [(r, {k: np.asarray(v) for k, v in a.items()}) for r, a in state["elite"]]
        self._reset_envs(int(state["env_seed"]))
        return self

    def close(self) -> None:
        """Close the sinks (the env belongs to the caller)."""
        for sink in self.sinks:
            sink.close()


def _to_sequences(
    log_ratio: torch.Tensor, hmask: torch.Tensor, adv: torch.Tensor, seq_id: torch.Tensor, seq_pos: torch.Tensor, token: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Steps [n, H] -> padded sequences [S, Tmax*H] (factors of all steps of an episode)."""
    uniq, row = torch.unique(seq_id, return_inverse=True)
    S, H = int(uniq.numel()), log_ratio.shape[1]
    Tm = int(seq_pos.max()) + 1
    lr = torch.zeros(S, Tm, H, dtype=log_ratio.dtype)
    mk = torch.zeros(S, Tm, H, dtype=torch.bool)
    lr = lr.index_put((row, seq_pos), log_ratio)
    mk = mk.index_put((row, seq_pos), hmask)
    if token:
        a = torch.zeros(S, Tm, H, dtype=adv.dtype).index_put((row, seq_pos), adv.unsqueeze(-1).expand(-1, H))
        return lr.reshape(S, Tm * H), mk.reshape(S, Tm * H), a.reshape(S, Tm * H)
    # one advantage per episode (episode advantages are constant over its steps)
    a = torch.zeros(S, dtype=adv.dtype).index_put((row,), adv)
    return lr.reshape(S, Tm * H), mk.reshape(S, Tm * H), a


def _stack_obs(space: gym.Space, items: list[Any]) -> Any:
    if isinstance(space, gym.spaces.Dict):
        return {k: np.stack([it[k] for it in items]) for k in space.spaces}
    return np.stack([np.asarray(it) for it in items])


def _mean(xs: list[torch.Tensor]) -> float:
    return float(torch.stack(xs).mean()) if xs else float("nan")


def _adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with SB3's eps 1e-5; the fused kernel (one pass over all parameters) where this
    torch build has it for the parameters' device, else the multi-tensor (foreach) one."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr, eps=1e-5, foreach=True)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.integer):
        return int(x)
    return x
