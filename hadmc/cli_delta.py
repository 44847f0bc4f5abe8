"""`hadmc delta`, `hadmc apply-delta` and `hadmc probe push`: updating models in the field.

A device that runs a model needs only what changed to run its successor: the SHA-256 block
delta of the initializers (`hadmc.hal.delta`, the format the probe server takes), written
gzip-compressed as a patch file. Applying one checks the base model's hash before anything is
written and the rebuilt model's hash after, so a patch never turns the wrong model into
something else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .cli import app, console
from .cli_probe import probe_app
from .errors import ModelError, ProbeError

#: largest model a patch may rebuild (the CLI's bound on untrusted patch files)
MAX_MODEL_BYTES = 4 << 30


def _read_model(path: Path, what: str) -> bytes:
    from .files import check_user_file

    try:
        return check_user_file(path, what, ModelError).read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read {what} {path}: {exc.strerror}") from None


def _manifest(data: bytes, path: Path, block: int) -> dict:
    from .hal.delta import initializer_manifest

    try:
        return initializer_manifest(data, block)
    except ProbeError:
        raise
    except Exception as exc:  # onnx's DecodeError and friends
        raise ModelError(f"{path} is not an ONNX model ({type(exc).__name__}); pass the .onnx files themselves") from None


def _sha(text: str) -> str:
    value = text.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise typer.BadParameter(f"must be the 64 hex digits of a SHA-256, got {text!r}")
    return value


@app.command()
def delta(
    old: Annotated[Path, typer.Argument(help="The ONNX model the device runs now.")],
    new: Annotated[Path, typer.Argument(help="The ONNX model it should run.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Patch file to write (gzip-compressed JSON delta).")],
    block_kib: Annotated[int, typer.Option(help="Block size in KiB: smaller blocks send less around a change, at more hashes.", min=4, max=65536)] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Write the patch that turns OLD.onnx into NEW.onnx (only changed initializer blocks).

    The patch holds the new graph without its weights, the initializer blocks whose SHA-256
    differs from OLD's, and both models' SHA-256."""
    from .files import write_atomic
    from .hal.delta import encode_patch, make_delta

    old_data, new_data = _read_model(old, "model"), _read_model(new, "model")
    manifest = _manifest(old_data, old, block_kib * 1024)
    _manifest(new_data, new, block_kib * 1024)  # NEW must be a model too, with the same one message
    d = make_delta(new_data, manifest)
    patch = encode_patch(d)
    write_atomic(out, patch, ModelError)
    changed = {name: len(blocks) for name, blocks in d["blocks"].items() if blocks}
    summary = {
        "patch": str(out), "patch_bytes": len(patch), "model_bytes": len(new_data),
        "share_of_model": len(patch) / len(new_data), "changed_tensors": len(changed),
        "changed_blocks": sum(changed.values()), "tensors": len(d["blocks"]), "block_bytes": d["block"],
        "base_sha256": d["base_sha256"], "target_sha256": d["target_sha256"],
    }  # fmt: skip
    if as_json:
        console.print_json(json.dumps(summary))
        return
    console.print(
        f"wrote {escape(str(out))}: {len(patch) / 1e3:.1f} kB, {100 * summary['share_of_model']:.2f}% of {escape(new.name)} "
        f"({summary['changed_blocks']} changed blocks in {len(changed)} of {summary['tensors']} tensors)\n"
        f"applies to SHA-256 {d['base_sha256']}\nyields     SHA-256 {d['target_sha256']}",
        soft_wrap=True,
    )


@app.command("apply-delta")
def apply_delta(
    old: Annotated[Path, typer.Argument(help="The ONNX model the patch was made against.")],
    patch: Annotated[Path, typer.Argument(help="Patch file written by `hadmc delta`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the rebuilt model.")],
) -> None:
    """Rebuild a model from OLD.onnx and a patch, verifying both SHA-256s.

    The base's hash is checked first and the result's after; nothing is written unless both match."""
    from .files import write_atomic
    from .hal import sha256_hex
    from .hal.delta import apply_delta as rebuild
    from .hal.delta import decode_patch

    old_data = _read_model(old, "model")
    try:
        d = decode_patch(_read_model(patch, "patch file"), MAX_MODEL_BYTES)
    except ProbeError as exc:
        raise ModelError(f"{patch} is not a patch of `hadmc delta`: {exc}") from None
    have = sha256_hex(old_data)
    if have != d.base_sha256:
        raise ModelError(
            f"{patch} was made against the model with SHA-256 {d.base_sha256}, but {old} has {have}: "
            "apply it to the model it was made from (or make a new patch with `hadmc delta OLD NEW -o PATCH`)"
        )
    try:
        data = rebuild(old_data, d, MAX_MODEL_BYTES)
    except ProbeError as exc:
        raise ModelError(f"{patch} does not rebuild a valid model from {old}: {exc}") from None
    write_atomic(out, data, ModelError)
    console.print(
        f"wrote {escape(str(out))} ({len(data) / 1e6:.2f} MB): base SHA-256 {have} verified, result SHA-256 {d.target_sha256} verified",
        soft_wrap=True,
    )


@probe_app.command()
def push(
    target: Annotated[str, typer.Argument(help="remote://HOST:PORT of a `hadmc probe serve` on the device.")],
    model: Annotated[Path, typer.Argument(help="The ONNX model the device should hold.")],
    base: Annotated[Optional[str], typer.Option(help="SHA-256 of a model the device holds: only the changed blocks are sent.", callback=lambda v: None if v is None else _sha(v))] = None,
    token_file: Annotated[Optional[Path], typer.Option(help="Bearer token file (else $HADMC_PROBE_TOKEN).")] = None,
) -> None:
    """Send a model to a probe server (only its delta when the device holds --base).

    The server rebuilds the model from the base it holds and checks its SHA-256."""
    from .hal import get_latency_probe

    if not target.startswith("remote://"):
        raise typer.BadParameter(f"must be remote://HOST:PORT of a probe server, got {target!r}", param_hint="TARGET")
    data = _read_model(model, "model")
    probe = get_latency_probe(target, token_file=token_file)
    try:
        pushed = probe.push(data, base_sha256=base)
    finally:
        probe.close()
    if pushed.sent == "nothing":
        what = "the device already holds it; nothing sent"
    elif pushed.sent == "delta":
        what = f"sent a delta of {pushed.bytes_sent / 1e3:.1f} kB ({100 * pushed.bytes_sent / len(data):.1f}% of the model) against {base}"
    else:
        why = f" (the device does not hold {base}, or refused the delta)" if base else ""
        what = f"uploaded the whole model, {pushed.bytes_sent / 1e6:.2f} MB{why}"
    console.print(f"{escape(target)} holds SHA-256 {pushed.sha256}: {what}", soft_wrap=True)
