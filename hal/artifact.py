"""ONNX artifacts as the HAL sees them: bytes, their SHA-256, and the inputs they expect."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

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
