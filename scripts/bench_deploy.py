"""Does the search pay? The searched front against the hand-made one, all in one run; prints JSON with --json.

On the embedded default (ONNX Runtime on this CPU, 1 thread, batch 1):

1. ``hadmc compress --searcher ppo`` at a fixed budget (the run in ``--out``; an existing run
   there is resumed: its search continues up to the budget and its front is finalized);
2. the hand-made front a careful user would build, in the same run: uniform L1 pruning at 0,
   50, 70, 85 and 90%, each at fp32 and int8, and from 50% up int8 with the stem and classifier
   in fp32 (the usual post-training-quantization recipe), all with the same KD recovery (the
   run's most thorough update, T=4, alpha=0.7), evaluated like the front (test split, full
   recovery, artifact saved and measured);
3. the latency of every artifact (the original fp32 model, every searched plan evaluated at
   full fidelity, every hand-made plan) measured again here, ``--rounds`` times, interleaved
   searched/hand-made and in alternating order per round, so load drift hits both sides
   alike; a plan's latency is the median of its round medians.

For each accuracy floor (0, 0.25 and 1 point below the original's test accuracy) it reports
the fastest plan of each side meeting the floor, its latency, its speedup over the original
fp32 model, and the ratio of searched to hand-made speedup. Every figure carries its
provenance; the check ``all_measured`` fails if any is not ``measured``.

    python scripts/bench_deploy.py --json                                  # budget 32, runs/bench_deploy
    python scripts/bench_deploy.py --json --out runs/quickstart --budget 16 # on a finished quickstart run

Progress goes to stderr with the load average; machines are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def interleave(a: list, b: list) -> list:
    out = []
    for i in range(max(len(a), len(b))):
        out += a[i : i + 1] + b[i : i + 1]
    return out


def measure_interleaved(probe, artifacts: dict[str, bytes], order: list[str], rounds: int) -> dict[str, dict]:
    """Median latency per artifact over `rounds` rounds, each round in alternating order; every
    round is a new measurement (a probe wrapped in the run's measurement cache is unwrapped)."""
    from hadmc.hal import CachedLatencyProbe

    if isinstance(probe, CachedLatencyProbe):
        probe = probe.probe
    samples: dict[str, list[float]] = {k: [] for k in order}
    prov: dict[str, set[str]] = {k: set() for k in order}
    for r in range(rounds):
        say(f"latency round {r + 1}/{rounds} over {len(order)} artifacts")
        for key in order if r % 2 == 0 else list(reversed(order)):
            res = probe.measure(artifacts[key])
            samples[key].append(res.median_ms)
            prov[key].add(res.provenance)
    return {
        k: {"latency_ms": statistics.median(v), "rounds_ms": [round(x, 5) for x in v], "provenance": "measured" if prov[k] == {"measured"} else ",".join(sorted(prov[k]))}
        for k, v in samples.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench_deploy"), help="run directory (an existing run there is resumed)")
    ap.add_argument("--config", type=Path, help="base run configuration (default: the shipped quickstart; a smoke test passes a tiny one)")
    ap.add_argument("--budget", type=int, default=32, help="distinct plans the ppo searcher evaluates")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--floor-slack", type=float, default=None, help="search.floor_slack_pt for the search (points; default: the config's)")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds per artifact")
    ap.add_argument("--json", action="store_true", help="print the result as JSON (else a short table)")
    args = ap.parse_args(argv)

    from hadmc.api import build_config
    from hadmc.config import RunConfig
    from hadmc.handmade import evaluate_handmade, uniform_plans
    from hadmc.plan import CompressionPlan
    from hadmc.results import FLOORS_PT, fastest_within, load_results
    from hadmc.run import CompressionRun

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    config_path = args.out / "config.yaml"
    base = RunConfig.load_stored(config_path) if config_path.is_file() else args.config  # resume with the run's own settings
    cfg = build_config(base, out=args.out, searcher="ppo", budget=args.budget, seed=None if config_path.is_file() else args.seed,
                       floor_slack=None if config_path.is_file() else args.floor_slack)
    run = CompressionRun(cfg, resume=None, on_event=lambda kind, info: say(f"{info['phase']} {info['done']}: evaluating") if kind == "plan" else None)
    try:
        say(f"search: ppo, budget {args.budget}, {run.distinct('search')} plans already evaluated in {args.out}")
        run.search()
        t_search = time.perf_counter() - t0
        say("final front: full fidelity on the test split")
        run.finalize()
        t_final = time.perf_counter() - t0 - t_search
        plans = uniform_plans(run)
        say(f"hand-made front: {len(plans)} uniform plans with the same KD recovery")
        evaluate_handmade(run, plans)
        t_hand = time.perf_counter() - t0 - t_search - t_final
        res = load_results(args.out)
        searched, handmade = res.searched(), res.handmade_evaluations()
        artifacts = {e.plan_key: res.artifact_path(e.plan_key).read_bytes() for e in [*searched, *handmade]}
        import hashlib

        for e in [*searched, *handmade]:
            if hashlib.sha256(artifacts[e.plan_key]).hexdigest() != e.artifact_sha256:
                raise SystemExit(f"artifact of {e.plan_key[:12]} does not match its recorded SHA-256")
        original_plan = CompressionPlan.uniform(0.0, "fp32", budget=0)
        ev, compressed = run.evaluator.evaluate_with_artifact(original_plan, "final")
        if ev.plan_key != res.original.plan_key or compressed is None:
            raise SystemExit("could not export the original model again")
        artifacts[res.original.plan_key] = compressed.onnx_bytes
        order = [res.original.plan_key] + interleave([e.plan_key for e in searched], [e.plan_key for e in handmade])
        lat = measure_interleaved(run.evaluator.latency_probe, artifacts, order, args.rounds)
        probe_settings = run.evaluator.latency_probe.settings()
    finally:
        run.close()

    def figure(e, side: str) -> dict:
        return {
            "side": side, "plan_key": e.plan_key, "label": res.label(e),
            "accuracy": e.accuracy, "split": e.split, "accuracy_provenance": e.provenance.get("accuracy"),
            "fidelity": e.fidelity, "latency_ms": lat[e.plan_key]["latency_ms"], "latency_rounds_ms": lat[e.plan_key]["rounds_ms"],
            "latency_provenance": lat[e.plan_key]["provenance"], "latency_in_run_ms": e.latency_ms,
            "speedup": lat[res.original.plan_key]["latency_ms"] / lat[e.plan_key]["latency_ms"],
        }  # fmt: skip

    o = res.original
    latency = lambda e: lat[e.plan_key]["latency_ms"]  # noqa: E731
    floors = []
    for floor in FLOORS_PT:
        s = fastest_within(searched, o.accuracy, floor, latency)
        h = fastest_within(handmade, o.accuracy, floor, latency)
        row = {"floor_pt": floor, "accuracy_floor": o.accuracy - floor / 100.0,
               "searched": figure(s, "searched") if s else None, "handmade": figure(h, "handmade") if h else None}  # fmt: skip
        row["ratio"] = row["searched"]["speedup"] / row["handmade"]["speedup"] if s and h else None
        row["searched_faster"] = bool(s and (h is None or latency(s) < latency(h)))
        floors.append(row)
    every = [figure(e, "searched") for e in searched] + [figure(e, "handmade") for e in handmade]
    provs = {f["accuracy_provenance"] for f in every} | {f["latency_provenance"] for f in every} | {lat[o.plan_key]["provenance"], o.provenance.get("accuracy")}
    out = {
        "benchmark": "bench_deploy",
        "run_dir": str(args.out),
        "device": o.device,
        "probe": probe_settings,
        "versions": o.versions,
        "searcher": "ppo",
        "budget": args.budget,
        "fidelity": cfg.search.fidelity,
        "floor_slack_pt": cfg.search.floor_slack_pt,
        "evaluated": res.evaluated,
        "predicted_episodes": res.meta.get("predicted_episodes"),
        "rounds": args.rounds,
        "original": {"plan_key": o.plan_key, "accuracy": o.accuracy, "split": o.split, "accuracy_provenance": o.provenance.get("accuracy"),
                     "latency_ms": lat[o.plan_key]["latency_ms"], "latency_rounds_ms": lat[o.plan_key]["rounds_ms"],
                     "latency_provenance": lat[o.plan_key]["provenance"]},  # fmt: skip
        "floors": floors,
        "plans": every,
        "checks": {
            **{f"searched_faster_within_{r['floor_pt']:g}pt": r["searched_faster"] for r in floors},
            "all_measured": provs == {"measured"},
        },
        "wall_s": {"search": t_search, "finalize": t_final, "handmade": t_hand, "total": time.perf_counter() - t0},
        "load_avg": {"start": load_start, "end": os.getloadavg()},
    }
    out["ok"] = all(out["checks"].values())
    if args.json:
        print(json.dumps(out, indent=1, default=str))
    else:
        for r in floors:
            s, h = r["searched"], r["handmade"]
            fmt = lambda f: "none" if f is None else f"{f['label']} {100 * f['accuracy']:.2f}% {f['latency_ms']:.3f} ms {f['speedup']:.1f}x"  # noqa: E731
            print(f"within {r['floor_pt']:g} pt: searched {fmt(s)} | hand-made {fmt(h)} | ratio {r['ratio'] and round(r['ratio'], 2)}")
    say(f"done in {out['wall_s']['total']:.0f} s; checks {out['checks']}")
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
