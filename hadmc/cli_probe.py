"""`hadmc probe ...`: one-off measurements, and the probe server that runs on an edge device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import ProbeError

probe_app = typer.Typer(
    help="Measure an ONNX model's latency and energy here or on a remote device, or serve measurements to other machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err = Console(stderr=True, soft_wrap=True)


def _parse_shape(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise typer.BadParameter(f"must be integers separated by commas, e.g. 1,3,224,224; got {text!r}") from None
    if not shape or min(shape) < 1 or len(shape) > 8:
        raise typer.BadParameter(f"must be 1 to 8 positive integers, got {text!r}")
    return shape


def _shape_option(text: str | None) -> str | None:
    _parse_shape(text)  # a usage error, reported with the option's name, before any work
    return text


@probe_app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind. A non-loopback address needs a token (--token-file or $HADMC_PROBE_TOKEN).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port (1..65535).", min=1, max=65535)] = 8765,
    token_file: Annotated[Optional[Path], typer.Option(help="File holding the bearer token (16+ characters; else $HADMC_PROBE_TOKEN).")] = None,
    device: Annotated[str, typer.Option(help="Device spec of this machine: a name in configs/devices, a YAML path, or local-cpu/local-gpu.")] = "local-cpu",
    backend: Annotated[str, typer.Option(help="Latency backend used on this device (ort-cpu, ort-cuda, ort-trt, tensorrt).")] = "ort-cpu",
    store_dir: Annotated[Optional[Path], typer.Option(help="Where uploaded models are kept (by SHA-256).")] = None,
    store_quota_mb: Annotated[float, typer.Option(help="Most MiB the model store keeps; the least recently used models are removed beyond.", min=1.0)] = 2048.0,
    max_mb: Annotated[float, typer.Option(help="Largest accepted upload in MiB.", min=0.001)] = 256.0,
    timeout_s: Annotated[float, typer.Option(help="Per-request limit in seconds; the measurement is stopped there.", min=0.1)] = 300.0,
    client_timeout_s: Annotated[float, typer.Option(help="Seconds a client may take to send a request head or body.", min=0.1)] = 10.0,
    docs: Annotated[bool, typer.Option("--docs", help="Serve interactive API docs at /docs (off by default).")] = False,
) -> None:
    """Serve latency/energy measurements of this device over HTTP (run it on the edge device)."""
    from hadmc.hal.probe_server import serve as run_server

    run_server(
        host=host,
        port=port,
        token_file=token_file,
        head_timeout_s=client_timeout_s,
        on_ready=lambda banner: err.print(escape(banner), highlight=False),
        device=device,
        backend=backend,
        store_dir=store_dir,
        store_quota_bytes=int(store_quota_mb * 1024 * 1024),
        max_bytes=int(max_mb * 1024 * 1024),
        timeout_s=timeout_s,
        body_timeout_s=client_timeout_s,
        docs=docs,
    )


def _summary(latency: Any, energy: Any) -> dict[str, Any]:
    out = {"latency": latency.model_dump(exclude={"samples_ms"})}
    out["energy"] = energy.model_dump() if energy is not None else None
    return out


@probe_app.command()
def measure(
    model: Annotated[Path, typer.Argument(help="ONNX model file.")],
    target: Annotated[str, typer.Option(help="Latency backend (ort-cpu, ort-cuda, ort-trt, tensorrt) or remote://host:port.")] = "ort-cpu",
    threads: Annotated[int, typer.Option(help="Intra-op threads.", min=1, max=1024)] = 1,
    input_shape: Annotated[Optional[str], typer.Option(help="Shape of the first input, e.g. 1,3,224,224 (default: from the graph, batch 1).", callback=_shape_option)] = None,
    min_iterations: Annotated[int, typer.Option(help="Minimum timed runs.", min=1, max=1_000_000)] = 100,
    min_seconds: Annotated[float, typer.Option(help="Minimum seconds of timed runs.", min=0.0, max=3600.0)] = 1.0,
    energy: Annotated[bool, typer.Option(help="Also measure (or estimate) energy per inference.")] = True,
    token_file: Annotated[Optional[Path], typer.Option(help="Bearer token file for a remote:// target.")] = None,
    cache: Annotated[Optional[Path], typer.Option(help="SQLite file of the measurement cache (e.g. runs/NAME/hadmc.db).")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Measure even if the cache holds this artifact.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Measure one ONNX model once, on this machine or a remote probe server."""
    from hadmc.hal import MeasurementCache, cached_probe, get_latency_probe, measure_latency_and_energy

    from hadmc.files import check_user_file

    shape = _parse_shape(input_shape)
    check_user_file(model, "model file", ProbeError)
    settings: dict[str, Any] = {"threads": threads, "min_iterations": min_iterations, "min_seconds": min_seconds}
    if target.startswith("remote://"):
        settings["token_file"] = token_file
    elif token_file is not None:
        raise ProbeError("--token-file is for a remote://host:port target only")
    probe = get_latency_probe(target, **settings)
    energy_probe = probe.energy_probe("auto") if energy else None
    if cache:
        store = MeasurementCache(cache, enabled=not no_cache)
        probe, energy_probe = cached_probe(probe, store), energy_probe and cached_probe(energy_probe, store)
    m = measure_latency_and_energy(probe, model, energy_probe, input_shape=shape)
    latency, energy_result = m.latency, m.energy
    if as_json:
        console.print_json(json.dumps(_summary(latency, energy_result)))
        return
    table = Table(title=f"{model.name} on {latency.backend} ({latency.device_id})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("provenance")
    for label, value in (
        ("median", f"{latency.median_ms:.4f} ms"),
        ("p90", f"{latency.p90_ms:.4f} ms"),
        ("p99", f"{latency.p99_ms:.4f} ms"),
        ("mean ± std", f"{latency.mean_ms:.4f} ± {latency.std_ms:.4f} ms"),
        ("CoV", f"{100 * latency.cov:.2f} %"),
        ("iterations", str(latency.iterations)),
        ("threads / batch", f"{latency.threads} / {latency.batch}"),
    ):
        table.add_row(label, value, latency.provenance if label == "median" else "")
    if energy_result is not None:
        table.add_row("energy", f"{energy_result.mj_per_inference:.4f} mJ/inference", f"{energy_result.provenance} ({energy_result.method})")
    console.print(table)


if __name__ == "__main__":
    import sys

    from .cli import main

    sys.exit(main(["probe", *sys.argv[1:]]))
