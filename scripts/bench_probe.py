"""Benchmark of the HAL's latency probe on this machine; prints JSON with --json.

Checks (issue 3):
- repeatability: CoV of the medians of 10 repeated ort-cpu measurements of ResNet-18 at
  224x224 (random weights, batch 1, 1 thread) <= 3%;
- remote probe on loopback (a real `hadmc probe serve` subprocess) within 5% of the local figure;
- a cache hit returns without re-running the model (times shown, model runs counted);
- the energy figure on this machine carries its provenance (``estimated`` without counters).

Other processes loading the CPU inflate the spread; the load average is reported with the result.
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


def _resnet18_onnx() -> bytes:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), buf, dynamo=False, input_names=["image"], output_names=["logits"])
    return buf.getvalue()


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

    result = {
        "model": "torchvision resnet18 (random weights), 1x3x224x224 fp32 ONNX",
        "device_id": probe.device_id,
        "backend": "ort-cpu",
        "threads": args.threads,
        "settings": local[0].settings,
        "load_avg_before": [round(x, 2) for x in load_before],
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
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
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        rep, rem, cac = result["repeatability"], result["remote_loopback"], result["cache"]
        print(f"local median {local_median:.3f} ms, CoV of {args.repeats} medians {100 * rep['cov_of_medians']:.2f}% ({'ok' if rep['pass'] else 'FAIL'})")
        print(f"remote {rem['remote_median_ms']} ms vs local {rem['local_median_ms']} ms: {100 * rem['relative_difference']:.2f}% ({'ok' if rem['pass'] else 'FAIL'})")
        print(f"cache: measured in {cac['first_s']} s, hit in {cac['hit_s']} s ({cac['hit_provenance']})")
        print(f"energy {energy.mj_per_inference:.3f} mJ/inference ({energy.provenance}, {energy.method})")
    ok = result["repeatability"]["pass"] and result["remote_loopback"]["pass"] and result["cache"]["pass"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
