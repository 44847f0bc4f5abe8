"""Delta updates of a model the probe server already holds: SHA-256 block diffs of its
initializers, verified by hash after applying.

The client fetches the base model's manifest (per-initializer block hashes), sends the new
graph with its initializer bytes stripped plus only the blocks that changed, and the server
rebuilds the model and checks its SHA-256. A delta is untrusted input: its block size has a
lower bound, the sizes it claims are bounded by the server's upload limit, and every block it
sends must have the length its position implies, so the work of applying one is bounded by
the bytes actually sent.

The same delta, gzip-compressed, is the patch file of ``hadmc delta`` / ``hadmc apply-delta``
(`encode_patch`, `decode_patch`): one format on the wire and on disk.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hadmc.errors import ProbeError

from .artifact import sha256_hex

#: bytes per block of the manifest the server hands out
DELTA_BLOCK = 1 << 20
#: smallest block a delta may use: smaller ones multiply hashing and JSON entries per byte
MIN_DELTA_BLOCK = 4096
#: largest block a delta may use
MAX_DELTA_BLOCK = 64 << 20
#: bytes per block of a patch file: small enough that a fine-tuned head does not drag a
#: megabyte of unchanged neighbours along
PATCH_BLOCK = 64 << 10
_SIZE_TAG = "hadmc-delta-size:"
_SHA = r"^[0-9a-f]{64}$"


class Delta(BaseModel):
    """A delta as sent over the wire (JSON)."""

    model_config = ConfigDict(extra="forbid")

    base_sha256: str = Field(pattern=_SHA)
    target_sha256: str = Field(pattern=_SHA)
    block: int = Field(ge=MIN_DELTA_BLOCK, le=MAX_DELTA_BLOCK)
    skeleton: str = Field(description="hex of the new model with initializer bytes stripped")
    blocks: dict[str, dict[int, str]] = Field(description="initializer -> block index -> hex bytes")


def _raw(init) -> bytes:
    from onnx import numpy_helper

    if init.raw_data:
        return bytes(init.raw_data)
    return numpy_helper.to_array(init).tobytes()


def _block_hashes(raw: bytes, block: int) -> list[str]:
    return [hashlib.sha256(raw[i : i + block]).hexdigest() for i in range(0, max(len(raw), 1), block)]


def initializer_manifest(data: bytes, block: int = DELTA_BLOCK) -> dict[str, Any]:
    """Per-initializer SHA-256 of each ``block``-byte slice of its raw data."""
    import onnx

    if not MIN_DELTA_BLOCK <= block <= MAX_DELTA_BLOCK:
        raise ProbeError(f"delta block must lie in [{MIN_DELTA_BLOCK}, {MAX_DELTA_BLOCK}] bytes, got {block}")
    model = onnx.load_model_from_string(data)
    tensors = {}
    for init in model.graph.initializer:
        raw = _raw(init)
        tensors[init.name] = {"size": len(raw), "blocks": _block_hashes(raw, block)}
    return {"sha256": sha256_hex(data), "block": block, "tensors": tensors}


def make_delta(new_data: bytes, base_manifest: dict[str, Any]) -> dict[str, Any]:
    """What the device needs to rebuild ``new_data`` from the base model it holds: the new
    graph with every initializer's bytes stripped, plus only the blocks whose hash differs."""
    import onnx

    block = int(base_manifest["block"])
    model = onnx.load_model_from_string(new_data)
    blocks: dict[str, dict[int, str]] = {}
    for init in model.graph.initializer:
        raw = _raw(init)
        old = base_manifest["tensors"].get(init.name)
        same_size = old is not None and old["size"] == len(raw)
        changed = {}
        for j, digest in enumerate(_block_hashes(raw, block)):
            if not same_size or j >= len(old["blocks"]) or old["blocks"][j] != digest:
                changed[j] = raw[j * block : (j + 1) * block].hex()
        blocks[init.name] = changed
        _strip(init, len(raw))
    return {
        "base_sha256": base_manifest["sha256"],
        "target_sha256": sha256_hex(new_data),
        "block": block,
        "skeleton": model.SerializeToString().hex(),
        "blocks": blocks,
    }


def _strip(init, size: int) -> None:
    # keep the tensor's name, type and dims; its bytes travel as blocks (or stay on the device)
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        init.ClearField(field)
    init.ClearField("raw_data")  # ONNX is proto2: an empty-but-set field would still serialize
    init.doc_string = f"{_SIZE_TAG}{size}"


def parse_delta(body: bytes, max_bytes: int) -> Delta:
    """Validate a delta request body before any of its work is done.

    :param body: the JSON body (already bounded in length by the server)
    :param max_bytes: the largest model the server accepts; a delta that claims more is refused
    """
    # JSON entries cost far more memory than their bytes: bound their number before parsing.
    # Every block entry is at least MIN_DELTA_BLOCK hex characters; tensor names may hold
    # a few colons each ("onnx::Conv_1").
    max_entries = 4 * (max_bytes // MIN_DELTA_BLOCK) + 100_000
    if body.count(b":") > max_entries:
        raise ProbeError(f"delta has more than {max_entries} entries; use blocks of at least {MIN_DELTA_BLOCK} bytes")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ProbeError(f"delta must be JSON: {type(exc).__name__}") from exc
    try:
        return Delta.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors()[:5])
        raise ProbeError(f"invalid delta: {problems}") from exc


def apply_delta(base_data: bytes, delta: Delta | dict[str, Any], max_bytes: int = 1 << 30) -> bytes:
    """Rebuild the target model from the base bytes and a delta; verified by SHA-256.

    :param base_data: the stored model the delta is based on
    :param delta: a ``Delta`` (or its dict)
    :param max_bytes: the largest total of initializer bytes the delta may claim
    """
    import onnx

    if not isinstance(delta, Delta):
        try:
            delta = Delta.model_validate(delta)
        except ValidationError as exc:
            raise ProbeError(f"invalid delta: {exc.errors()[0]['msg']}") from exc
    if sha256_hex(base_data) != delta.base_sha256:
        raise ProbeError("delta base does not match the stored model")
    block = delta.block
    try:
        model = onnx.load_model_from_string(bytes.fromhex(delta.skeleton))
    except Exception as exc:  # odd-length hex, DecodeError, RecursionError
        raise ProbeError(f"delta skeleton is not a valid ONNX model: {type(exc).__name__}") from exc
    sizes = {}
    for init in model.graph.initializer:
        tag = init.doc_string.removeprefix(_SIZE_TAG)
        if not init.doc_string.startswith(_SIZE_TAG) or not tag.isdigit():
            raise ProbeError(f"delta skeleton initializer {init.name[:60]!r} does not carry its size")
        sizes[init.name] = int(tag)
    if sum(sizes.values()) > max_bytes:
        raise ProbeError(f"delta claims {sum(sizes.values())} bytes of initializers, more than the {max_bytes}-byte limit")
    base = {init.name: init for init in onnx.load_model_from_string(base_data).graph.initializer}
    for init in model.graph.initializer:
        size = sizes[init.name]
        n_blocks = max(1, -(-size // block))
        changed = delta.blocks.get(init.name, {})
        if any(not 0 <= j < n_blocks for j in changed):
            raise ProbeError(f"delta names a block of {init.name[:60]!r} beyond its {n_blocks} blocks")
        old = _raw(base[init.name]) if init.name in base else b""
        pieces = []
        for j in range(n_blocks):
            want = min(block, size - j * block) if size else 0
            if j in changed:
                try:
                    piece = bytes.fromhex(changed[j])
                except ValueError as exc:
                    raise ProbeError(f"block {j} of {init.name[:60]!r} is not hex") from exc
                if len(piece) != want:
                    raise ProbeError(f"block {j} of {init.name[:60]!r} has {len(piece)} bytes, expected {want}")
                pieces.append(piece)
            elif len(old) == size:
                pieces.append(old[j * block : j * block + want])
            else:
                raise ProbeError(f"delta lacks block {j} of {init.name[:60]!r}, which changed size")
        init.raw_data = b"".join(pieces)
        init.ClearField("doc_string")
    out = model.SerializeToString()
    if sha256_hex(out) != delta.target_sha256:
        raise ProbeError("model rebuilt from the delta does not match its SHA-256; upload it in full")
    return out


def encode_patch(delta: dict[str, Any] | Delta) -> bytes:
    """A delta as a patch file: its JSON, gzip-compressed (deterministic: no timestamp)."""
    payload = delta.model_dump() if isinstance(delta, Delta) else delta
    return gzip.compress(json.dumps(payload, sort_keys=True).encode(), compresslevel=6, mtime=0)


def make_patch(base_data: bytes, new_data: bytes, block: int = PATCH_BLOCK) -> bytes:
    """The patch file that turns the ONNX model ``base_data`` into ``new_data``."""
    return encode_patch(make_delta(new_data, initializer_manifest(base_data, block)))


def decode_patch(data: bytes, max_bytes: int = 1 << 30) -> Delta:
    """Validate a patch file (gzip or plain JSON delta); its inflated size is bounded before
    it is parsed, so a patch cannot make its reader allocate more than a delta may claim.

    :param max_bytes: the largest model the patch may rebuild
    """
    limit = 2 * max_bytes + (1 << 20)  # hex doubles the bytes; the skeleton and names add a little
    if data[:2] == b"\x1f\x8b":
        inflater = zlib.decompressobj(wbits=31)
        try:
            body = inflater.decompress(data, limit + 1)
        except zlib.error as exc:
            raise ProbeError(f"patch is not a readable gzip file: {exc}") from None
        if len(body) > limit or inflater.unconsumed_tail:
            raise ProbeError(f"patch inflates to more than {limit} bytes; it cannot be a delta of a model of at most {max_bytes} bytes")
    else:
        body = data
    return parse_delta(body, max_bytes)
