"""Benchmark: our PPO trainer vs Stable-Baselines3 PPO on CartPole-v1, plus ratio-mean variants.

Hyperparameters are rl-baselines3-zoo's tuned PPO entry for CartPole-v1 (hyperparams/ppo.yml):
n_envs 8, n_timesteps 1e5, n_steps 32, batch_size 256, gae_lambda 0.8, gamma 0.98,
n_epochs 20, ent_coef 0.0, learning_rate lin_0.001, clip_range lin_0.2; the rest SB3's PPO
defaults (vf_coef 0.5, max_grad_norm 0.5, Adam eps 1e-5, MlpPolicy = separate 64x64 tanh
actor and critic). "ours" uses the same layout (hidden_sizes=(64, 64), separate_critic);
"ours_shared_trunk" is the DESIGN.md default (one 3x64 trunk shared by actor and critic).

The variants (geometric, harmonic, power:-0.5 with the GSPO stop-gradient form, pmd-mean)
use group rollouts (8 episodes per context, one context per reset seed) and episode-level
(sequence) ratios. Every run is measured in this process, one after another, with one torch
thread each. The final return is the mean of the last 100 training episodes (SB3's
rollout/ep_rew_mean).

Usage: python scripts/bench_ppo.py --json [--timesteps 100000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import numpy as np
import torch

ZOO = dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20, ent_coef=0.0, lr=1e-3, clip=0.2)

GROUP = dict(advantage="group", aggregation="sequence", batch_size=8, group_size=8)
VARIANTS: dict[str, dict[str, Any]] = {
    "geometric": dict(ratio_mode="geometric", **GROUP),
    "harmonic": dict(ratio_mode="harmonic", **GROUP),
    "power:-0.5": dict(ratio_mode="power:-0.5", stop_gradient=True, **GROUP),
    "pmd-mean": dict(loss="pmd-mean", pmd_tau=20.0, advantage="loo", aggregation="sequence", batch_size=8, group_size=8),
}


def _ours(seed: int, timesteps: int, **extra: Any) -> tuple[float, float]:
    from hadmc.agents import PPOTrainer, make_vector_env

    env = make_vector_env("CartPole-v1", ZOO["n_envs"])
    cfg = dict(
        n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"], gae_lambda=ZOO["gae_lambda"], gamma=ZOO["gamma"],
        n_epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"], learning_rate=ZOO["lr"], lr_schedule="linear",
        clip_range=ZOO["clip"], clip_schedule="linear", hidden_sizes=(64, 64), separate_critic=True, seed=seed,
    )
    cfg.update(extra)
    t0 = time.perf_counter()
    trainer = PPOTrainer(env, cfg, sinks=[])
    trainer.learn(timesteps)
    wall = time.perf_counter() - t0
    env.close()
    return float(np.mean(trainer.ep_returns)), wall


def _sb3(seed: int, timesteps: int) -> tuple[float, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    def lin(v: float):
        return lambda progress_remaining: progress_remaining * v

    env = make_vec_env("CartPole-v1", n_envs=ZOO["n_envs"], seed=seed)
    t0 = time.perf_counter()
    model = PPO(
        "MlpPolicy", env, n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"], gae_lambda=ZOO["gae_lambda"],
        gamma=ZOO["gamma"], n_epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"], learning_rate=lin(ZOO["lr"]),
        clip_range=lin(ZOO["clip"]), seed=seed, device="cpu",
    )
    model.learn(timesteps)
    wall = time.perf_counter() - t0
    env.close()
    return float(np.mean([e["r"] for e in model.ep_info_buffer])), wall


def _summary(runs: list[tuple[float, float]]) -> dict[str, Any]:
    rets = [r for r, _ in runs]
    walls = [w for _, w in runs]
    return {
        "returns": [round(r, 2) for r in rets],
        "mean_return": round(float(np.mean(rets)), 2),
        "wall_s": [round(w, 2) for w in walls],
        "mean_wall_s": round(float(np.mean(walls)), 2),
        "provenance": "measured",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--timesteps", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-variants", action="store_true", help="only ours vs SB3")
    ap.add_argument("--only-variants", action="store_true", help="only the group-advantage variants")
    ap.add_argument("--no-shared-trunk", action="store_true", help="skip the shared-trunk run of ours")
    args = ap.parse_args()
    torch.set_num_threads(1)

    results: dict[str, Any] = {}

    def run(label: str, fn, *a: Any, **kw: Any) -> tuple[float, float]:
        out = fn(*a, **kw)
        print(f"{label}: return {out[0]:.2f} wall {out[1]:.1f}s", file=sys.stderr, flush=True)
        return out

    if not args.only_variants:
        runs: dict[str, list[tuple[float, float]]] = {"ours_token": [], "sb3_ppo": []}
        if not args.no_shared_trunk:
            runs["ours_shared_trunk"] = []
        # interleave ours and SB3 per seed so load changes on the machine hit both alike
        for seed in args.seeds:
            runs["ours_token"].append(run(f"ours seed {seed}", _ours, seed, args.timesteps))
            runs["sb3_ppo"].append(run(f"sb3 seed {seed}", _sb3, seed, args.timesteps))
            if "ours_shared_trunk" in runs:
                runs["ours_shared_trunk"].append(run(f"shared seed {seed}", _ours, seed, args.timesteps, hidden_sizes=(64, 64, 64), separate_critic=False))
        for k, v in runs.items():
            results[k] = _summary(v)
        ours, sb3 = results["ours_token"], results["sb3_ppo"]
        results["return_ratio_ours_over_sb3"] = round(ours["mean_return"] / sb3["mean_return"], 4)
        results["wall_ratio_ours_over_sb3"] = round(ours["mean_wall_s"] / sb3["mean_wall_s"], 4)
        results["within_5pct_return"] = ours["mean_return"] >= 0.95 * sb3["mean_return"]
        results["not_slower"] = ours["mean_wall_s"] <= sb3["mean_wall_s"]
    if not args.no_variants:
        results["variants_group_advantages"] = {
            name: {**_summary([run(f"{name} seed {seed}", _ours, seed, args.timesteps, **extra) for seed in args.seeds]), "config": extra}
            for name, extra in VARIANTS.items()
        }
    results["setup"] = {
        "env": "CartPole-v1", "timesteps": args.timesteps, "seeds": args.seeds, "zoo_hyperparameters": ZOO,
        "torch_threads": 1, "machine": platform.processor() or platform.machine(),
        "note": "wall-clock measured on a shared 2-core machine; other jobs may add noise",
    }
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
