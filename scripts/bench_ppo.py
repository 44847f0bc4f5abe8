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

Timing: both trainers first run once untimed (a few hundred steps) so one-time process costs
(torch.optim's first use imports torch._dynamo, about a second) fall on neither timed run;
ours and SB3 are then interleaved per seed, alternating which goes first. Each run records wall
seconds, process CPU seconds (CPU well below wall means other jobs took the core) and the
1-minute load average at its start and end. The timed runs start only once the 1-minute load
is below --max-load (polled for up to --max-wait-s; the JSON says if it never got there).

Usage: python scripts/bench_ppo.py --json [--timesteps 100000] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
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


def _loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def _timed(fn: Any) -> dict[str, float]:
    """Run ``fn() -> (return, setup_wall, setup_cpu)``; wall/CPU seconds exclude env creation."""
    load0 = _loadavg()
    ret, t0, c0 = fn()
    return {"return": ret, "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "loadavg_start": load0, "loadavg_end": _loadavg()}


def _ours(seed: int, timesteps: int, **extra: Any) -> dict[str, float]:
    from hadmc.agents import PPOTrainer, make_vector_env

    def go() -> tuple[float, float, float]:
        env = make_vector_env("CartPole-v1", ZOO["n_envs"])
        cfg = dict(
            n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"], gae_lambda=ZOO["gae_lambda"], gamma=ZOO["gamma"],
            n_epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"], learning_rate=ZOO["lr"], lr_schedule="linear",
            clip_range=ZOO["clip"], clip_schedule="linear", hidden_sizes=(64, 64), separate_critic=True, seed=seed,
        )
        cfg.update(extra)
        t0, c0 = time.perf_counter(), time.process_time()
        trainer = PPOTrainer(env, cfg, sinks=[])
        trainer.learn(timesteps)
        env.close()
        return float(np.mean(trainer.ep_returns)), t0, c0

    return _timed(go)


def _sb3(seed: int, timesteps: int) -> dict[str, float]:
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    def lin(v: float):
        return lambda progress_remaining: progress_remaining * v

    def go() -> tuple[float, float, float]:
        env = make_vec_env("CartPole-v1", n_envs=ZOO["n_envs"], seed=seed)
        t0, c0 = time.perf_counter(), time.process_time()
        model = PPO(
            "MlpPolicy", env, n_steps=ZOO["n_steps"], batch_size=ZOO["batch_size"], gae_lambda=ZOO["gae_lambda"],
            gamma=ZOO["gamma"], n_epochs=ZOO["n_epochs"], ent_coef=ZOO["ent_coef"], learning_rate=lin(ZOO["lr"]),
            clip_range=lin(ZOO["clip"]), seed=seed, device="cpu",
        )
        model.learn(timesteps)
        env.close()
        return float(np.mean([e["r"] for e in model.ep_info_buffer])), t0, c0

    return _timed(go)


def _summary(runs: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "returns": [round(r["return"], 2) for r in runs],
        "mean_return": round(float(np.mean([r["return"] for r in runs])), 2),
        "wall_s": [round(r["wall_s"], 2) for r in runs],
        "mean_wall_s": round(float(np.mean([r["wall_s"] for r in runs])), 2),
        "cpu_s": [round(r["cpu_s"], 2) for r in runs],
        "mean_cpu_s": round(float(np.mean([r["cpu_s"] for r in runs])), 2),
        "loadavg_1min": [[r["loadavg_start"], r["loadavg_end"]] for r in runs],
        "provenance": "measured",
    }


def _wait_for_quiet(max_load: float, max_wait_s: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    load = _loadavg()
    while load >= max_load and time.perf_counter() - t0 < max_wait_s:
        print(f"1-min load {load:.2f} >= {max_load}: waiting", file=sys.stderr, flush=True)
        time.sleep(15)
        load = _loadavg()
    return {"max_load": max_load, "loadavg_at_start": load, "waited_s": round(time.perf_counter() - t0, 1), "quiet": load < max_load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--timesteps", type=int, default=100_000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--no-variants", action="store_true", help="only ours vs SB3")
    ap.add_argument("--only-variants", action="store_true", help="only the group-advantage variants")
    ap.add_argument("--no-shared-trunk", action="store_true", help="skip the shared-trunk run of ours")
    ap.add_argument("--max-load", type=float, default=1.5, help="start timing once the 1-minute load is below this")
    ap.add_argument("--max-wait-s", type=float, default=1200.0, help="longest wait for --max-load")
    args = ap.parse_args()
    torch.set_num_threads(1)

    results: dict[str, Any] = {}

    def run(label: str, fn, *a: Any, **kw: Any) -> dict[str, float]:
        out = fn(*a, **kw)
        print(f"{label}: return {out['return']:.2f} wall {out['wall_s']:.1f}s cpu {out['cpu_s']:.1f}s "
              f"load {out['loadavg_start']:.2f}->{out['loadavg_end']:.2f}", file=sys.stderr, flush=True)
        return out

    # untimed warm-up of both libraries (one-time imports and lazy initialisation)
    warm = {"ours": run("warm-up ours", _ours, 0, 512)["wall_s"], "sb3": run("warm-up sb3", _sb3, 0, 512)["wall_s"]}
    gate = _wait_for_quiet(args.max_load, args.max_wait_s)
    if not args.only_variants:
        runs: dict[str, list[dict[str, float]]] = {"ours_token": [], "sb3_ppo": []}
        if not args.no_shared_trunk:
            runs["ours_shared_trunk"] = []
        # interleave ours and SB3 per seed, alternating the order, so load changes on the
        # machine hit both alike
        for k, seed in enumerate(args.seeds):
            pair = [("ours_token", f"ours seed {seed}", _ours), ("sb3_ppo", f"sb3 seed {seed}", _sb3)]
            for key, label, fn in pair if k % 2 == 0 else pair[::-1]:
                runs[key].append(run(label, fn, seed, args.timesteps))
            if "ours_shared_trunk" in runs:
                runs["ours_shared_trunk"].append(run(f"shared seed {seed}", _ours, seed, args.timesteps, hidden_sizes=(64, 64, 64), separate_critic=False))
        for k, v in runs.items():
            results[k] = _summary(v)
        ours, sb3 = results["ours_token"], results["sb3_ppo"]
        results["return_ratio_ours_over_sb3"] = round(ours["mean_return"] / sb3["mean_return"], 4)
        results["wall_ratio_ours_over_sb3"] = round(ours["mean_wall_s"] / sb3["mean_wall_s"], 4)
        results["cpu_ratio_ours_over_sb3"] = round(ours["mean_cpu_s"] / sb3["mean_cpu_s"], 4)
        results["within_5pct_return"] = ours["mean_return"] >= 0.95 * sb3["mean_return"]
        results["not_slower"] = ours["mean_wall_s"] <= sb3["mean_wall_s"]
    if not args.no_variants:
        results["variants_group_advantages"] = {
            name: {**_summary([run(f"{name} seed {seed}", _ours, seed, args.timesteps, **extra) for seed in args.seeds]), "config": extra}
            for name, extra in VARIANTS.items()
        }
    results["setup"] = {
        "env": "CartPole-v1", "timesteps": args.timesteps, "seeds": args.seeds, "zoo_hyperparameters": ZOO,
        "torch_threads": 1, "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "warmup_wall_s": {k: round(v, 2) for k, v in warm.items()}, "load_gate": gate,
        "loadavg_at_end": _loadavg(),
        "note": "wall-clock measured on a shared 2-core machine; other jobs may add noise (compare cpu_s with wall_s)",
    }
    print(json.dumps(results, indent=None if args.json else 2))


if __name__ == "__main__":
    main()
