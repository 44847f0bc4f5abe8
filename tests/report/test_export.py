"""`hadmc export`: the measured artifact byte for byte (SHA-256 equal to the recorded one), never a
changed file; TensorRT says which extra to install; a real run's export reproduces its test accuracy."""

from __future__ import annotations

import hashlib
import importlib.util

import numpy as np
import pytest
from report_fixtures import known_run, tiny_onnx

from hadmc.errors import ConfigError, ProbeError
from hadmc.export import export_plan
from hadmc.results import load_results


@pytest.fixture
def with_artifacts(tmp_path):
    return known_run(tmp_path / "run", artifacts={"accurate": tiny_onnx(0), "fast": tiny_onnx(1)})


def test_exported_onnx_is_the_measured_artifact_byte_for_byte(with_artifacts, tmp_path):
    res = load_results(with_artifacts.run_dir)
    done = export_plan(res, "best", "onnx", tmp_path / "best.onnx")
    data = (tmp_path / "best.onnx").read_bytes()
    assert data == tiny_onnx(0) and done.evaluation.plan_key == with_artifacts.accurate
    assert done.sha256 == hashlib.sha256(data).hexdigest() == done.artifact_sha256 == res.final_by_key()[with_artifacts.accurate].artifact_sha256
    by_row = export_plan(res, "1", "onnx", tmp_path / "row1.onnx")  # row 1 = the fastest plan
    assert by_row.evaluation.plan_key == with_artifacts.fast and (tmp_path / "row1.onnx").read_bytes() == tiny_onnx(1)
    by_key = export_plan(res, with_artifacts.fast[:8], "onnx", tmp_path / "key.onnx")
    assert by_key.sha256 == by_row.sha256

    import onnxruntime as ort

    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros((1, 3, 8, 8), np.float32)})[0].shape == (1, 10)


def test_an_artifact_changed_after_it_was_measured_is_refused(with_artifacts, tmp_path):
    res = load_results(with_artifacts.run_dir)
    res.artifact_path(with_artifacts.accurate).write_bytes(tiny_onnx(7))
    with pytest.raises(ConfigError, match="changed after it was measured"):
        export_plan(res, "best", "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.parametrize(
    "selector, message",
    [("3", "original model has no saved artifact"), ("9", "rows 1 to 3"), ("deadbeef00", "no plan 'deadbeef00'"), ("nothex", "at least 6 hex")],
)
def test_bad_plan_selectors_name_what_is_valid(with_artifacts, tmp_path, selector, message):
    res = load_results(with_artifacts.run_dir)
    with pytest.raises(ConfigError, match=message):
        export_plan(res, selector, "onnx", tmp_path / "x.onnx")


def test_a_plan_seen_only_while_searching_has_no_artifact_to_export(with_artifacts, tmp_path):
    res = load_results(with_artifacts.run_dir)
    with pytest.raises(ConfigError, match="only evaluated while searching"):
        export_plan(res, with_artifacts.searched_only[:10], "onnx", tmp_path / "x.onnx")


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_tensorrt_export_without_tensorrt_names_the_extra(with_artifacts, tmp_path):
    res = load_results(with_artifacts.run_dir)
    with pytest.raises(ProbeError, match=r"pip install 'hadmc\[tensorrt\]'"):
        export_plan(res, "best", "tensorrt", tmp_path / "x.engine")


@pytest.mark.slow
def test_export_of_a_real_run_reproduces_its_recorded_test_accuracy_in_onnx_runtime(tmp_path, trained_small_model, digits16_data):
    import onnxruntime as ort

    from hadmc.api import compress

    model, _ = trained_small_model
    result = compress(
        model, digits16_data, budget=2, searcher="random", out=tmp_path / "real", finalize_max=2,
        config={"latency": {"warmup_runs": 2, "warmup_s": 0.0, "min_iterations": 5, "min_seconds": 0.0}, "energy": {"probe": None},
                "search": {"update_scopes": ["full"], "update_budgets": [1], "fidelity": 0.5},
                "pipeline": {"max_train_batches": 2, "calibration_batches": 1}},
    )  # fmt: skip
    res = load_results(tmp_path / "real")
    done = export_plan(res, "best", "onnx", tmp_path / "best.onnx")
    assert done.evaluation.plan_key == result.best.plan_key and done.sha256 == result.best.artifact_sha256
    sess = ort.InferenceSession(str(tmp_path / "best.onnx"), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    correct = total = 0
    for x, y in digits16_data.loader("test", batch_size=64):
        correct += int((sess.run(None, {name: x.numpy()})[0].argmax(1) == y.numpy()).sum())
        total += len(y)
    assert done.evaluation.split == "test" and correct / total == pytest.approx(done.evaluation.accuracy, abs=1e-9)
