"""scripts/check_gpu.py and scripts/check_report.py keep their contracts: no GPU is a clear
"no GPU here" and exit 0; a report passes the browser check, a broken page fails it."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from report_fixtures import known_run

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_cuda(), reason="a GPU is here: check_gpu runs its parts")
def test_check_gpu_without_a_gpu_says_so_and_exits_0():
    out = subprocess.run([sys.executable, str(SCRIPTS / "check_gpu.py"), "--json"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["gpu"] is False and result["message"].startswith("no GPU here") and result["parts"] == {}


def test_check_gpu_names_what_to_install_for_a_part_whose_runtime_is_missing(monkeypatch):
    import importlib.util

    import onnxruntime as ort

    spec = importlib.util.spec_from_file_location("check_gpu", SCRIPTS / "check_gpu.py")
    check_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_gpu)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    assert "pip install 'hadmc[gpu]'" in check_gpu.missing_software("ort-cuda")
    assert "pip install 'hadmc[gpu]'" in check_gpu.missing_software("nvml-energy")
    assert "TensorrtExecutionProvider" in check_gpu.missing_software("ort-trt")
    assert "pip install 'hadmc[tensorrt]'" in check_gpu.missing_software("tensorrt")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert check_gpu.missing_software("ort-cuda") is None
    if not check_gpu._loads("libnvinfer.so.10"):
        assert "no libnvinfer.so.10" in check_gpu.missing_software("ort-trt")


browser = pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")), reason="no Chromium here (CI has none)")


@browser
def test_a_report_passes_the_browser_check_and_a_broken_page_fails_it(tmp_path):
    pytest.importorskip("selenium")
    from PIL import Image

    run = known_run(tmp_path / "run").run_dir
    ok = subprocess.run([sys.executable, str(SCRIPTS / "check_report.py"), str(run)], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    result = json.loads(ok.stdout)
    assert result["ok"] and len(result["images"]) == 5 and not result["console"]
    assert Image.open(result["screenshot"]).size[0] == 1280
    buf = io.BytesIO()
    Image.new("RGB", (400, 300), "white").save(buf, "PNG")
    blank = base64.b64encode(buf.getvalue()).decode()
    page = tmp_path / "broken.html"
    page.write_text(f'<!DOCTYPE html><html><body><img data-chart="broken" src="data:image/png;base64,AAAA">'
                    f'<img data-chart="blank" src="data:image/png;base64,{blank}"><script>console.error("boom")</script></body></html>')  # fmt: skip
    bad = subprocess.run([sys.executable, str(SCRIPTS / "check_report.py"), "--html", str(page)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    problems = json.loads(bad.stdout)["problems"]
    assert any("broken is broken" in p for p in problems) and any("blank is empty" in p for p in problems)
    assert any("console error" in p and "boom" in p for p in problems)


def test_bench_deploy_measures_every_round_anew_even_through_the_runs_measurement_cache(tmp_path):
    import importlib.util

    from hadmc import hal

    spec = importlib.util.spec_from_file_location("bench_deploy", SCRIPTS / "bench_deploy.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sys.path.insert(0, str(Path(__file__).parents[1] / "hal"))
    from hal_models import matmul_model

    probe = hal.get_latency_probe("ort-cpu", warmup_runs=2, warmup_s=0.0, min_iterations=5, min_seconds=0.0)
    cached = hal.cached_probe(probe, hal.MeasurementCache(tmp_path / "cache.db"))
    artifacts = {"small": matmul_model(8), "large": matmul_model(64)}
    cached.measure(artifacts["small"])  # the run measured it once: the cache holds it
    lat = bench.measure_interleaved(cached, artifacts, ["small", "large"], rounds=3)
    assert {v["provenance"] for v in lat.values()} == {"measured"}
    assert all(len(v["rounds_ms"]) == 3 and v["latency_ms"] > 0 for v in lat.values())
