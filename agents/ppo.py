"""PPO-family trainer over ``gymnasium.vector`` environments (SB3's ``PPO``: collect, train, learn).

``collect_rollouts`` gathers ``n_steps`` per env with GAE, or whole episodes in groups that
share a context for ``group``/``loo``/``ploo`` (``rollout.py``). ``train`` runs minibatch
epochs over steps (``aggregation="step"``) or episodes (``"sequence"``) with the loss core of
``losses.py``: target-KL early stop, linear annealing of the learning rate and clip range.
``save``/``load`` resume exactly. A step's active heads are the factors; the steps of an
episode form a sequence. Metrics carry Stable-Baselines3's names and meanings.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from gymnasium.vector import VectorEnv

from hadmc.errors import ConfigError

from . import losses as L
from .checkpoint import read_checkpoint, write_checkpoint
from .config import PPOConfig
from .logger import LoggingSink, MetricsSink, RichConsoleSink, TensorBoardSink
from .policy import ActionMasks, ActorCritic, encode_observation
from .rollout import RolloutBatch, RolloutCollector, sequence_rows
from .sampling import EliteTarget
from .vector_env import check_same_step_autoreset, make_vector_env


class PPOTrainer:
    """Trains an ``ActorCritic`` with the configured PPO-family loss.

    With episode advantages (``group``, ``loo``, ``ploo``) the critic is only a diagnostic:
    it reads the trunk without sending gradient into it, and its gradient norm is clipped
    on its own, so it cannot move or shrink the policy's update.

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
        check_same_step_autoreset(env)
        self.env = env
        self.n_envs = env.num_envs
        if cfg.whole_episodes and self.n_envs % cfg.group_size:
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
        self.loss_spec = L.get_policy_loss(cfg.loss)
        self.base_mode = L.parse_ratio_mode(cfg.ratio_mode)
        self.diagnostic_critic = cfg.whole_episodes
        self.normalize_advantage = cfg.normalizes_advantage
        # parameter groups whose gradient norms are clipped apart (kept as lists: no module walk per step)
        if self.diagnostic_critic:
            self._clip_groups = [self.policy.actor_parameters(), self.policy.critic_parameters()]
        else:
            self._clip_groups = [list(self.policy.parameters())]
        self.optimizer = _adam([q for group in self._clip_groups for q in group], cfg.learning_rate)
        self.p_module = L.LearnedPower(cfg.p_start, cfg.p_bound) if cfg.learn_p else None
        if self.p_module is not None:  # p learns at its own rate, outside the gradient clip
            self.optimizer.add_param_group({"params": list(self.p_module.parameters()), "lr": cfg.p_lr, "eps": 1e-8})
        self.elite = EliteTarget.for_heads(self.policy.heads, cfg.n_elite) if cfg.behaviour == "optimal-elite" else None
        self.collector = RolloutCollector(env, self.policy, cfg, self.rng, self.elite)
        self.sinks: list[MetricsSink] = list(sinks) if sinks is not None else [LoggingSink()]
        self.num_timesteps = 0
        self.total_timesteps = 0
        self.iteration = 0
        self.n_updates = 0
        self.rew_history: list[float] = []
        self.mode_history: list[str] = []
        self.metrics: dict[str, float] = {}
        self.collector.reset(int(self.rng.integers(2**31 - 1)))

    @property
    def ep_returns(self):
        """Returns of the last ``stats_window`` finished episodes."""
        return self.collector.ep_returns

    @property
    def ep_lengths(self):
        return self.collector.ep_lengths

    # -- schedules -----------------------------------------------------------------------

    def _progress(self) -> float:
        return min(1.0, self.num_timesteps / max(1, self.total_timesteps))

    def _current_mode(self) -> tuple[L.RatioMode, float | None]:
        """The ratio mode of this update and its fixed p (None: learned or not a power mode)."""
        cfg = self.config
        if cfg.adaptive_mean:
            name = L.select_ratio_mean(self.rew_history, cfg.volatility_threshold, cfg.progress_threshold, cfg.adaptive_window)
            self.mode_history.append(name)
            mode = L.parse_ratio_mode(name)
            return mode, mode.p
        if self.p_module is not None:
            return self.base_mode, None
        if cfg.p_schedule is not None:
            return self.base_mode, L.scheduled_p(cfg.p_schedule, cfg.p_start, cfg.p_end, self._progress())
        return self.base_mode, self.base_mode.p

    # -- SB3's collect / train -------------------------------------------------------------

    def collect_rollouts(self) -> RolloutBatch:
        """One rollout with the current policy; advances ``num_timesteps``."""
        batch, steps = self.collector.collect()
        self.num_timesteps += steps
        return batch

    def train(self, batch: RolloutBatch) -> dict[str, float]:
        """``n_epochs`` passes of minibatches over ``batch``; returns the ``train/`` metrics.

        As in SB3: the losses and clip fraction average every minibatch seen, ``approx_kl``
        the last epoch's, ``n_updates`` counts epochs over the trainer's life, and a minibatch
        whose KL passes 1.5 * ``target_kl`` ends the update before its gradient step.
        """
        cfg = self.config
        lr = cfg.learning_rate_at(self._progress())
        self.optimizer.param_groups[0]["lr"] = lr
        clip = cfg.clip_range_at(self._progress())
        mode, fixed_p = self._current_mode()
        settings = L.LossSettings(mode, fixed_p, clip[0], clip[1], cfg.dual_clip, cfg.stop_gradient, cfg.log_space_clip, cfg.pmd_tau)
        sequence = cfg.aggregation == "sequence"
        members = batch.sequence_members() if sequence else []
        n_units = len(members) if sequence else batch.obs.shape[0]
        # a rollout without masks (every head active, every option valid, e.g. CartPole)
        # skips the mask machinery: no masked fills, products or boolean row selection
        unmasked = batch.options is None and bool(batch.head_mask.all())
        # KL is the policy's own movement since this update began, whatever sampled the actions
        if batch.behaviour_is_policy:
            start_logp = batch.old_logp
        else:
            with torch.no_grad():
                start_logp = self.policy.evaluate(batch.obs, batch.actions, None if unmasked else ActionMasks(batch.head_mask, batch.options))[0]
        sums: dict[str, list[torch.Tensor]] = {"pg": [], "v": [], "ent": [], "clip": []}
        stop = False
        for _epoch in range(cfg.n_epochs):
            kls: list[torch.Tensor] = []
            perm = torch.randperm(n_units, generator=self.shuffle_gen)
            for start in range(0, n_units, cfg.batch_size):
                units = perm[start:start + cfg.batch_size]
                idx = torch.cat([members[int(u)] for u in units]) if sequence else units
                loss, parts, kl = self._minibatch(batch, idx, start_logp, settings, sequence, unmasked)
                for key, value in parts.items():
                    sums[key].append(value)
                kls.append(kl)
                if cfg.target_kl is not None and float(kl) > 1.5 * cfg.target_kl:
                    stop = True
                    break
                self._gradient_step(loss)
            self.n_updates += 1
            if stop:
                break
        out = {
            "train/policy_gradient_loss": _mean(sums["pg"]), "train/value_loss": _mean(sums["v"]),
            "train/entropy_loss": _mean(sums["ent"]), "train/approx_kl": _mean(kls), "train/loss": float(loss.detach()),
            "train/explained_variance": L.explained_variance(batch.old_values, batch.returns),
            "train/learning_rate": lr, "train/n_updates": float(self.n_updates), "train/early_stop": float(stop),
        }
        if self.loss_spec.uses_ratio_mode:
            out["train/clip_fraction"] = _mean(sums["clip"])
            out["train/clip_range"] = clip[1]
        if mode.kind == "power":
            out["train/p"] = float(self.p_module().detach()) if self.p_module is not None else float(fixed_p)  # type: ignore[arg-type]
        if self.policy.log_std is not None:
            out["train/std"] = float(self.policy.log_std.detach().exp().mean())
        return out

    def _minibatch(
        self, batch: RolloutBatch, idx: torch.Tensor, start_logp: torch.Tensor, settings: L.LossSettings, sequence: bool, unmasked: bool,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
        """(loss, detached loss parts, approx KL) of one minibatch."""
        cfg = self.config
        hmask = batch.head_mask[idx]
        masks = None if unmasked else ActionMasks(hmask, None if batch.options is None else batch.options[idx])
        logp, ent, values = self.policy.evaluate(batch.obs[idx], batch.actions[idx], masks, self.diagnostic_critic)
        log_ratio = logp - batch.old_logp[idx]
        adv = batch.advantages[idx]
        if self.normalize_advantage and adv.numel() > 1:
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        if sequence:
            per_factor = settings.mode.kind == "token" and self.loss_spec.uses_ratio_mode
            rows_lr, rows_mask, rows_adv = sequence_rows(log_ratio, hmask, adv, batch.seq_id[idx], batch.seq_pos[idx], per_factor)
        else:
            rows_lr, rows_mask, rows_adv = log_ratio, (None if unmasked else hmask), adv
        if self.p_module is not None:
            settings = dataclasses.replace(settings, p=self.p_module())
        pg_loss = L.mean_over_rows(self.loss_spec.fn(rows_lr, rows_mask, rows_adv, settings), rows_mask)
        v_loss = L.value_loss(values, batch.returns[idx], batch.old_values[idx], cfg.clip_range_vf)
        ent_loss = -(ent.sum(-1) if unmasked else L.entropy_per_row(ent, hmask)).mean()
        loss = pg_loss + cfg.vf_coef * v_loss
        if cfg.ent_coef != 0.0:
            # with ent_coef 0 the entropy is only reported: keeping it out of the graph
            # spares its backward pass (its gradient would be exactly 0)
            loss = loss + cfg.ent_coef * ent_loss
        with torch.no_grad():
            parts = {"pg": pg_loss.detach(), "v": v_loss.detach(), "ent": ent_loss.detach()}
            if self.loss_spec.uses_ratio_mode:
                unit_lr, unit_mask = L.clipped_log_ratios(rows_lr, rows_mask, settings.mode, settings.p, cfg.stop_gradient)
                parts["clip"] = L.clip_fraction(unit_lr, unit_mask, settings.clip_low, settings.clip_high)
            step_sum = (lambda x: x.sum(-1)) if unmasked else (lambda x: L.masked_sum(x, hmask))
            # actions sampled from q instead of pi_start are weighted by pi_start / q
            weights = None if batch.behaviour_is_policy else torch.exp(step_sum(start_logp[idx] - batch.old_logp[idx]))
            kl = L.approx_kl(step_sum(logp - start_logp[idx]), weights)
        return loss, parts, kl

    def _gradient_step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for group in self._clip_groups:
            torch.nn.utils.clip_grad_norm_(group, self.config.max_grad_norm, foreach=True)
        self.optimizer.step()

    # -- public --------------------------------------------------------------------------

    def learn(self, total_timesteps: int, reset_num_timesteps: bool = True) -> "PPOTrainer":
        """Collect and train until ``total_timesteps`` more environment steps (across envs).

        :param total_timesteps: steps to take in this call (schedules anneal over them)
        :param reset_num_timesteps: count from 0, with fresh episodes and statistics (SB3's
            default); False continues the count, e.g. after ``load``
        """
        if total_timesteps <= 0:
            raise ConfigError(f"total_timesteps must be > 0, got {total_timesteps}")
        if reset_num_timesteps:
            self.num_timesteps = 0
            self.iteration = 0
            self.collector.clear_statistics()
            self.collector.reset(int(self.rng.integers(2**31 - 1)))
        self.total_timesteps = self.num_timesteps + int(total_timesteps)
        while self.num_timesteps < self.total_timesteps:
            t0 = time.perf_counter()
            start_steps = self.num_timesteps
            train_metrics = self.train(self.collect_rollouts())
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
        this file see the same environment stream: resuming (``learn(n,
        reset_num_timesteps=False)``) is exact.
        """
        self.collector.reset(int(self.rng.integers(2**31 - 1)))
        state = {
            "policy": self.policy.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "p_module": None if self.p_module is None else self.p_module.state_dict(),
            "num_timesteps": self.num_timesteps,
            "total_timesteps": self.total_timesteps,
            "iteration": self.iteration,
            "n_updates": self.n_updates,
            "torch_rng": torch.get_rng_state(),
            "shuffle_rng": self.shuffle_gen.get_state(),
            "numpy_rng": self.rng.bit_generator.state,
            "rew_history": list(self.rew_history),
            **self.collector.state_dict(),
        }
        return write_checkpoint(path, self.config, state)

    def load(self, path: str | Path) -> "PPOTrainer":
        """Restore a checkpoint written by ``save`` (weights-only unpickling)."""
        state = read_checkpoint(path, self.config)
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.p_module is not None:
            self.p_module.load_state_dict(state["p_module"])
        self.num_timesteps = int(state["num_timesteps"])
        self.total_timesteps = int(state["total_timesteps"])
        self.iteration = int(state["iteration"])
        self.n_updates = int(state["n_updates"])
        torch.set_rng_state(state["torch_rng"])
        self.shuffle_gen.set_state(state["shuffle_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        self.rew_history = list(state["rew_history"])
        self.collector.load_state_dict(state)
        return self

    def close(self) -> None:
        """Close the sinks (the env belongs to the caller)."""
        for sink in self.sinks:
            sink.close()


def _mean(xs: list[torch.Tensor]) -> float:
    return float(torch.stack(xs).mean()) if xs else float("nan")


def _adam(params: list[torch.nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam with SB3's eps 1e-5; the fused kernel (one pass over all parameters) where this
    torch build has it for the parameters' device, else the multi-tensor (foreach) one."""
    try:
        return torch.optim.Adam(params, lr=lr, eps=1e-5, fused=True)
    except RuntimeError:
        return torch.optim.Adam(params, lr=lr, eps=1e-5, foreach=True)


# names that lived here before the split (logger.py, vector_env.py, config.py)
__all__ = ["LoggingSink", "PPOConfig", "PPOTrainer", "RichConsoleSink", "TensorBoardSink", "make_vector_env"]
