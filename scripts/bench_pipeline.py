"""Latency of fp32, 50%-pruned, INT8 and pruned+INT8 torchvision models on ONNX Runtime CPU.

Random weights are fine for latency (accuracy is measured elsewhere). Everything is measured
in this run, on this machine, with the HAL's ort-cpu probe (1 thread, batch 1 by default).

    python scripts/bench_pipeline.py --json
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import time

import numpy as np
import torch
import torchvision

from hadmc import hal
from hadmc.groups import layer_groups
from hadmc.pipeline import count_macs_params, export_onnx, fold_batchnorm, prune, quantize_int8, resolve_plan
from hadmc.plan import CompressionPlan


def variants(arch: str, size: int, ratio: float, calib_batches: int) -> dict[str, tuple[bytes, int, int]]:
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1000).eval()
    example = torch.randn(1, 3, size, size)
    groups = layer_groups(model, example)
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal((4, 3, size, size), dtype=np.float32) for _ in range(calib_batches)]
    out = {}
    for pruned in (False, True):
        plan = resolve_plan(CompressionPlan.uniform(ratio if pruned else 0.0, "fp32", budget=0), groups)
        net = copy.deepcopy(model)
        prune(net, plan, groups, example)
        macs, params = count_macs_params(net, example)
        fold_batchnorm(net, plan, groups, example)
        fp32 = export_onnx(net, example)
        int8, _, _ = quantize_int8(fp32, {g.name for g in groups}, groups, calib)
        tag = f"pruned{int(ratio * 100)}" if pruned else ""
        out[tag or "fp32"] = (fp32, macs, params)
        out[f"{tag}+int8" if tag else "int8"] = (int8, macs, params)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    ap.add_argument("--archs", default="resnet18,mobilenet_v2")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--min-seconds", type=float, default=2.0)
    ap.add_argument("--calibration-batches", type=int, default=4)
    args = ap.parse_args(argv)

    probe = hal.get_latency_probe("ort-cpu", threads=args.threads, min_seconds=args.min_seconds, min_iterations=50)
    report = {
        "machine": {"cpu": probe.device.name, "python": platform.python_version(), "threads": args.threads, "batch": 1},
        "size": args.size,
        "results": {},
    }
    for arch in args.archs.split(","):
        t0 = time.perf_counter()
        built = variants(arch, args.size, args.ratio, args.calibration_batches)
        rows = {}
        for name, (onnx_bytes, macs, params) in built.items():
            lat = probe.measure(onnx_bytes)
            rows[name] = {
                "median_ms": round(lat.median_ms, 4),
                "p90_ms": round(lat.p90_ms, 4),
                "cov": round(lat.cov, 4),
                "iterations": lat.iterations,
                "macs": macs,
                "params": params,
                "bytes": len(onnx_bytes),
                "provenance": lat.provenance,
            }
        base = rows["fp32"]["median_ms"]
        for r in rows.values():
            r["speedup_vs_fp32"] = round(base / r["median_ms"], 2)
        report["results"][arch] = {"variants": rows, "build_and_measure_s": round(time.perf_counter() - t0, 1)}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for arch, res in report["results"].items():
            print(arch)
            for name, r in res["variants"].items():
                print(f"  {name:14s} {r['median_ms']:9.3f} ms  {r['speedup_vs_fp32']:5.2f}x  cov {r['cov']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
