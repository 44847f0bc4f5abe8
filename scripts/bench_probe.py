"""Benchmark of the HAL's latency probe on this machine; prints JSON with --json.

Checks (issue 3):
- repeatability: CoV of the medians of 10 repeated ort-cpu measurements of ResNet-18 at
  224x224 (random weights, batch 1, 1 thread) <= 3%;
- remote probe on loopback (a real `hadmc probe serve` subprocess) within 5% of the local figure;
- a cache hit returns without re-running the model (times shown, model runs counted);
- the energy figure on this machine carries its provenance (``estimated`` without counters).

Contention (issue 10): with one busy competing process that the benchmark starts itself (a
pure-Python spin loop), ResNet-18 at 224x224 and at 206x206 (quiet latencies about 10% apart)
are compared with ``measure_relative`` (alternating blocks) in 20 trials: the faster one must
be ranked faster in at least 19 and the median measured ratio must lie within 3% of the quiet
ratio. The same trials also time the two separately, one median after the other, to show
what the interleaving buys.

Other processes loading the CPU inflate the spread; load averages are reported next to every
section's figures.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _resnet18_onnx(size: int = 224) -> bytes:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, size, size), buf, dynamo=False, input_names=["image"], output_names=["logits"])
    return buf.getvalue()


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _busy_process() -> subprocess.Popen:
    """One busy competing process: a pure-Python spin loop, never blocking."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def contention(threads: int, trials: int, quiet_trials: int) -> dict:
    """Rank two artifacts ~10% apart under one competing process (see the module docstring)."""
    import psutil

    from hadmc.hal import get_latency_probe

    slow, fast = _resnet18_onnx(224), _resnet18_onnx(206)
    # the timing minimums of a run config's defaults (50 runs and 1 s per artifact)
    probe = get_latency_probe("ort-cpu", threads=threads, min_iterations=50, min_seconds=1.0)
    quiet_load = _load()
    quiet = [probe.measure_relative(fast, slow) for _ in range(quiet_trials)]
    quiet_ratio = statistics.median(r.ratio for r in quiet)
    busy = _busy_process()
    time.sleep(1.0)  # let the competitor get going and show in the load average
    rows = []
    try:
        for i in range(trials):
            rel = probe.measure_relative(fast, slow)
            # the same comparison made the usual way: one median, then the other (order alternates)
            order = [("slow", slow), ("fast", fast)][:: 1 if i % 2 == 0 else -1]
            medians = {name: probe.measure(data).median_ms for name, data in order}
            cand = rel.candidate
            rows.append(
                {
                    "ratio": round(rel.ratio, 4),
                    "spread": round(rel.spread, 4),
                    "noisy": rel.noisy,
                    "rounds": rel.rounds,
                    "separate_ratio": round(medians["fast"] / medians["slow"], 4),
                    "cpu_share": round(cand.cpu_s / cand.wall_s, 3) if cand.cpu_s and cand.wall_s else None,
                    "load_avg": cand.load_avg,
                }
            )
        competitor_cpu_s = sum(psutil.Process(busy.pid).cpu_times()[:2])
    finally:
        busy.kill()
        busy.wait(10)
    ratios = [r["ratio"] for r in rows]
    separate = [r["separate_ratio"] for r in rows]
    median_ratio = statistics.median(ratios)
    deviation = abs(median_ratio / quiet_ratio - 1.0)
    ranked = sum(r < 1.0 for r in ratios)
    return {
        "artifacts": "resnet18 at 224x224 (reference) and 206x206 (candidate), fp32, batch 1",
        "competitor": "one `python -c 'while True: pass'` process started by the benchmark",
        "competitor_cpu_s": round(competitor_cpu_s, 1),
        "settings": {"min_iterations": 50, "min_seconds": 1.0, **quiet[0].candidate.settings["relative"]},
        "quiet": {
            "load_avg": quiet_load,
            "ratios": [round(r.ratio, 4) for r in quiet],
            "ratio": round(quiet_ratio, 4),
            "reference_median_ms": round(statistics.median(r.reference.median_ms for r in quiet), 3),
            "candidate_median_ms": round(statistics.median(r.candidate.median_ms for r in quiet), 3),
        },
        "trials": rows,
        "ranked_correctly": ranked,
        "ranked_bound": f">= {trials - 1} of {trials}",
        "median_ratio": round(median_ratio, 4),
        "median_ratio_vs_quiet": round(deviation, 4),
        "ratio_bound": 0.03,
        "trials_within_3pct_of_quiet": sum(abs(r / quiet_ratio - 1.0) <= 0.03 for r in ratios),
        "noisy_trials": sum(r["noisy"] for r in rows),
        "separate_medians": {
            "ranked_correctly": sum(r < 1.0 for r in separate),
            "median_ratio": round(statistics.median(separate), 4),
            "trials_within_3pct_of_quiet": sum(abs(r / quiet_ratio - 1.0) <= 0.03 for r in separate),
            "worst_ratio_vs_quiet": round(max(abs(r / quiet_ratio - 1.0) for r in separate), 4),
        },
        "pass": ranked >= trials - 1 and deviation <= 0.03,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp: Path) -> tuple[subprocess.Popen, str, Path]:
    import httpx

    token_file = tmp / "token"
    token_file.write_text(secrets.token_urlsafe(32))
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hadmc.cli_probe", "serve", "--port", str(port), "--token-file", str(token_file), "--store-dir", str(tmp / "store")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://{url}/health", timeout=1).status_code == 200:
                return proc, url, token_file
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("probe server did not start")


class _CountingProbe:
    """Counts the measurements that reach the real probe (each opens a session and runs the model)."""

    def __init__(self, probe):
        self.probe = probe
        self.calls = 0

    def measure(self, *args, **kwargs):
        self.calls += 1
        return self.probe.measure(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.probe, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print JSON only")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trials", type=int, default=20, help="contention trials")
    parser.add_argument("--quiet-trials", type=int, default=3, help="comparisons on the quiet machine first")
    parser.add_argument("--skip-contention", action="store_true")
    args = parser.parse_args()

    from hadmc.hal import MeasurementCache, cached_probe, get_latency_probe, measure_latency_and_energy

    load_before = os.getloadavg()
    data = _resnet18_onnx()
    probe = get_latency_probe("ort-cpu", threads=args.threads)

    # 1. repeatability of the median over independent measurements (a new session each time)
    local = [probe.measure(data) for _ in range(args.repeats)]
    medians = [r.median_ms for r in local]
    cov_medians = statistics.stdev(medians) / statistics.mean(medians)
    local_median = statistics.median(medians)

    # 2. remote probe on loopback vs local, measured back to back so both see the same load
    with tempfile.TemporaryDirectory(prefix="hadmc-bench-") as tmp:
        proc, url, token_file = _start_server(Path(tmp))
        try:
            remote_probe = get_latency_probe(f"remote://{url}", token_file=token_file, threads=args.threads)
            pairs = []
            for _ in range(3):
                pairs.append((remote_probe.measure(data).median_ms, probe.measure(data).median_ms))
            remote_median = statistics.median(p[0] for p in pairs)
            local_again = statistics.median(p[1] for p in pairs)
            remote_device = remote_probe.device_id
        finally:
            proc.terminate()
            proc.wait(10)
    remote_rel = abs(remote_median - local_again) / local_again

    # 3. cache: the second request for the same artifact is answered without running the model
    with tempfile.TemporaryDirectory(prefix="hadmc-bench-cache-") as tmp:
        counting = _CountingProbe(probe)
        cached = cached_probe(counting, MeasurementCache(Path(tmp) / "hadmc.db"))
        t0 = time.perf_counter()
        first = cached.measure(data)
        t_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = cached.measure(data)
        t_hit = time.perf_counter() - t0
        sessions_opened = counting.calls

    # 4. latency, then energy per inference with its provenance
    energy = measure_latency_and_energy(probe, data, probe.energy_probe("auto")).energy
    load_quiet_end = _load()

    # 5. two artifacts ~10% apart, ranked under one competing process
    contended = None if args.skip_contention else contention(args.threads, args.trials, args.quiet_trials)

    result = {
        "model": "torchvision resnet18 (random weights), 1x3x224x224 fp32 ONNX",
        "device_id": probe.device_id,
        "backend": "ort-cpu",
        "threads": args.threads,
        "settings": local[0].settings,
        "host": local[0].host,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after_quiet_sections": load_quiet_end,
        "load_avg_after": _load(),
        "repeatability": {
            "repeats": args.repeats,
            "medians_ms": [round(m, 3) for m in medians],
            "iterations_each": [r.iterations for r in local],
            "within_run_cov": [round(r.cov, 4) for r in local],
            "cov_of_medians": round(cov_medians, 4),
            "bound": 0.03,
            "pass": cov_medians <= 0.03,
        },
        "remote_loopback": {
            "remote_median_ms": round(remote_median, 3),
            "local_median_ms": round(local_again, 3),
            "pairs_ms": [[round(a, 3), round(b, 3)] for a, b in pairs],
            "relative_difference": round(remote_rel, 4),
            "same_device_id": remote_device == probe.device_id,
            "bound": 0.05,
            "pass": remote_rel <= 0.05,
        },
        "cache": {
            "first_provenance": first.provenance,
            "first_s": round(t_first, 3),
            "hit_provenance": second.provenance,
            "hit_s": round(t_hit, 5),
            "model_sessions_opened": sessions_opened,
            "pass": second.provenance == "cached" and sessions_opened == 1 and second.median_ms == first.median_ms,
        },
        "energy": {
            "mj_per_inference": round(energy.mj_per_inference, 4),
            "provenance": energy.provenance,
            "method": energy.method,
            "detail": energy.detail,
        },
        "contention": contended,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rep, rem, cac = result["repeatability"], result["remote_loopback"], result["cache"]
        print(f"local median {local_median:.3f} ms, CoV of {args.repeats} medians {100 * rep['cov_of_medians']:.2f}% ({'ok' if rep['pass'] else 'FAIL'})")
        print(f"remote {rem['remote_median_ms']} ms vs local {rem['local_median_ms']} ms: {100 * rem['relative_difference']:.2f}% ({'ok' if rem['pass'] else 'FAIL'})")
        print(f"cache: measured in {cac['first_s']} s, hit in {cac['hit_s']} s ({cac['hit_provenance']})")
        print(f"energy {energy.mj_per_inference:.3f} mJ/inference ({energy.provenance}, {energy.method})")
        if contended:
            c = contended
            print(
                f"contention: ranked {c['ranked_correctly']}/{len(c['trials'])} (separate medians {c['separate_medians']['ranked_correctly']}), "
                f"median ratio {c['median_ratio']} vs quiet {c['quiet']['ratio']} ({100 * c['median_ratio_vs_quiet']:.2f}%) "
                f"({'ok' if c['pass'] else 'FAIL'}); load average {c['trials'][-1]['load_avg']}"
            )
    ok = result["repeatability"]["pass"] and result["remote_loopback"]["pass"] and result["cache"]["pass"]
    ok = ok and (contended is None or contended["pass"])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
