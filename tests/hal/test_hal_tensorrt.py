from __future__ import annotations

import importlib.util

import numpy as np
import onnx
import pytest
from hal_models import export_tiny_cnn, matmul_model
from onnx import TensorProto, helper, numpy_helper

from hadmc.errors import ProbeError
from hadmc.hal import get_latency_probe
from hadmc.hal.tensorrt_probe import graph_precision, plan_build

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _qdq_model() -> bytes:
    w = np.random.default_rng(0).integers(-8, 8, (4, 4)).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
        helper.make_node("MatMul", ["xd", "wd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _fp16_model() -> bytes:
    w = np.eye(4, dtype=np.float16)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()


def test_build_plan_is_strongly_typed_without_precision_flags_or_calibrator():
    for data, precision in ((_qdq_model(), "int8-qdq"), (_fp16_model(), "fp16"), (matmul_model(), "fp32")):
        plan = plan_build(data)
        assert plan.network_flags == ("STRONGLY_TYPED",)
        assert plan.builder_flags == ()  # precision comes from the graph, never FP16/INT8 flags
        assert plan.precision == precision == graph_precision(data)


def test_build_plan_profiles_the_symbolic_batch_and_keeps_static_inputs_static():
    plan = plan_build(matmul_model(), input_shape=(4, 8), max_batch=16)
    assert plan.profiles == {"x": ((1, 8), (4, 8), (16, 8))}
    static, _ = export_tiny_cnn(dynamic_batch=False)
    plan = plan_build(static)
    assert plan.profiles == {} and plan.static_shapes == {"image": (1, 3, 32, 32)}


def test_timing_cache_is_per_device_and_tensorrt_version(tmp_path):
    data = matmul_model()
    a = plan_build(data, cache_dir=tmp_path, device_key="h100-x", trt_version="10.8.0")
    b = plan_build(data, cache_dir=tmp_path, device_key="h100-x", trt_version="10.8.0")
    c = plan_build(data, cache_dir=tmp_path, device_key="rtx-4090-y", trt_version="10.8.0")
    d = plan_build(data, cache_dir=tmp_path, device_key="h100-x", trt_version="11.0.0")
    assert a.timing_cache == b.timing_cache and len({a.timing_cache, c.timing_cache, d.timing_cache}) == 3
    assert a.timing_cache.startswith(str(tmp_path))
    with pytest.raises(ProbeError, match="optimization_level"):
        plan_build(data, optimization_level=7)


def test_tensorrt_backend_without_tensorrt_says_which_extra_to_install():
    if HAS_TRT:
        pytest.skip("TensorRT is installed here")
    with pytest.raises(ProbeError, match=r"hadmc\[tensorrt\]"):
        get_latency_probe("tensorrt")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRT, reason="TensorRT is not installed (pip install 'hadmc[tensorrt]' on a GPU machine)")
def test_tensorrt_probe_builds_and_times_a_qdq_engine(tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    probe = get_latency_probe("tensorrt", cache_dir=tmp_path, min_iterations=50, min_seconds=0.2)
    r = probe.measure(_qdq_model(), input_shape=(8, 4))
    assert r.provenance == "measured" and r.iterations >= 50 and r.median_ms > 0
    assert r.settings["strongly_typed"] is True and r.settings["timing"] == "cuda-events"
    assert list(tmp_path.glob("timing-*.cache"))
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    ort_out = get_latency_probe("ort-cpu").session(_qdq_model()).run(x)
    np.testing.assert_allclose(probe.session(_qdq_model(), (8, 4)).run(x), ort_out, rtol=0.05, atol=0.05)
