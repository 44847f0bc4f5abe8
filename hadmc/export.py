"""`hadmc export`: hand a plan of a finished run to the target.

``onnx`` copies the artifact the run measured, byte for byte, after checking its SHA-256
against the one recorded with the evaluation (a file changed since is refused). ``tensorrt``
builds an engine from that artifact with the HAL's TensorRT builder (strongly typed, from the
graph's own precisions: QDQ int8 or fp16), which needs TensorRT and an NVIDIA GPU.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .errors import ConfigError, ProbeError
from .evaluation import Evaluation
from .files import write_atomic
from .results import RunResults

log = logging.getLogger(__name__)

ExportFormat = Literal["onnx", "tensorrt"]
FORMATS: tuple[str, ...] = ("onnx", "tensorrt")


@dataclass
class ExportResult:
    """What was written.

    :param path: the file written
    :param sha256: SHA-256 of the file written
    :param artifact_sha256: SHA-256 of the measured ONNX artifact (as recorded in the run)
    :param evaluation: the plan's final evaluation (its figures are what the artifact measured)
    :param format: ``onnx`` or ``tensorrt``
    """

    path: Path
    sha256: str
    artifact_sha256: str
    evaluation: Evaluation
    format: str


def measured_artifact(res: RunResults, ev: Evaluation) -> bytes:
    """The bytes of the artifact `ev` was measured on, checked against its recorded SHA-256."""
    if ev.plan_key == res.original.plan_key and not ev.artifact_sha256:
        raise ConfigError("the original model has no saved artifact in the run; export a plan of the front (--plan best or a row number)")
    if not ev.artifact_sha256:
        raise ConfigError(f"plan {ev.plan_key[:12]} has no saved artifact (the run kept no files for it); re-run it with hadmc compress --out DIR")
    path = res.artifact_path(ev.plan_key)
    if not path.is_file():
        raise ConfigError(f"the artifact of plan {ev.plan_key[:12]} is missing: {path}; the run directory is incomplete")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != ev.artifact_sha256:
        raise ConfigError(
            f"{path} has SHA-256 {digest[:16]}..., the run measured {ev.artifact_sha256[:16]}...: the file changed after "
            "it was measured; refusing to export it"
        )
    return data


def export_plan(res: RunResults, plan: str = "best", fmt: str = "onnx", out: str | Path | None = None) -> ExportResult:
    """Export a plan of a finished run (see module docstring).

    :param res: the run (`hadmc.results.load_results`)
    :param plan: ``best``, a row number of the front table (1 = fastest) or a plan key prefix
    :param fmt: ``onnx`` or ``tensorrt``
    :param out: the file to write (default ``RUN_DIR/export/<key>.onnx`` or ``.engine``)
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")
    ev = res.find(plan)
    data = measured_artifact(res, ev)
    suffix = ".onnx" if fmt == "onnx" else ".engine"
    path = Path(out) if out is not None else res.run_dir / "export" / f"{ev.plan_key[:16]}{suffix}"
    if path.is_dir():
        raise ConfigError(f"--out {path} is a directory; pass the path of the file to write")
    payload = data if fmt == "onnx" else tensorrt_engine(data, ev)
    write_atomic(path, payload)
    log.info("exported plan %s as %s to %s", ev.plan_key[:12], fmt, path)
    return ExportResult(path, hashlib.sha256(payload).hexdigest(), ev.artifact_sha256 or "", ev, fmt)


def tensorrt_engine(onnx_bytes: bytes, ev: Evaluation) -> bytes:
    """A serialized TensorRT engine of the artifact, built as the HAL's `tensorrt` probe builds it."""
    from .hal.tensorrt_probe import build_engine, import_tensorrt, plan_build

    trt = import_tensorrt()  # a ProbeError naming `pip install 'hadmc[tensorrt]'` when missing
    quant = ev.quantization or {}
    if quant.get("activation") == "QUInt8":
        raise ProbeError(
            f"this artifact was quantized for {ev.device or 'a CPU'} (INT8 recipe {quant.get('name', 'U8S8')}: unsigned activations), "
            "which TensorRT cannot run; compress for the GPU (hadmc compress --target tensorrt) and export that run"
        )
    build = plan_build(onnx_bytes, device_key=ev.device or "gpu", trt_version=trt.__version__)
    return build_engine(trt, onnx_bytes, build)


__all__ = ["ExportResult", "FORMATS", "export_plan", "measured_artifact", "tensorrt_engine"]
