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
