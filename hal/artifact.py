"""ONNX artifacts as the HAL sees them: bytes, their SHA-256, and the inputs they expect."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hadmc.errors import ProbeError

ModelLike = bytes | bytearray | memoryview | str | Path


def model_bytes(model: ModelLike) -> bytes:
    """The serialized ONNX model, from bytes or a file path."""
    if isinstance(model, (bytes, bytearray, memoryview)):
        return bytes(model)
    path = Path(model)
    if not path.is_file():
        raise ProbeError(f"ONNX model {path} does not exist; export the model first or pass its bytes")
    return path.read_bytes()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, concrete shape (symbolic dims resolved) and numpy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


def graph_inputs(data: bytes, input_shape: tuple[int, ...] | None = None) -> list[InputSpec]:
    """Inputs of the ONNX graph that are not initializers.

    Symbolic or unknown dims become 1 (batch 1); ``input_shape`` overrides the first input's
    shape and must have its rank.

    :param data: serialized ONNX model
    :param input_shape: shape for the first input, e.g. ``(1, 3, 224, 224)``
    """
    import onnx
    from onnx import helper

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError and friends
        raise ProbeError(f"not a valid ONNX model ({len(data)} bytes): {exc}") from exc
    initializers = {init.name for init in model.graph.initializer}
    specs: list[InputSpec] = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        ttype = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ProbeError(f"graph input {value.name!r} is not a tensor; only tensor inputs can be measured")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in ttype.shape.dim)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(ttype.elem_type))
        specs.append(InputSpec(value.name, dims, dtype))
    if not specs:
        raise ProbeError("the ONNX graph has no inputs to feed")
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if len(shape) != len(specs[0].shape):
            raise ProbeError(
                f"input_shape {shape} has rank {len(shape)} but graph input {specs[0].name!r} has rank "
                f"{len(specs[0].shape)} (shape {specs[0].shape})"
            )
        specs[0] = InputSpec(specs[0].name, shape, specs[0].dtype)
    return specs


def random_feed(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic input tensors for timing (values do not change dense CNN latency)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for spec in specs:
        if np.issubdtype(spec.dtype, np.floating):
            feed[spec.name] = rng.standard_normal(spec.shape).astype(spec.dtype)
        elif spec.dtype == np.bool_:
            feed[spec.name] = rng.integers(0, 2, spec.shape).astype(np.bool_)
        else:
            feed[spec.name] = rng.integers(0, 8, spec.shape).astype(spec.dtype)
    return feed


# ---------------------------------------------------------------- untrusted models

#: how much of an uploaded name goes into an error message
_NAME_CHARS = 60


def _short(name: str) -> str:
    return repr(name[:_NAME_CHARS] + ("..." if len(name) > _NAME_CHARS else ""))


def model_tensors(model) -> Iterator[tuple[str, Any]]:
    """Every tensor an ONNX model carries, with where it sits: initializers and sparse
    initializers (values and indices) of the main graph, of every subgraph (If/Loop/Scan
    bodies, at any depth) and of training graphs; every tensor-valued node attribute
    (``t``, ``tensors``, ``sparse_tensor``, ``sparse_tensors``), in graphs and in model-local
    functions."""
    graphs: list[tuple[str, Any]] = [("the main graph", model.graph)]
    for i, info in enumerate(model.training_info):
        graphs += [(f"training graph {i}", info.initialization), (f"training graph {i}", info.algorithm)]
    node_lists: list[tuple[str, Any]] = [(f"function {_short(f.name)}", f.node) for f in model.functions]
    while graphs or node_lists:
        if graphs:
            where, graph = graphs.pop()
            for init in graph.initializer:
                yield f"initializer {_short(init.name)} of {where}", init
            for sparse in graph.sparse_initializer:
                yield f"sparse initializer {_short(sparse.values.name)} of {where}", sparse.values
                yield f"sparse initializer {_short(sparse.values.name)} of {where}", sparse.indices
            node_lists.append((where, graph.node))
            continue
        where, nodes = node_lists.pop()
        for node in nodes:
            for attr in node.attribute:
                at = f"attribute {_short(attr.name)} of node {_short(node.name or node.op_type)} in {where}"
                if attr.HasField("t"):
                    yield at, attr.t
                for tensor in attr.tensors:
                    yield at, tensor
                sparse_list = ([attr.sparse_tensor] if attr.HasField("sparse_tensor") else []) + list(attr.sparse_tensors)
                for sparse in sparse_list:
                    yield at, sparse.values
                    yield at, sparse.indices
                if attr.HasField("g"):
                    graphs.append((f"a subgraph of {at}", attr.g))
                graphs.extend((f"a subgraph of {at}", g) for g in attr.graphs)


def check_self_contained(model) -> None:
    """Refuse a model any of whose tensors keeps its data outside the model (external data).

    A runtime resolves such a reference against a directory of the machine it runs on, so an
    uploaded model could make a server read its files. The message names the tensor, never
    the path it points to (nor whether that path exists).
    """
    import onnx

    for where, tensor in model_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL or len(tensor.external_data):
            raise ProbeError(
                f"{where} references external data; send a self-contained model "
                "(onnx.save(model, path, save_as_external_data=False))"
            )


def validate_onnx(data: bytes):
    """Parse and check untrusted ONNX bytes: a ProbeError (HTTP 400 on a server) when they are
    not a valid, self-contained model. External data is refused before ``onnx.checker`` runs,
    because the checker itself looks the referenced files up."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # DecodeError, RecursionError of absurd nesting, ...
        raise ProbeError(f"not a valid ONNX model: {type(exc).__name__}") from exc
    if not model.graph.node:
        raise ProbeError("not a valid ONNX model: the graph has no nodes")
    check_self_contained(model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError
        raise ProbeError(f"ONNX checker rejected the model: {str(exc).splitlines()[0][:300]}") from exc
    return model
