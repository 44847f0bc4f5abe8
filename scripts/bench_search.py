"""Benchmark of the searchers on the quickstart scenario; prints JSON with --json.

All in one run, on this machine, with the real evaluator (embedded default, ONNX Runtime CPU):

- for each searcher and seed, a fresh run spends the same budget of distinct plans; its
  hypervolume (search phase: validation split, accuracy reference at the original minus 2
  points, latency and size relative to the original) after 16, 32 and 64 evaluations, as the
  median and range over seeds; the mean wall time of a search evaluation; the searcher's total
  wall time. Searchers run interleaved per seed, so load drift hits all of them alike.
  ``ppo`` is Dyna-style; ``ppo-onpolicy`` is plain on-policy PPO on real evaluations.
- fidelity: at least 8 diverse plans (evenly spaced over the search-fidelity accuracy range
  of all runs) are evaluated again, each at search fidelity and at full fidelity (as the final front
  is), one after the other in one evaluator after a common warm-up (baselines, teacher
  logits), the order alternating from plan to plan: the Spearman correlation of their search
  accuracy with their full-fidelity accuracy on the same (validation) split, which is what a
  search at full fidelity would have ranked them by; the same against full-fidelity test
  accuracy (the figure a user is shown), and the test split's own ceiling on that figure, the
  Spearman of full-fidelity validation against full-fidelity test accuracy (a proxy that read
  full-fidelity validation accuracy exactly would score that); and the mean wall time of their
  search evaluations against their full-fidelity evaluations, both measured in this run.

Checks: ppo's median hypervolume at the full budget is at least random's and nsga2's; a search
evaluation costs at most a quarter of a full-fidelity one; search accuracy ranks plans like
full-fidelity accuracy on the same split, Spearman >= 0.8. (Against the test split even a proxy
that read full-fidelity validation accuracy exactly scores only the ceiling: plans within a
point of each other swap places between 180 validation and 396 test images. The runs in
docs/benchmark-history.md before 83f72dd were checked against the test split.)

    python scripts/bench_search.py --budget 64 --seeds 3 --json           # the full benchmark (hours)
    python scripts/bench_search.py --budget 8 --seeds 1 --searchers ppo,random --json   # quick
    python scripts/bench_search.py --plans-from runs/a runs/b --json   # the fidelity check alone, on plans those runs searched
    python scripts/bench_search.py --summarize --out runs/bs --budget 64 --json   # the runs a stopped benchmark finished, then the fidelity check
    python scripts/bench_search.py --reuse --out runs/bs --budget 64 --seeds 3 --json   # continue a stopped benchmark

Progress goes to stderr. Machines are shared: the load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

SEARCHERS = ("ppo", "random", "nsga2", "sb3-ppo", "greedy", "ppo-onpolicy")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def hv_at(history: list[tuple[int, float | None]], n: int) -> float:
    """Hypervolume after `n` distinct evaluations (the last front change at or before n)."""
    vals = [v for k, v in history if k <= n and v is not None]
    return float(vals[-1]) if vals else 0.0


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "per_seed": values}


def searcher_config(base_cfg, name: str, seed: int, budget: int, out: Path):
    """The run configuration of one searcher and seed (``ppo-onpolicy``: ppo without Dyna)."""
    from hadmc.api import build_config

    searcher, dyna = ("ppo", False) if name == "ppo-onpolicy" else (name, True)
    return build_config(base_cfg, out=out / f"{name}-s{seed}", searcher=searcher, budget=budget, seed=seed, dyna=dyna)


def run_searcher(base_cfg, name: str, seed: int, budget: int, out: Path) -> dict:
    from hadmc.run import CompressionRun

    cfg = searcher_config(base_cfg, name, seed, budget, out)
    t0 = time.perf_counter()
    run = CompressionRun(cfg, resume=None)
    try:
        run.search()
        wall = time.perf_counter() - t0
        evs = run.evaluations("search")
        history = run.store.hypervolume_history(run.run_id, "search")
        new = [e.wall_s for e in evs]
        meta = run.store.meta(run.run_id)
        checkpoints = sorted({16, 32, 64, budget} & set(range(1, budget + 1)))
        return {
            "hv": {str(k): hv_at(history, k) for k in checkpoints},
            "mean_eval_s": statistics.fmean(new) if new else None,
            "evaluations": len(evs),
            "failed": sum(not e.ok for e in evs),
            "total_s": wall,
            "predicted_episodes": meta.get("predicted_episodes"),
            "baseline_latency_ms": run.baseline("search").latency_ms,
            "plans": [(e.plan, e.accuracy, e.wall_s, e.latency_ms) for e in evs if e.complete],
        }
    finally:
        run.close()


def finished_runs(out: Path, names: list[str], budget: int, base_cfg=None) -> dict[str, list[dict]]:
    """The figures `run_searcher` returns, read back from the run stores of searches that
    reached the budget under `out` (``NAME-sSEED/hadmc.db``): a benchmark stopped between
    runs is summarized from what it finished, with the same hypervolume history."""
    results: dict[str, list[dict]] = {n: [] for n in names}
    for name in names:
        for db in sorted(out.glob(f"{name}-s*/hadmc.db"), key=lambda d: int(d.parent.name.rsplit("-s", 1)[1])):
            r = finished_run(db.parent, budget, base_cfg)
            if r is not None:
                results[name].append(r)
    return {n: rs for n, rs in results.items() if rs}


class OtherSettings(SystemExit):
    """A finished search under --out was made with settings other than this benchmark's."""


def finished_run(run_dir: Path, budget: int, base_cfg=None) -> dict | None:
    """`run_searcher`'s figures of the search in `run_dir` (``NAME-sSEED``), read from its
    store, or None when it has not reached the budget. With `base_cfg`, a search made with
    other settings (another fidelity, say) raises `OtherSettings`: it is neither reused nor
    deleted."""
    from hadmc.run import config_differences
    from hadmc.store import RunStore

    db = run_dir / "hadmc.db"
    if not db.is_file():
        return None
    with RunStore(db) as store:
        run_id = store.run_id(run_dir.name)
        if run_id is not None and base_cfg is not None:
            name, seed = run_dir.name.rsplit("-s", 1)
            differ = config_differences(searcher_config(base_cfg, name, int(seed), budget, run_dir.parent), store.run_config(run_id))
            if differ:
                raise OtherSettings(
                    f"{run_dir} was searched with other settings for: {', '.join(differ)} (see its config.yaml); "
                    "benchmark into another --out, or pass that run's settings with --config"
                )
        evs = store.evaluations(run_id, context=None, phase="search") if run_id is not None else []
        if run_id is None or len({e.plan_key for e in evs}) < budget:
            say(f"{run_dir.name}: unfinished ({len(evs)} of {budget} evaluations)")
            return None
        history = store.hypervolume_history(run_id, "search")
        meta = store.meta(run_id)
    checkpoints = sorted({16, 32, 64, budget} & set(range(1, budget + 1)))
    return {
        "seed": int(run_dir.name.rsplit("-s", 1)[1]), "hv": {str(k): hv_at(history, k) for k in checkpoints},
        "mean_eval_s": statistics.fmean(e.wall_s for e in evs), "evaluations": len(evs), "failed": sum(not e.ok for e in evs),
        "total_s": meta.get("wall_s"), "predicted_episodes": meta.get("predicted_episodes"),
        "plans": [(e.plan, e.accuracy, e.wall_s, e.latency_ms) for e in evs if e.complete],
    }  # fmt: skip


def spread_plans(plans: list[tuple[dict, float, float, float]], n: int) -> list[tuple[dict, float, float, float]]:
    """`n` distinct plans spread evenly over the search-accuracy range, lowest to highest: for
    each of `n` equally spaced accuracy levels, the nearest plan not yet chosen.

    Evenly spaced in accuracy, not in rank: searchers crowd their plans near the top, and
    rank quantiles then pick mostly plans within a few test images of each other, whose full-
    fidelity order is the test split's noise rather than the proxy's. Plans of equal accuracy
    are ordered by their canonical JSON, so the same searches give the same pool whatever order
    they are read in (in the run, or from folders with `--plans-from`)."""
    seen, unique = set(), []
    for p in sorted(plans, key=lambda r: (r[1], json.dumps(r[0], sort_keys=True))):
        key = json.dumps(p[0], sort_keys=True)
        if key not in seen:
            seen.add(key)
            unique.append(p)
    if len(unique) <= n:
        return unique
    lo, hi = unique[0][1], unique[-1][1]
    chosen: set[int] = set()
    for i in range(n):
        level = lo + i * (hi - lo) / (n - 1)
        chosen.add(min((k for k in range(len(unique)) if k not in chosen), key=lambda k: (abs(unique[k][1] - level), k)))
    return [unique[k] for k in sorted(chosen)]


def fidelity_check(base_cfg, plans: list[tuple[dict, float, float, float]], n_plans: int, out: Path) -> dict:
    """Each chosen plan evaluated again at search fidelity and at full fidelity, one after the
    other in one evaluator (the order alternates from plan to plan, so load drift hits both
    alike): the accuracies' rank correlation and the wall times' ratio, measured in this run."""
    from scipy.stats import spearmanr

    from hadmc.api import build_config
    from hadmc.evaluation import build_evaluator
    from hadmc.plan import CompressionPlan

    chosen = spread_plans(plans, n_plans)
    if len(chosen) < 2:
        return {"plans": len(chosen), "spearman": None}
    cfg = build_config(base_cfg, out=out / "fidelity")
    evaluator = build_evaluator(cfg)
    # Each evaluation recovers its own student, as a plan seen once in a search does.
    evaluator.student_cache = 0
    # What a run pays once, before its first plan, is paid here before any timing: the
    # original's figures and the teacher's logits on the training split (one full epoch).
    say("fidelity: warm-up (baselines, teacher logits)")
    evaluator.baseline_for("search")
    evaluator.evaluate(CompressionPlan.uniform(0.5, "fp32", budget=1), "final")
    rows = []
    for i, (plan, acc_run, _, _) in enumerate(chosen):
        say(f"fidelity: plan {i + 1}/{len(chosen)} at search and at full fidelity")
        parsed = CompressionPlan.parse(plan)
        done = {}
        for phase in ("search", "final") if i % 2 == 0 else ("final", "search"):
            done[phase] = evaluator.evaluate_with_artifact(parsed, phase)
        (search, _), (full, compressed) = done["search"], done["final"]
        if not (search.complete and full.complete):
            continue
        rows.append({
            "plan_key": full.plan_key, "search_accuracy_val": search.accuracy, "search_accuracy_val_in_search_run": acc_run,
            "full_accuracy_val": evaluator.accuracy_on(compressed.onnx_bytes, "val"), "full_accuracy_test": full.accuracy,
            "search_s": search.wall_s, "full_s": full.wall_s, "ratio": search.wall_s / full.wall_s,
            "recovery_steps": [search.recovery_steps, full.recovery_steps], "search_timings": search.timings, "full_timings": full.timings,
        })  # fmt: skip
    search = [r["search_accuracy_val"] for r in rows]
    full_val, full_test = [r["full_accuracy_val"] for r in rows], [r["full_accuracy_test"] for r in rows]
    mean_search = statistics.fmean(r["search_s"] for r in rows)
    mean_full = statistics.fmean(r["full_s"] for r in rows)
    return {
        "plans": len(rows),
        "spearman": float(spearmanr(search, full_test).statistic),
        "spearman_vs_full_val": float(spearmanr(search, full_val).statistic),
        "spearman_full_val_vs_full_test": float(spearmanr(full_val, full_test).statistic),
        "spearman_search_run_vs_full_test": float(spearmanr([r["search_accuracy_val_in_search_run"] for r in rows], [r["full_accuracy_test"] for r in rows]).statistic),
        "mean_search_eval_s": mean_search,
        "mean_full_eval_s": mean_full,
        "ratio": mean_search / mean_full,
        "median_plan_ratio": statistics.median(r["ratio"] for r in rows),
        "rows": rows,
    }


def fidelity_checks(fid: dict) -> dict[str, bool]:
    """A search evaluation costs at most a quarter of a full one; search accuracy ranks plans
    like full-fidelity accuracy on the same split (Spearman >= 0.8 over >= 8 plans)."""
    rho = fid.get("spearman_vs_full_val")
    return {
        "search_eval_le_quarter_full": fid.get("ratio") is not None and fid["ratio"] <= 0.25,
        "spearman_vs_full_val_ge_0_8": rho is not None and fid["plans"] >= 8 and rho >= 0.8,
    }


def searched_plans(dirs: list[Path]) -> list[tuple[dict, float, float, float]]:
    """(plan, accuracy, wall s, latency ms) of every complete search evaluation in the run
    stores (hadmc.db) under `dirs`."""
    from hadmc.store import RunStore

    out = []
    for db in sorted(p for d in dirs for p in Path(d).rglob("hadmc.db")):
        with RunStore(db) as store:
            out += [(e.plan, e.accuracy, e.wall_s, e.latency_ms) for e in store.evaluations(phase="search") if e.complete]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--searchers", default=",".join(SEARCHERS))
    ap.add_argument("--config", default=None, help="run configuration (default: the shipped quickstart)")
    ap.add_argument("--fidelity-plans", type=int, default=8)
    ap.add_argument("--out", default=None, help="keep the runs here (default: a temporary directory)")
    ap.add_argument("--plans-from", nargs="+", type=Path, default=None, metavar="DIR",
                    help="run only the fidelity check, on the plans searched by the runs under these folders")
    ap.add_argument("--summarize", action="store_true",
                    help="run no search: summarize the finished runs under --out (a benchmark stopped between runs), then the fidelity check")
    ap.add_argument("--reuse", action="store_true",
                    help="searches under --out that reached the budget are read back instead of run again (a stopped benchmark "
                    "continues); an unfinished one is started over")
    ap.add_argument("--skip-fidelity", action="store_true", help="leave out the fidelity check")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if (args.summarize or args.reuse) and not args.out:
        ap.error("--summarize and --reuse read the runs under --out DIR")
    names = [s.strip() for s in args.searchers.split(",") if s.strip()]
    unknown = [n for n in names if n not in SEARCHERS]
    if unknown:
        ap.error(f"unknown searcher(s) {unknown}; valid: {', '.join(SEARCHERS)}")

    from hadmc.api import build_config

    tmp = tempfile.TemporaryDirectory(prefix="hadmc-bench-search-") if args.out is None else None
    out = Path(args.out or tmp.name)
    base = build_config(args.config)
    started, load0 = time.perf_counter(), os.getloadavg()
    if args.plans_from:
        plans = searched_plans(args.plans_from)
        say(f"fidelity check alone: {len(plans)} search evaluations from {len(args.plans_from)} folder(s)")
        fid = fidelity_check(base, plans, args.fidelity_plans, out)
        report = {"plans_from": [str(d) for d in args.plans_from], "fidelity": fid, "checks": fidelity_checks(fid),
                  "wall_s": time.perf_counter() - started, "load_average": {"start": load0, "end": os.getloadavg()}}  # fmt: skip
        print(json.dumps(report, indent=1, default=str) if args.json else json.dumps(report["checks"]))
        if tmp is not None:
            tmp.cleanup()
        return 0
    reused: list[str] = []
    if args.summarize:
        results = finished_runs(out, names, args.budget, base)
        if not results:
            raise SystemExit(f"no run under {out} reached the budget of {args.budget}")
    else:
        results = {n: [] for n in names}
        for seed in range(args.seeds):
            order = names[seed % len(names):] + names[: seed % len(names)]  # rotate: drift hits all alike
            for name in order:
                run_dir = out / f"{name}-s{seed}"
                r = finished_run(run_dir, args.budget, base) if args.reuse else None
                if r is not None:
                    say(f"seed {seed}: {name}: reusing the finished search in {run_dir}")
                    reused.append(run_dir.name)
                    results[name].append(r)
                    continue
                if args.reuse and run_dir.exists():
                    shutil.rmtree(run_dir)  # unfinished: started over, as the others ran
                say(f"seed {seed}: {name}, budget {args.budget}")
                r = run_searcher(base, name, seed, args.budget, out)
                say(f"seed {seed}: {name}: hv {r['hv']}, {r['mean_eval_s']:.1f} s per evaluation, {r['total_s']:.0f} s")
                results[name].append(r)

    report: dict = {"budget": args.budget, "seeds": args.seeds, "config": base.model_dump(mode="json"), "searchers": {}}
    if reused:  # read back from an earlier invocation: not interleaved with the runs made now
        report["reused_runs"] = reused
    if args.summarize:
        report["summarized_from"] = str(out)
        report["seeds"] = {n: [r["seed"] for r in rs] for n, rs in results.items()}
    for name, rs in results.items():
        keys = rs[0]["hv"].keys()
        report["searchers"][name] = {
            "hypervolume": {k: summary([r["hv"][k] for r in rs]) for k in keys},
            "mean_eval_s": statistics.fmean(r["mean_eval_s"] for r in rs if r["mean_eval_s"] is not None),
            "total_s": summary([r["total_s"] for r in rs]) if all(r["total_s"] is not None for r in rs) else None,
            "failed": sum(r["failed"] for r in rs),
            "predicted_episodes": [r["predicted_episodes"] for r in rs],
        }
    all_plans = [p for rs in results.values() for r in rs for p in r["plans"]]
    fid = {} if args.skip_fidelity else fidelity_check(base, all_plans, args.fidelity_plans, out)
    report["fidelity"] = fid
    last = str(args.budget)
    s = report["searchers"]
    med = {n: s[n]["hypervolume"][last]["median"] for n in s}
    report["checks"] = {
        **({"ppo_hv_ge_random": med["ppo"] >= med["random"]} if {"ppo", "random"} <= set(med) else {}),
        **({"ppo_hv_ge_nsga2": med["ppo"] >= med["nsga2"]} if {"ppo", "nsga2"} <= set(med) else {}),
        **(fidelity_checks(fid) if fid else {}),
    }
    report["wall_s"] = time.perf_counter() - started
    report["load_average"] = {"start": load0, "end": os.getloadavg()}
    text = json.dumps(report, indent=1, default=str)
    if args.json:
        print(text)
    else:
        for n in s:
            print(f"{n:14s} hv@{last} median {med[n]:.3f}  {s[n]['mean_eval_s']:.1f} s/eval")
        print(
            f"fidelity: spearman vs full-fidelity val {fid.get('spearman_vs_full_val')}, vs full-fidelity test {fid.get('spearman')} "
            f"(the test split's ceiling {fid.get('spearman_full_val_vs_full_test')}), search/full {fid.get('ratio')}"
        )
        print(json.dumps(report["checks"]))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
