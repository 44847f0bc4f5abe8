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
  (and now and then an accuracy, by one validation image, or a size, by the bytes of an INT8
  zero point) differ from ``w2``'s; ``w1t1``'s should not, which separates that from anything
  the workers do.

For each, a fresh run spends the same budget of distinct plans. Reported per mode: wall time
to reach the budget (from the run's construction, worker start included, to the end of the
search), the plans evaluated, the search-phase Pareto front (plan keys), and the seconds spent
measuring (waits for the measurement lock included). Compared between modes: the speed-up of ``w2`` over ``w1``,
whether the evaluated plans and the fronts are the same, and per plan the differences of
accuracy (recovery ran with other thread counts), of size, and of the latency ratio to the original
(measured, so noisy: its spread is reported beside it). With ``--repeats R`` the modes run
interleaved R times, so load drift hits all of them alike.

Two fronts are compared for each pair of runs:

- ``same_front``: the fronts the two runs built themselves. Each run times every plan anew, so
  a plan's latency differs between the runs by measurement noise alone (of the order of the
  ratio's spread, reported beside it), and plans whose latencies lie that close swap places on
  the front. This comparison mixes that noise with anything the executor did.
- ``same_front_one_latency_per_plan``: both fronts rebuilt with one latency figure per plan.
  Latency is a property of the graph, not of the weights (the evaluator relies on it when it
  times a plan before recovery), and measurement noise is nothing an executor does; so each
  plan's latency figures (``latency_ms``, the ratio and the rest of ``LATENCY_FIELDS``) are
  taken from the first run of the pair for both runs, while accuracy and size stay each run's
  own. The fronts are rebuilt as the run builds its own (`CompressionRun.archive`: a
  `ParetoArchive` with the run's reference, scale and objectives). They differ only where the
  runs read another accuracy or size for some plan, and those plans and their accuracy
  differences are listed (``one_latency_differing_plans``). It says nothing about how noisy
  latency is: the raw fronts and the latency-ratio differences stay in the report beside it.

``checks`` sums up the issue's must-show over every repeat, for the pairs that ran:
``w2_faster_than_w1`` (wall time), ``w2_same_front_as_w1``, ``ray2_same_front_as_w2`` and
``w2_same_front_as_w1t1`` (one latency per plan), and ``w2_same_accuracy_and_size_as_w1t1``
(every plan's accuracy and size equal: the two run torch with one thread each), and
``same_hadmc_source_throughout``: the hadmc sources did not change while the bench ran (this
process imports them once, workers when they start; if they changed, compare nothing).

    python scripts/bench_scale.py --json                      # budget 16, random, seed 0
    python scripts/bench_scale.py --budget 8 --modes w1,w2 --json

Progress goes to stderr. Machines are shared: the 1/5/15-minute load averages are printed at
the start and end of every run and beside every comparison, and ``--max-load`` waits (up to
``--max-wait-s``) for a quieter machine before each run. Every ratio compares runs of the same
invocation (and the same repeat), never a figure from elsewhere.
"""

from __future__ import annotations

import argparse
import hashlib
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


def source_digest() -> str:
    """SHA-256 (12 hex digits) of the hadmc package's Python sources. This process imports them
    once, worker processes each time they start: an edit during the bench would have modes run
    different code (one invocation here once had its in-process modes calibrate INT8 on 8
    batches and its workers, started after an edit, on 2)."""
    import hadmc

    root = Path(hadmc.__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


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
            **run_record(evs, run.archive("search")),
            "mean_eval_s": statistics.fmean(e.wall_s for e in evs) if evs else None,
            "measure_s": sum(e.timings.get("measure_s", 0.0) for e in evs),
            "execution": meta.get("execution"),
            "load_avg_start": load_start,
            "load_avg_end": load_avg(),
            "waited_for_quiet": quiet,
            "hadmc_source_at_end": source_digest(),
        }
    finally:
        run.close()
        torch.set_num_threads(threads)
    say(f"{mode}: {result['evaluations']} plans in {result['wall_s']:.1f} s (workers started in {started:.1f} s), front {len(result['front'])}")
    return result


#: The fields of an evaluation that come from timing its graph: in the "one latency per plan"
#: fronts both runs of a pair use the first run's.
LATENCY_FIELDS = ("latency_ms", "latency_p90_ms", "latency_cov", "latency_iterations", "latency_ratio", "latency_ratio_spread", "latency_noisy")


def run_record(evs: list, archive) -> dict:
    """What `compare` reads of one run: its plans, its search front (plan keys of the run's own
    archive), per plan its figures; and, kept in memory only (keys starting with ``_`` stay out
    of the JSON), its evaluations and the reference, scale and objectives its archive was built with.

    :param evs: the run's search evaluations (`CompressionRun.evaluations`)
    :param archive: the run's search `ParetoArchive` (`CompressionRun.archive`)
    """
    return {
        "plans": sorted(e.plan_key for e in evs),
        "front": sorted(archive.keys()),
        "figures": {e.plan_key: {"accuracy": e.accuracy, "latency_ratio": e.latency_ratio, "latency_ratio_spread": e.latency_ratio_spread,
                                 "latency_ms": e.latency_ms, "model_bytes": e.model_bytes, "wall_s": e.wall_s, "node": e.node}
                    for e in evs},  # fmt: skip
        "_evaluations": list(evs),
        "_archive": {"reference": dict(archive.reference or {}), "scale": dict(archive.scale or {}), "objectives": dict(archive.objectives)},
    }


def one_latency_fronts(a: dict, b: dict) -> tuple[list[str], list[str], int]:
    """The search fronts of runs `a` and `b` rebuilt with one latency figure per plan: in both
    runs every plan's `LATENCY_FIELDS` are the first run's, accuracy and size each run's own.
    Each front is built as `CompressionRun.archive` builds it: a `ParetoArchive` (with the first
    run's reference, scale and objectives; which run's does not change who dominates whom) offered
    the run's evaluations in the run's order. Returns both fronts (sorted plan keys) and how many
    complete plans of the second run the first has no latency for (those keep their own)."""
    from hadmc.pareto import ParetoArchive

    timed = {e.plan_key: {f: getattr(e, f) for f in LATENCY_FIELDS} for e in a["_evaluations"] if e.complete}
    fronts = []
    for run in (a, b):
        archive = ParetoArchive(**a["_archive"])
        for e in run["_evaluations"]:
            archive.add_evaluation(e.model_copy(update=timed[e.plan_key]) if e.plan_key in timed else e)
        fronts.append(sorted(archive.keys()))
    untimed = sum(e.complete and e.plan_key not in timed for e in b["_evaluations"])
    return fronts[0], fronts[1], untimed


def compare(a: dict, b: dict) -> dict:
    """How two runs of the same plans differ: plans, front (raw, and with one latency figure per
    plan), accuracy, size, latency ratio; with the load averages (1/5/15 min) at the start and
    end of each. `a` and `b` are `run_mode` results (or anything with `run_record`'s keys and
    ``load_avg_start``/``load_avg_end``)."""
    common = sorted(set(a["figures"]) & set(b["figures"]))
    fig_a, fig_b = a["figures"], b["figures"]
    acc = {k: (fig_b[k]["accuracy"] or 0) - (fig_a[k]["accuracy"] or 0) for k in common}
    ratio = []
    for k in common:
        ra, rb = fig_a[k]["latency_ratio"], fig_b[k]["latency_ratio"]
        if ra and rb:
            ratio.append(abs(ra - rb) / ((ra + rb) / 2))
    only_a, only_b = sorted(set(a["front"]) - set(b["front"])), sorted(set(b["front"]) - set(a["front"]))
    one_a, one_b, untimed = one_latency_fronts(a, b)
    one_only_a, one_only_b = sorted(set(one_a) - set(one_b)), sorted(set(one_b) - set(one_a))
    fields = ("accuracy", "latency_ms", "latency_ratio", "latency_ratio_spread", "model_bytes")
    return {
        "load_avg": {"first": [a["load_avg_start"], a["load_avg_end"]], "second": [b["load_avg_start"], b["load_avg_end"]]},
        "same_plans": a["plans"] == b["plans"],
        "same_front": a["front"] == b["front"],
        "front_sizes": [len(a["front"]), len(b["front"])],
        "front_only_first": only_a,
        "front_only_second": only_b,
        "differing_plans": {  # the figures behind a front difference, first run then second
            k[:12]: {f: [fig_a[k][f], fig_b[k][f]] for f in fields} for k in only_a + only_b if k in common
        },
        "same_front_one_latency_per_plan": one_a == one_b,
        "front_sizes_one_latency_per_plan": [len(one_a), len(one_b)],
        "one_latency_front_only_first": one_only_a,
        "one_latency_front_only_second": one_only_b,
        "one_latency_differing_plans": {  # what is left once both runs time a plan alike: accuracy (and size)
            k[:12]: {"accuracy": [fig_a[k]["accuracy"], fig_b[k]["accuracy"]], "accuracy_difference_pt": 100 * acc[k],
                     "model_bytes": [fig_a[k]["model_bytes"], fig_b[k]["model_bytes"]]}
            for k in one_only_a + one_only_b if k in common
        },  # fmt: skip
        "plans_without_first_run_latency": untimed,
        "plans_with_other_accuracy": sum(abs(d) > 1e-9 for d in acc.values()),
        "accuracy_differences_pt": {k[:12]: 100 * d for k, d in acc.items() if abs(d) > 1e-9},  # second run minus first
        "max_accuracy_difference_pt": 100 * max(map(abs, acc.values()), default=0.0),
        "plans_with_other_size": sum(fig_a[k]["model_bytes"] != fig_b[k]["model_bytes"] for k in common),
        "median_latency_ratio_difference": statistics.median(ratio) if ratio else None,
        "max_latency_ratio_difference": max(ratio, default=None),
        "median_latency_ratio_spread": statistics.median(
            [f["latency_ratio_spread"] for r in (a, b) for f in r["figures"].values() if f["latency_ratio_spread"] is not None] or [0.0]
        ),
    }


def checks(report: dict) -> dict[str, bool]:
    """The issue's must-show, from the comparisons that ran (over every repeat): ``w2`` reaches
    the budget in less wall time than ``w1``; ``w2``'s front is ``w1``'s, ``ray2``'s is
    ``w2``'s and ``w2``'s is ``w1t1``'s, with one latency figure per plan; and ``w2`` reads the
    same accuracy and size as ``w1t1`` for every plan (same thread count: any difference would
    be the workers')."""
    out: dict[str, bool] = {}
    rows = report.get("w2_vs_w1")
    if rows:
        out["w2_faster_than_w1"] = all(r["speedup"] > 1 for r in rows)
        out["w2_same_front_as_w1"] = all(r["same_front_one_latency_per_plan"] for r in rows)
    rows = report.get("ray2_vs_w2")
    if rows:
        out["ray2_same_front_as_w2"] = all(r["same_front_one_latency_per_plan"] for r in rows)
    rows = report.get("w2_vs_w1t1")
    if rows:
        out["w2_same_front_as_w1t1"] = all(r["same_front_one_latency_per_plan"] for r in rows)
        out["w2_same_accuracy_and_size_as_w1t1"] = all(
            r["same_plans"] and r["plans_with_other_accuracy"] == 0 and r["plans_with_other_size"] == 0 for r in rows
        )
    return out


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
    source = source_digest()
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
        "hadmc_source": source,
        "machine": {"cpus": os.cpu_count(), "load_avg_start_end": [[x["load_avg_start"], x["load_avg_end"]] for m in modes for x in runs[m]]},
        "settings": {"budget": args.budget, "searcher": args.searcher, "seed": args.seed, "repeats": args.repeats},
        "checks": {},  # filled below
        "modes": {m: [{k: v for k, v in x.items() if k != "figures" and not k.startswith("_")} for x in runs[m]] for m in modes},
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
    report["checks"] = checks(report)
    # every mode ran the code this process imported (else the comparisons mix code versions)
    report["checks"]["same_hadmc_source_throughout"] = all(x["hadmc_source_at_end"] == source for m in modes for x in runs[m])
    if not report["checks"]["same_hadmc_source_throughout"]:
        say("the hadmc sources changed during the bench: modes may have run different code; compare nothing, run again")
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for key in ("w2_vs_w1", "ray2_vs_w2", "w2_vs_w1t1"):
            for row in report.get(key, []):
                load = row["load_avg"]
                print(key, {k: v for k, v in row.items() if not isinstance(v, (list, dict))},
                      f"load 1/5/15 min: first {load['first']}, second {load['second']}")
        print("checks", report["checks"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
