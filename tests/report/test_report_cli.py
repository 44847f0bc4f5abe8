"""`hadmc report / compare / export` from the shell: results on success, one clear message and a
non-zero exit (never a traceback) on bad input."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys

import pytest
from report_fixtures import known_run, tiny_onnx


def hadmc(*args):
    # the console script's entry point (``python -m hadmc.cli`` would register the commands on a second module)
    cmd = [sys.executable, "-c", "import sys; from hadmc.cli import main; sys.exit(main())", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def run_dir(tmp_path):
    return known_run(tmp_path / "run", artifacts={"accurate": tiny_onnx(0), "fast": tiny_onnx(1)}).run_dir


def test_report_and_export_print_where_they_wrote_and_the_sha256(run_dir, tmp_path):
    out = hadmc("report", run_dir)
    assert out.returncode == 0, out.stderr
    assert (run_dir / "report.html").is_file() and len(list((run_dir / "report_figures").glob("*.png"))) == 5
    out = hadmc("export", run_dir, "--out", tmp_path / "m.onnx")
    assert out.returncode == 0, out.stderr
    digest = hashlib.sha256((tmp_path / "m.onnx").read_bytes()).hexdigest()
    assert f"sha256 {digest}" in out.stdout and "equal to the measured artifact" in out.stdout and "97.50% top-1 (test split)" in out.stdout
    out = hadmc("compare", run_dir, run_dir, "--out", tmp_path / "c.html")
    assert out.returncode == 0 and (tmp_path / "c.html").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["report", "MISSING"], "does not exist"),
        (["export", "MISSING", "--out", "OUT"], "does not exist"),
        (["export", "RUN", "--plan", "deadbeef00", "--out", "OUT"], "no plan 'deadbeef00'"),
        (["export", "RUN", "--plan", "42", "--out", "OUT"], "rows 1 to 3"),
        (["export", "RUN", "--format", "tflite", "--out", "OUT"], "valid: onnx, tensorrt"),
        (["compare", "RUN"], "at least two"),
    ],
)
def test_bad_input_gives_one_clear_message_and_a_nonzero_exit(run_dir, tmp_path, args, message):
    subst = {"MISSING": tmp_path / "nope", "RUN": run_dir, "OUT": tmp_path / "x.onnx"}
    out = hadmc(*[subst.get(a, a) for a in args])
    assert out.returncode != 0
    text = out.stdout + out.stderr
    assert message in text and "Traceback" not in text
    assert len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_export_without_tensorrt_names_the_extra_to_install(run_dir, tmp_path):
    out = hadmc("export", run_dir, "--format", "tensorrt", "--out", tmp_path / "m.engine")
    assert out.returncode != 0 and "pip install 'hadmc[tensorrt]'" in out.stderr and "Traceback" not in out.stderr


def test_compress_says_when_no_plan_on_the_front_beats_the_original(tmp_path, capsys):
    # seen on a GPU (ONNX Runtime CUDA, batch 1): every compressed plan ran slower than the
    # original, and "best plan ... (0.5x)" alone read like a recommendation to ship it
    from report_fixtures import evaluation, plan

    from hadmc.api import build_config
    from hadmc.cli_compress import _print_result
    from hadmc.plan import CompressionPlan
    from hadmc.run import CompressionResult

    cfg = build_config(None, out=tmp_path / "run")
    original = evaluation(CompressionPlan.uniform(0.0, "fp32", budget=0), "final", 0.96, 0.78, 44_000_000)
    small = evaluation(plan((0.5, 0.5), "int8"), "final", 0.96, 1.36, 1_000_000)
    result = CompressionResult(run_dir=tmp_path / "run", original=original, front=[original, small], best=small, evaluations=8)
    _print_result(cfg, result, 1.0)
    out = " ".join(capsys.readouterr().out.split())
    assert f"no plan on the front is faster than the original on this target: the fastest, {small.plan_key[:10]}, takes 1.360 ms" in out
    assert "against the original's 0.780 ms" in out and "latency 1, energy 0, size 0.25" in out

    faster = evaluation(plan((0.7, 0.7), "int8"), "final", 0.95, 0.5, 600_000)
    _print_result(cfg, CompressionResult(run_dir=tmp_path / "run", original=original, front=[original, faster, small], best=small), 1.0)
    assert "faster than the original" not in capsys.readouterr().out
