from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from hal_models import export_tiny_cnn, matmul_model

from hadmc.errors import ProbeError
from hadmc.registry import Registry
from hadmc.hal import LATENCY_PROBES, LatencyResult, OrtCpuProbe, get_latency_probe, graph_inputs, register_latency_probe
from hadmc.hal.latency import latency_stats, node_times_from_profile, time_runs


def test_latency_stats_match_numpy_percentiles():
    samples = [1.0, 2.0, 3.0, 4.0, 10.0]
    s = latency_stats(samples)
    assert s["median_ms"] == 3.0
    assert s["p90_ms"] == pytest.approx(np.percentile(samples, 90))
    assert s["mean_ms"] == pytest.approx(4.0)
    assert s["std_ms"] == pytest.approx(np.std(samples, ddof=1))
    assert s["cov"] == pytest.approx(np.std(samples, ddof=1) / 4.0)
    assert s["iterations"] == 5


def test_latency_stats_rejects_empty_or_nan_samples():
    with pytest.raises(ProbeError):
        latency_stats([])
    with pytest.raises(ProbeError):
        latency_stats([1.0, float("nan")])


def test_time_runs_meets_both_iteration_and_time_minimums():
    calls = []
    samples = time_runs(lambda: calls.append(1), warmup_runs=10, warmup_s=0.05, min_iterations=30, min_seconds=0.05)
    assert len(samples) >= 30
    assert len(calls) >= len(samples) + 10  # warm-up runs were not timed
    assert sum(samples) / 1000.0 <= 0.05 + 1.0 or len(samples) >= 30


def test_graph_inputs_read_shape_and_dtype_with_symbolic_batch_as_one(tiny_cnn_bytes):
    (spec,) = graph_inputs(tiny_cnn_bytes)
    assert spec.name == "image"
    assert spec.shape == (1, 3, 32, 32)
    assert spec.dtype == np.float32
    (spec,) = graph_inputs(tiny_cnn_bytes, (4, 3, 32, 32))
    assert spec.shape == (4, 3, 32, 32)
    with pytest.raises(ProbeError, match="rank"):
        graph_inputs(tiny_cnn_bytes, (3, 32, 32))


def test_graph_inputs_reject_bytes_that_are_not_onnx():
    with pytest.raises(ProbeError, match="not a valid ONNX model"):
        graph_inputs(b"\x00\x01 definitely not a protobuf \xff" * 10)


def test_ort_cpu_probe_measures_tiny_cnn_with_full_result(tiny_cnn_bytes, fast_timing):
    probe = get_latency_probe("ort-cpu", **fast_timing)
    assert isinstance(probe, OrtCpuProbe)
    r = probe.measure(tiny_cnn_bytes)
    assert isinstance(r, LatencyResult)
    assert r.provenance == "measured"
    assert r.backend == "ort-cpu"
    assert r.threads == 1
    assert r.batch == 1 and r.input_shape == [1, 3, 32, 32]
    assert r.iterations == len(r.samples_ms) >= 20
    assert 0 < r.median_ms <= r.p90_ms <= r.p99_ms
    assert r.median_ms == pytest.approx(float(np.median(r.samples_ms)), rel=1e-3)
    assert r.device_id == probe.device.id
    assert r.settings["threads"] == 1 and r.settings["input_shape"] == [1, 3, 32, 32]
    assert len(r.onnx_sha256) == 64


def test_ort_cpu_probe_reads_model_from_path(tmp_path, fast_timing):
    path = tmp_path / "mm.onnx"
    path.write_bytes(matmul_model())
    r = get_latency_probe("ort-cpu", **fast_timing).measure(path, input_shape=(2, 8))
    assert r.batch == 2 and r.input_shape == [2, 8]


def test_session_gives_same_logits_as_torch_for_any_batch_size(tiny_cnn):
    data, model = tiny_cnn
    sess = get_latency_probe("ort-cpu").session(data)
    assert isinstance(sess.inner, ort.InferenceSession)
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(sess.run(x.numpy()), expected, rtol=1e-4, atol=1e-4)


def test_session_runs_fixed_batch_one_graph_sample_by_sample():
    data, model = export_tiny_cnn(dynamic_batch=False, seed=1)
    sess = get_latency_probe("ort-cpu").session(data)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(sess.run(x.numpy()), expected, rtol=1e-4, atol=1e-4)


def test_the_energy_session_never_spins_even_when_latency_timing_does(monkeypatch):
    probe = get_latency_probe("ort-cpu")
    seen = []
    real = probe._inference_session
    monkeypatch.setattr(probe, "_inference_session", lambda data, so=None: seen.append(probe.session_options().get_session_config_entry("session.intra_op.allow_spinning")) or real(data, so))
    probe.prepare(matmul_model())()
    assert seen == ["0"] and probe.spinning is True


def test_session_options_fix_threads_and_turn_spinning_off_when_asked():
    probe = get_latency_probe("ort-cpu", threads=2, spinning=False)
    so = probe.session_options()
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert probe.settings()["spinning"] is False


def test_profile_nodes_reports_per_node_time_close_to_total(tiny_cnn_bytes):
    probe = get_latency_probe("ort-cpu", warmup_runs=10)
    nodes = probe.profile_nodes(tiny_cnn_bytes, runs=20)
    assert len(nodes) >= 3
    assert all(v >= 0 for v in nodes.values())
    assert all(isinstance(k, str) and k for k in nodes)
    # node kernels account for most of a run, never more than a generous multiple of it
    median = probe.measure(tiny_cnn_bytes).median_ms
    assert 0 < sum(nodes.values()) < 5 * median + 0.5


def test_node_times_skip_warmup_runs_and_average_over_counted_runs():
    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 10},
        {"cat": "Node", "name": "a_kernel_time", "ts": 1, "dur": 9000},  # warm-up run, skipped
        {"cat": "Session", "name": "model_run", "ts": 100, "dur": 10},
        {"cat": "Node", "name": "a_kernel_time", "ts": 101, "dur": 1000},
        {"cat": "Node", "name": "a_fence_before", "ts": 101, "dur": 5},
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 10},
        {"cat": "Node", "name": "a_kernel_time", "ts": 201, "dur": 3000},
        {"cat": "Node", "name": "b_kernel_time", "ts": 202, "dur": 500},
    ]
    assert node_times_from_profile(events, skip_runs=1) == {"a": 2.0, "b": 0.25}


def test_unknown_probe_name_lists_valid_ones():
    with pytest.raises(ProbeError, match="ort-cpu") as info:
        get_latency_probe("ort-fpga")
    assert "unknown latency probe 'ort-fpga'" in str(info.value)
    assert "tensorrt" in str(info.value) and "remote://host:port" in str(info.value)


def test_probes_live_in_the_shared_registry_and_optional_backends_are_lazy():
    assert isinstance(LATENCY_PROBES, Registry)
    assert LATENCY_PROBES.get("ort-cpu") is OrtCpuProbe
    assert {"ort-cpu", "ort-cuda", "ort-trt", "tensorrt", "torch", "remote"} <= set(LATENCY_PROBES.names())


def test_a_registered_probe_class_is_built_by_name(fast_timing):
    class EchoProbe(OrtCpuProbe):
        pass

    register_latency_probe("echo-test", EchoProbe)
    assert isinstance(get_latency_probe("echo-test", **fast_timing), EchoProbe)


@pytest.mark.parametrize("address", ["remote://", "remote://host", "remote://host:http", "remote://host:70000", "remote://:8765", "remote://h:1/x"])
def test_malformed_remote_address_says_what_it_should_look_like(address):
    with pytest.raises(ProbeError, match="remote://HOST:PORT"):
        get_latency_probe(address)


def test_missing_gpu_provider_says_which_extra_to_install():
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(ProbeError, match=r"hadmc\[gpu\]"):
        get_latency_probe("ort-cuda")


def test_a_session_that_falls_back_to_another_provider_is_an_error(tiny_cnn_bytes, fast_timing):
    # ORT starts the next provider in the list when one cannot start (missing CUDA libraries):
    # figures from that session would be the CPU's, labelled as the GPU's
    class FallsBack(OrtCpuProbe):
        name = "falls-back"

        def _check_providers(self) -> None:
            pass

        def _provider_list(self):
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]

    with pytest.raises(ProbeError, match="could not start CUDAExecutionProvider and fell back to"):
        FallsBack(**fast_timing).measure(tiny_cnn_bytes)


def test_bad_settings_are_rejected_with_a_clear_error():
    with pytest.raises(ProbeError, match="threads"):
        get_latency_probe("ort-cpu", threads=0)
    with pytest.raises(ProbeError, match="invalid settings"):
        get_latency_probe("ort-cpu", no_such_option=3)
    with pytest.raises(ProbeError, match="does not exist"):
        get_latency_probe("ort-cpu").measure("/nonexistent/model.onnx")


def test_torch_probe_measures_an_eager_module(tiny_cnn, fast_timing):
    _, model = tiny_cnn
    r = get_latency_probe("torch", **fast_timing).measure(model, (1, 3, 32, 32))
    assert r.backend == "torch" and r.iterations >= 20 and r.median_ms > 0
