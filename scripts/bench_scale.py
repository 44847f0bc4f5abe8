"""Benchmark of parallel evaluation: one process, worker processes, Ray actors; JSON with --json.

All in one invocation, on this machine, with the real evaluator (embedded default, ONNX Runtime
CPU, the quickstart's search settings) and a deterministic searcher (``random`` with a fixed
seed proposes the same plans in the same order whatever the number of workers; ``greedy``
works too but its threshold steps depend on the order results arrive in; ``sb3-ppo`` and
``ppo-onpolicy`` (``ppo`` with ``agent.dyna: false``) step one env per worker, so their plans,
and fronts, depend on the number of workers by design: for them only the wall times compare):

- ``w1``: ``--workers 1`` (plans evaluated in this process, torch on every core);
- ``w2``: ``--workers 2`` (two worker processes, each with cores // 2 torch threads);
- ``ray2``: ``--executor ray --workers 2`` on a local Ray instance with 2 CPUs;
- ``w1t1`` (a control): ``--workers 1`` with torch held to 1 thread, the thread count of each
  ``w2`` worker. Multi-threaded training sums in another order, so ``w1``'s recovered weights
  (and now and then an accuracy, by one validation image) differ from ``w2``'s; ``w1t1``'s
  should not, which separates that from anything the workers do.

For each, a fresh run spends the same budget of distinct plans. Reported per mode: wall time
to reach the budget (from the run's construction, worker start included, to the end of the
search), the plans evaluated, the search-phase Pareto front (plan keys), and the seconds spent
measuring (waits for the measurement lock included). Compared between modes: the speed-up of ``w2`` over ``w1``,
whether the evaluated plans and the fronts are the same, and per plan the differences of
accuracy (recovery ran with other thread counts) and of the latency ratio to the original
(measured, so noisy: its spread is reported beside it). With ``--repeats R`` the modes run
interleaved R times, so load drift hits all of them alike.

    python scripts/bench_scale.py --json                      # budget 16, random, seed 0
    python scripts/bench_scale.py --budget 8 --modes w1,w2 --json

Progress goes to stderr. Machines are shared: the 1/5/15-minute load averages are printed at
the start and end of every run and beside every comparison, and ``--max-load`` waits (up to
``--max-wait-s``) for a quieter machine before each run. Every ratio compares runs of the same
invocation (and the same repeat), never a figure from elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

SEARCHERS = ("random", "greedy", "sb3-ppo", "ppo-onpolicy")
MODES = {"w1": {"workers": 1}, "w2": {"workers": 2}, "ray2": {"workers": 2, "executor": "ray"}, "w1t1": {"workers": 1}}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def load_avg() -> list[float]:
    """The 1/5/15-minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def wait_for_quiet(max_load: float | None, max_wait_s: float) -> bool:
    """Wait until the 1-minute load average is below `max_load`; False if it never got there."""
    if max_load is None:
        return True
    t0 = time.monotonic()
    while os.getloadavg()[0] >= max_load:
        if time.monotonic() - t0 > max_wait_s:
            return False
        time.sleep(10)
    return True


def bench_config(args, out: Path, mode: str):
    from hadmc.api import build_config

    return build_config(
        {
            "name": mode,
            "model": "default",
            "data": "digits",
            "device": "local",
            "energy": {"probe": None},
            "constraints": {"min_accuracy": "-1pt"},
            "search": {"searcher": args.searcher.removesuffix("-onpolicy"), "budget": args.budget, "fidelity": 0.25,
                       "update_scopes": ["half", "full"], "update_budgets": [1, 2, 3]},
            "agent": {"dyna": args.searcher != "ppo-onpolicy"},
            "execution": MODES[mode],
            "seed": args.seed,
        },
        out=out / mode,
    )  # fmt: skip


def run_mode(args, out: Path, mode: str) -> dict:
    from hadmc.run import CompressionRun

    cfg = bench_config(args, out, mode)
    quiet = wait_for_quiet(args.max_load, args.max_wait_s)
    load_start = load_avg()
    say(f"{mode}: start")
    import torch

    threads = torch.get_num_threads()
    if mode == "w1t1":
        torch.set_num_threads(1)
    t0 = time.perf_counter()
    run = CompressionRun(cfg, resume=False)
    try:
        started = time.perf_counter() - t0
        run.search()
        wall = time.perf_counter() - t0
        evs = run.evaluations("search")
        meta = run.store.meta(run.run_id)
        result = {
            "wall_s": wall,
            "startup_s": started,
            "search_s": wall - started,
            "evaluations": len(evs),
            "failed": sum(not e.ok for e in evs),
            "plans": sorted(e.plan_key for e in evs),
            "front": sorted(run.archive("search").keys()),
            "figures": {e.plan_key: {"accuracy": e.accuracy, "latency_ratio": e.latency_ratio, "latency_ratio_spread": e.latency_ratio_spread,
                                     "latency_ms": e.latency_ms, "model_bytes": e.model_bytes, "wall_s": e.wall_s, "node": e.node}
                        for e in evs},  # fmt: skip
            "mean_eval_s": statistics.fmean(e.wall_s for e in evs) if evs else None,
            "measure_s": sum(e.timings.get("measure_s", 0.0) for e in evs),
            "execution": meta.get("execution"),
            "load_avg_start": load_start,
            "load_avg_end": load_avg(),
            "waited_for_quiet": quiet,
        }
    finally:
        run.close()
        torch.set_num_threads(threads)
    say(f"{mode}: {result['evaluations']} plans in {result['wall_s']:.1f} s (workers started in {started:.1f} s), front {len(result['front'])}")
    return result


def compare(a: dict, b: dict) -> dict:
    """How two runs of the same plans differ: plans, front, accuracy, latency ratio; with the
    load averages (1/5/15 min) at the start and end of each."""
    common = sorted(set(a["figures"]) & set(b["figures"]))
    acc = [abs((a["figures"][k]["accuracy"] or 0) - (b["figures"][k]["accuracy"] or 0)) for k in common]
    ratio = []
    for k in common:
        ra, rb = a["figures"][k]["latency_ratio"], b["figures"][k]["latency_ratio"]
        if ra and rb:
            ratio.append(abs(ra - rb) / ((ra + rb) / 2))
    only_a, only_b = sorted(set(a["front"]) - set(b["front"])), sorted(set(b["front"]) - set(a["front"]))
    fields = ("accuracy", "latency_ms", "latency_ratio", "latency_ratio_spread", "model_bytes")
    return {
        "load_avg": {"first": [a["load_avg_start"], a["load_avg_end"]], "second": [b["load_avg_start"], b["load_avg_end"]]},
        "same_plans": a["plans"] == b["plans"],
        "same_front": a["front"] == b["front"],
        "front_only_first": only_a,
        "front_only_second": only_b,
        "differing_plans": {  # the figures behind a front difference, first run then second
            k[:12]: {f: [a["figures"][k][f], b["figures"][k][f]] for f in fields} for k in only_a + only_b if k in common
        },
        "plans_with_other_accuracy": sum(d > 1e-9 for d in acc),
        "max_accuracy_difference_pt": 100 * max(acc, default=0.0),
        "median_latency_ratio_difference": statistics.median(ratio) if ratio else None,
        "max_latency_ratio_difference": max(ratio, default=None),
        "median_latency_ratio_spread": statistics.median(
            [f["latency_ratio_spread"] for r in (a, b) for f in r["figures"].values() if f["latency_ratio_spread"] is not None] or [0.0]
        ),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--searcher", choices=SEARCHERS, default="random")
    p.add_argument("--modes", default="w1,w2,ray2", help="comma-separated among " + ", ".join(MODES))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder, removed)")
    p.add_argument("--max-load", type=float, default=None, help="wait before each run until the 1-minute load is below this")
    p.add_argument("--max-wait-s", type=float, default=1800.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.budget < 1 or args.repeats < 1:
        p.error("--budget and --repeats must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes:
        p.error("--modes names no mode; valid: " + ", ".join(MODES))
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown mode(s) {', '.join(unknown)}; valid: {', '.join(MODES)}")

    tmp = None if args.out is not None else tempfile.TemporaryDirectory(prefix="hadmc-bench-scale-")
    root = args.out or Path(tmp.name)
    if "ray2" in modes:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    from hadmc.models import load_default_model

    load_default_model()  # trained once before any timing
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    try:
        for r in range(args.repeats):
            for mode in modes:
                runs[mode].append(run_mode(args, root / f"r{r}", mode))
    finally:
        if "ray2" in modes:
            ray.shutdown()
        if tmp is not None:
            tmp.cleanup()

    report: dict = {
        "machine": {"cpus": os.cpu_count(), "load_avg_start_end": [[x["load_avg_start"], x["load_avg_end"]] for m in modes for x in runs[m]]},
        "settings": {"budget": args.budget, "searcher": args.searcher, "seed": args.seed, "repeats": args.repeats},
        "modes": {m: [{k: v for k, v in x.items() if k != "figures"} for x in runs[m]] for m in modes},
    }
    if "w1" in runs and "w2" in runs:
        report["w2_vs_w1"] = [
            {"speedup": a["wall_s"] / b["wall_s"], "w1_wall_s": a["wall_s"], "w2_wall_s": b["wall_s"], **compare(a, b)}
            for a, b in zip(runs["w1"], runs["w2"])
        ]
    if "w2" in runs and "ray2" in runs:
        report["ray2_vs_w2"] = [{"wall_ratio": a["wall_s"] / b["wall_s"], **compare(a, b)} for a, b in zip(runs["w2"], runs["ray2"])]
    if "w1t1" in runs and "w2" in runs:
        report["w2_vs_w1t1"] = [{"speedup": a["wall_s"] / b["wall_s"], **compare(a, b)} for a, b in zip(runs["w1t1"], runs["w2"])]
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for key in ("w2_vs_w1", "ray2_vs_w2", "w2_vs_w1t1"):
            for row in report.get(key, []):
                load = row["load_avg"]
                print(key, {k: v for k, v in row.items() if not isinstance(v, (list, dict))},
                      f"load 1/5/15 min: first {load['first']}, second {load['second']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
