"""The GPU paths end to end on the embedded default; prints JSON with --json.

Each part applies plans through the real evaluator with the GPU as the target (device
``local-gpu``), so the artifact is exported, converted (fp16) or quantized (QDQ INT8 with the
GPU's recipe), its accuracy read on the test split *in the target runtime*, and its latency
measured there:

- ``ort-cuda``: ONNX Runtime's CUDA execution provider, fp32 and fp16 artifacts;
- ``ort-trt``: ONNX Runtime's TensorRT execution provider, fp16 and QDQ INT8 artifacts;
- ``tensorrt``: native TensorRT engines (strongly typed) built from a QDQ INT8 and an fp16
  artifact, timed with CUDA events;
- ``nvml-energy``: NVML's total-energy counter over a window of back-to-back inferences
  (ONNX Runtime CUDA, fp16), with its provenance.

A part passes when every plan evaluates without error, its figures are ``measured``, and its
accuracy is within ``--max-drop`` points of the fp32 original's (the plans prune nothing, so
only precision and runtime change the answer). A part whose runtime is not installed (no
onnxruntime-gpu, no TensorRT, no nvidia-ml-py) is reported as skipped with what to install;
``--require-all`` makes that a failure. On a machine without an NVIDIA GPU the script says
"no GPU here" and exits 0; otherwise it exits 1 when a part fails or none could run.

    python scripts/check_gpu.py --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

PARTS: dict[str, dict] = {
    "ort-cuda": {"target": "ort-cuda", "plans": ("fp32", "fp16"), "energy": None},
    "ort-trt": {"target": "ort-trt", "plans": ("fp16", "int8"), "energy": None},
    "tensorrt": {"target": "tensorrt", "plans": ("int8", "fp16"), "energy": None},
    "nvml-energy": {"target": "ort-cuda", "plans": ("fp16",), "energy": "nvml"},
}


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def gpu_here() -> str | None:
    """Why there is no GPU to check, or None when there is one."""
    try:
        import torch
    except ImportError:
        return "torch is not importable"
    if not torch.cuda.is_available():
        return "torch.cuda.is_available() is False (no NVIDIA GPU or driver)"
    return None


def _loads(soname: str) -> bool:
    import ctypes

    try:
        ctypes.CDLL(soname)
    except OSError:
        return False
    return True


def missing_software(name: str) -> str | None:
    """Why a part cannot run on this machine (its runtime is not installed), or None.

    A part that could run but fails is a failure; a part whose runtime is absent is reported as
    skipped with what to install, so the script says what this GPU machine can and cannot do.
    """
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if name in ("ort-cuda", "nvml-energy") and "CUDAExecutionProvider" not in providers:
        return f"onnxruntime {ort.__version__} has no CUDAExecutionProvider ({providers}): pip install 'hadmc[gpu]'"
    if name == "nvml-energy":
        try:
            import pynvml  # noqa: F401
        except ImportError:
            return "nvidia-ml-py is not installed: pip install 'hadmc[gpu]'"
    if name == "ort-trt":
        if "TensorrtExecutionProvider" not in providers:
            return f"onnxruntime {ort.__version__} has no TensorrtExecutionProvider ({providers}): pip install 'hadmc[gpu]'"
        try:
            import tensorrt  # noqa: F401  (loads libnvinfer when TensorRT came from pip)
        except ImportError:
            if not _loads("libnvinfer.so.10"):
                return "TensorRT is not installed (no tensorrt module, no libnvinfer.so.10 on the library path): pip install 'hadmc[tensorrt]'"
    if name == "tensorrt":
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return "TensorRT's Python API is not installed: pip install 'hadmc[tensorrt]'"
    return None


def run_part(name: str, spec: dict, max_drop_pt: float, work: Path) -> dict:
    from hadmc.api import build_config
    from hadmc.evaluation import build_evaluator
    from hadmc.plan import CompressionPlan

    t0 = time.perf_counter()
    cfg = build_config(
        {"name": name, "device": "local-gpu", "use_cache": False, "energy": {"probe": spec["energy"]}},
        target=spec["target"], out=work / name,
    )  # fmt: skip
    out: dict = {"target": spec["target"], "plans": {}, "problems": []}
    try:
        evaluator = build_evaluator(cfg)
        base = evaluator.baseline
        out["device"] = base.device
        out["original_fp32"] = {"accuracy": base.accuracy, "latency_ms": base.latency_ms, "provenance": base.provenance}
        for precision in spec["plans"]:
            say(f"{name}: {precision}")
            ev = evaluator.evaluate(CompressionPlan.uniform(0.0, precision, budget=0), "final")
            row = {"accuracy": ev.accuracy, "split": ev.split, "latency_ms": ev.latency_ms, "latency_cov": ev.latency_cov,
                   "energy_mj": ev.energy_mj, "model_bytes": ev.model_bytes, "provenance": ev.provenance, "probe": ev.probe,
                   "quantization": ev.quantization, "error": ev.error}  # fmt: skip
            out["plans"][precision] = row
            if ev.error:
                out["problems"].append(f"{precision}: {ev.error}")
                continue
            not_measured = {k: v for k, v in ev.provenance.items() if v != "measured"}
            if not_measured:
                out["problems"].append(f"{precision}: figures not measured: {not_measured}")
            if base.accuracy is not None and ev.accuracy is not None and ev.accuracy < base.accuracy - max_drop_pt / 100.0:
                out["problems"].append(f"{precision}: accuracy {100 * ev.accuracy:.2f}% is more than {max_drop_pt} points below fp32's {100 * base.accuracy:.2f}%")
            if spec["energy"] and (ev.energy_mj is None or ev.energy_mj <= 0):
                out["problems"].append(f"{precision}: no energy figure from {spec['energy']}")
    except Exception as exc:  # a part that cannot even start fails with its reason; the others still run
        out["problems"].append(f"{type(exc).__name__}: {exc}")
        out["traceback"] = traceback.format_exc(limit=6)
    out["pass"] = not out["problems"]
    out["wall_s"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object (else one line per part)")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    ap.add_argument("--require-all", action="store_true", help="fail when a part is skipped because its runtime is not installed")
    ap.add_argument("--max-drop", type=float, default=2.0, help="largest accuracy loss (points) a precision may cost")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.parts.split(",")) - set(PARTS))
    if unknown:
        ap.error(f"unknown parts {unknown}; valid: {', '.join(PARTS)}")
    why = gpu_here()
    if why is not None:
        result = {"gpu": False, "message": f"no GPU here: {why}; nothing was checked", "parts": {}}
        print(json.dumps(result, indent=1) if args.json else result["message"])
        return 0
    parts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="hadmc-check-gpu-") as work:
        for name in args.parts.split(","):
            why_not = missing_software(name)
            if why_not is not None:
                say(f"{name}: skipped, {why_not}")
                parts[name] = {"target": PARTS[name]["target"], "pass": None, "skipped": why_not}
                continue
            parts[name] = run_part(name, PARTS[name], args.max_drop, Path(work))
    ran = [p for p in parts.values() if p["pass"] is not None]
    skipped = sorted(n for n, p in parts.items() if p["pass"] is None)
    ok = bool(ran) and all(p["pass"] for p in ran) and not (args.require_all and skipped)
    result = {"gpu": True, "parts": parts, "ok": ok, "skipped": skipped, "load_avg": os.getloadavg()}
    if args.json:
        print(json.dumps(result, indent=1, default=str))
    else:
        for name, p in parts.items():
            state = "skipped" if p["pass"] is None else "pass" if p["pass"] else "FAIL"
            print(f"{name}: {state} {p.get('skipped') or '; '.join(p['problems'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
