"""Small real ONNX models shared by the HAL tests (imported by name: pytest runs in importlib mode)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper


class TinyCnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


def export_tiny_cnn(dynamic_batch: bool = True, seed: int = 0) -> tuple[bytes, torch.nn.Module]:
    torch.manual_seed(seed)
    model = TinyCnn().eval()
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        torch.randn(1, 3, 32, 32),
        buf,
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None,
    )
    return buf.getvalue(), model


def matmul_model(n: int = 8, seed: int = 0) -> bytes:
    """y = x @ W with a symbolic batch dim, built with onnx.helper (IR 10 for ORT 1.31)."""
    w = np.random.default_rng(seed).standard_normal((n, n)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def external_tensor(name: str, location: str, n: int = 8, dtype: int = TensorProto.UINT8) -> TensorProto:
    """A tensor whose bytes live in the file ``location`` (relative to wherever a runtime looks)."""
    t = TensorProto(name=name, data_type=dtype, dims=[n], data_location=TensorProto.EXTERNAL)
    length = n * np.dtype(helper.tensor_dtype_to_np_dtype(dtype)).itemsize
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    return t


def _model(nodes, inputs, outputs, initializers=(), sparse=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers), sparse_initializer=list(sparse))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()


def external_data_models(location: str) -> dict[str, bytes]:
    """Models that would read ``location`` through external data, one per place a tensor can hide."""
    out8 = [helper.make_tensor_value_info("y", TensorProto.UINT8, [8])]
    cond = [helper.make_tensor_value_info("c", TensorProto.BOOL, [])]
    branch_out = [helper.make_tensor_value_info("b", TensorProto.UINT8, [8])]
    inner = helper.make_graph([helper.make_node("Identity", ["w_in"], ["b"])], "then", [], branch_out, [external_tensor("w_in", location)])
    plain = helper.make_graph([helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(np.zeros(8, np.uint8)))], "else", [], branch_out)
    values = external_tensor("sv", location, 2, TensorProto.FLOAT)
    indices = numpy_helper.from_array(np.array([0, 3], np.int64), "si")
    sparse = onnx.SparseTensorProto(values=values, indices=indices, dims=[8])
    sparse_out = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])]
    loop_body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("Identity", ["w_loop"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("scan", TensorProto.UINT8, [8])],
        [external_tensor("w_loop", location)],
    )
    trip = numpy_helper.from_array(np.array(1, np.int64), "trip")
    return {
        "initializer": _model([helper.make_node("Identity", ["w"], ["y"])], [], out8, [external_tensor("w", location)]),
        "constant_node": _model([helper.make_node("Constant", [], ["y"], value=external_tensor("k", location))], [], out8),
        "if_branch": _model([helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=plain)], cond, out8),
        "sparse_initializer": _model([helper.make_node("Identity", ["sv"], ["y"])], [], sparse_out, sparse=[sparse]),
        "sparse_constant": _model([helper.make_node("Constant", [], ["y"], sparse_value=sparse)], [], sparse_out),
        "loop_body": _model(
            [helper.make_node("Loop", ["trip", "c"], ["y"], body=loop_body)],
            cond,
            [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 8])],
            [trip],
        ),
    }
