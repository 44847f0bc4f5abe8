"""`hadmc` command line: a thin skin over the Python API. It owns the terminal."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from contextlib import nullcontext
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import __version__
from .errors import HadmcError, ModelError, PlanError

app = typer.Typer(
    name="hadmc",
    help="HAD-MC 2.0: hardware-aware model compression, applied for real and measured on the target.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
#: what the root options of this invocation asked for
_session: dict[str, Any] = {"verbose": False}
# Piped output gets a fixed width wide enough for the comparison table.
console = Console(width=None if sys.stdout.isatty() else 100)
err = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        console.print(f"hadmc {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what the library does (and show tracebacks of internal errors).")] = False,
) -> None:
    _session["verbose"] = verbose
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _add_probe_commands() -> None:
    try:
        from .cli_probe import probe_app
    except ImportError:  # the probe commands ship with the HAL
        return
    app.add_typer(probe_app, name="probe")


# -- helpers ------------------------------------------------------------------------------


def builtin_plans() -> dict[str, Path]:
    """Plans shipped in configs/plans, by file stem."""
    folder = resources.files("hadmc.configs") / "plans"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".json")}


def load_plan(spec: str):
    """A plan from a JSON file path or the name of a shipped plan."""
    from .plan import CompressionPlan

    path = Path(spec)
    plans = builtin_plans()
    if path.exists() or (spec not in plans and (path.suffix or "/" in spec)):
        return CompressionPlan.load(path)  # says what is wrong with the file, if anything
    if spec in plans:
        return CompressionPlan.load(plans[spec])
    raise PlanError(f"no plan file {spec!r}; pass a JSON plan path or one of the shipped plans: {', '.join(sorted(plans))}")


def _load_model_and_data(model: str, data: str, weights: Optional[Path], image_size: Optional[int]):
    from .data import load_data
    from .models import load_default_model, resolve_model

    if model == "default":
        if weights is not None:  # before the default is loaded (or trained)
            raise ModelError("--weights cannot be combined with the default model; name an architecture with --model")
        load_default_model(on_train=lambda msg: err.print(f"[yellow]{msg} (once; cached afterwards)[/yellow]"))
    # The split is always seed 0: the embedded default was trained on that split's train part,
    # so another split would put its training images into the test set.
    bundle = load_data(data, image_size=image_size, seed=0)
    return resolve_model(model, bundle, weights=weights), bundle


def _save_targets(folder: Path, names: list[str], overwrite: bool) -> dict[str, Path]:
    """Where each plan's artifact goes (``FOLDER/PLAN.onnx``), checked before any work: the
    folder is writable, no two plans share a file name, nothing is replaced unasked."""
    from .files import check_output_dir

    check_output_dir(folder, PlanError)
    targets = {name: folder / f"{Path(name).stem}.onnx" for name in dict.fromkeys(names)}
    by_file: dict[Path, list[str]] = {}
    for name, path in targets.items():
        by_file.setdefault(path, []).append(name)
    clashes = [f"{' and '.join(n)} -> {p.name}" for p, n in by_file.items() if len(n) > 1]
    if clashes:
        raise PlanError(f"plans would overwrite each other's artifact in {folder}: {'; '.join(clashes)}; rename a plan file")
    existing = [p.name for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise PlanError(f"{folder} already holds {', '.join(existing)}; pass --overwrite to replace, or another --save folder")
    return targets


#: Marks after a figure that was not measured in this run (explained under the table).
_MARKS = {"estimated": "*", "cached": "\u2020"}
#: after a latency measured on a host the device spec does not describe
_ELSEWHERE = "\u00a7"
#: after a speedup whose interleaved comparison stayed noisy
_NOISY = "~"


def _cell(value: Any, fmt: str, provenance: str | None) -> str:
    if value is None:
        return "-"
    return format(value, fmt) + _MARKS.get(provenance or "measured", "")


def _speedup(ev, base) -> str:
    # the interleaved ratio where there is one: two medians taken minutes apart drift apart
    if ev.latency_ratio:
        return f"{1.0 / ev.latency_ratio:.1f}x" + (_NOISY if ev.latency_noisy else "")
    return f"{base.latency_ms / ev.latency_ms:.1f}x" if ev.latency_ms and base.latency_ms else "-"


def _row(name: str, ev, base) -> list[str]:
    prov = ev.provenance
    return [
        name,
        _cell(100 * ev.accuracy if ev.accuracy is not None else None, ".2f", prov.get("accuracy")),
        _cell(ev.latency_ms, ".3f", prov.get("latency_ms")) + (_ELSEWHERE if ev.host_mismatch and ev.latency_ms else ""),
        _speedup(ev, base),
        _cell(ev.energy_mj, ".2f", prov.get("energy_mj")),
        _cell(ev.model_bytes / 1e6 if ev.model_bytes else None, ".2f", None),
        _cell(ev.macs / 1e6 if ev.macs else None, ".1f", None),
        _cell(ev.params / 1e6 if ev.params else None, ".2f", None),
    ]


def _print_measurement_notes(spec, evaluations: list) -> None:
    """Where and under what load the latencies were measured, under the comparison table."""
    from .hal import HostInfo

    measured = [ev for ev in evaluations if ev.ok and ev.host]
    elsewhere = next((ev for ev in measured if ev.host_mismatch), None)
    if elsewhere is not None:
        host = HostInfo.model_validate(elsewhere.host).summary()
        console.print(
            f"{_ELSEWHERE} measured on {escape(host)}, which the device spec {escape(spec.name)!r} does not describe: "
            f"{escape('; '.join(elsewhere.host_mismatch))}. Use --device local for this machine, or a remote:// probe on the device",
            soft_wrap=True,
        )
    if any(ev.latency_noisy for ev in measured):
        console.print(f"{_NOISY} the comparison with the original stayed noisy after re-measuring (other work on this machine)", soft_wrap=True)
    loads = [ev.load_avg[0] for ev in measured if ev.load_avg]
    if loads:
        console.print(f"speedups are timed against the original in alternating blocks; load average {min(loads):.2f}-{max(loads):.2f}", soft_wrap=True)


# -- commands -----------------------------------------------------------------------------


@app.command()
def pretrain(
    epochs: Annotated[Optional[int], typer.Option(help="Training epochs (default: the recipe's).", min=1, max=1000)] = None,
    seed: Annotated[int, typer.Option(help="Seed of the data split and training.", min=0)] = 0,
) -> None:
    """Train the embedded default model (ResNet-18, CIFAR stem, on scikit-learn's digits) into the cache."""
    from .models import pretrain_default

    with console.status("training the default model on digits ..."):
        path, meta = pretrain_default(epochs=epochs, seed=seed)
    console.print(
        f"saved {path}\ntest accuracy {100 * meta['test_accuracy']:.2f}% after {meta['epochs']} epochs "
        f"in {meta['seconds']:.0f} s"
    )


@app.command()
def groups(
    model: Annotated[str, typer.Option(help="`default` or a torchvision architecture name.")] = "default",
    data: Annotated[str, typer.Option(help="digits | imagefolder:PATH | cifar10:PATH")] = "digits",
    weights: Annotated[Optional[Path], typer.Option(help="Local weights (.pt/.pth/.safetensors).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (8..1024).", min=8, max=1024)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the model's layer groups (the names a plan's `groups` may use)."""
    from .groups import layer_groups

    net, bundle = _load_model_and_data(model, data, weights, image_size)
    found = layer_groups(net, bundle.example_input())
    if as_json:
        print(json.dumps([dataclasses.asdict(g) for g in found], indent=1))
        return
    table = Table("#", "group", "kind", "layers", "out ch", "MACs share", "prunable")
    for g in found:
        table.add_row(str(g.index), g.name, g.kind, str(len(g.modules)), str(g.out_channels), f"{100 * g.flops_share:.1f}%", "yes" if g.prunable else "no")
    console.print(table)


@app.command()
def evaluate(
    plan: Annotated[list[str], typer.Option("--plan", "-p", help="JSON plan file or shipped plan name; repeat to compare several.")],
    model: Annotated[str, typer.Option(help="`default` or a torchvision architecture name.")] = "default",
    data: Annotated[str, typer.Option(help="digits | imagefolder:PATH | cifar10:PATH")] = "digits",
    weights: Annotated[Optional[Path], typer.Option(help="Local weights (.pt/.pth/.safetensors).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels (8..1024).", min=8, max=1024)] = None,
    device: Annotated[str, typer.Option(help="Device spec name, YAML path, or `local`.")] = "local",
    threads: Annotated[int, typer.Option(help="Runtime threads for latency (fixed for comparable figures).", min=1, max=1024)] = 1,
    energy: Annotated[str, typer.Option(help="Energy probe: auto | nvml | rapl | jetson | estimated | none.")] = "auto",
    save: Annotated[Optional[Path], typer.Option(help="Folder to write each compressed ONNX artifact to (PLAN.onnx).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace artifacts already in the --save folder.")] = False,
    seed: Annotated[int, typer.Option(help="Seed of recovery training.", min=0)] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")] = False,
) -> None:
    """Apply plans for real and compare them with the original model, side by side."""
    from . import hal
    from .config import RunConfig
    from .evaluation import build_evaluator

    # Everything cheap to check is checked before the model is loaded and plans are applied.
    plans = [(p, load_plan(p)) for p in plan]
    spec = hal.load_device_spec(device)
    backend = spec.backend
    probe = hal.get_latency_probe(backend, device=spec, threads=threads)  # a backend missing here fails now
    if energy != "none":
        probe.energy_probe(energy)  # as does an unknown energy probe
    targets = _save_targets(save, [name for name, _ in plans], overwrite) if save is not None else {}
    cfg = RunConfig.parse({
        "model": model, "data": data, "weights": str(weights) if weights else None, "image_size": image_size,
        "device": device, "seed": seed, "use_cache": False,
        "latency": {"threads": threads, **({"address": backend} if backend.startswith("remote://") else {"probe": backend})},
        "energy": {"probe": None if energy == "none" else energy},
    })  # fmt: skip
    if model == "default":
        from .models import load_default_model

        if weights is not None:  # before the default is loaded (or trained)
            raise ModelError("--weights cannot be combined with the default model; name an architecture with --model")
        load_default_model(on_train=lambda msg: err.print(f"[yellow]{escape(msg)} (once; cached afterwards)[/yellow]"))
    evaluator = build_evaluator(cfg)  # the one path from a configuration to an evaluator
    probe = evaluator.latency_probe
    with console.status("measuring the original model ...", spinner="dots") if not as_json else nullcontext():
        base = evaluator.baseline
    results = []
    for i, (name, p) in enumerate(plans, 1):
        with console.status(f"[{i}/{len(plans)}] applying {name} ...") if not as_json else nullcontext():
            if save is None:
                ev = evaluator.evaluate(p)
            else:
                ev, compressed = evaluator.evaluate_with_artifact(p)
                if compressed is not None:
                    compressed.save(targets[name])
        results.append((name, ev))

    if as_json:
        print(
            json.dumps(
                {
                    "device": spec.id,
                    "original": base.model_dump(mode="json"),
                    "plans": {name: ev.model_dump(mode="json") for name, ev in results},
                },
                indent=1,
            )
        )
    else:
        table = Table(title=f"{model} on {data} · {spec.name} · {probe.name}, {threads} thread{'s' if threads > 1 else ''}, batch 1")
        for col in ("plan", "top-1 %", "latency ms", "speedup", "energy mJ", "ONNX MB", "MMACs", "Mparams"):
            table.add_column(col, justify="left" if col == "plan" else "right", no_wrap=True, min_width=len(col))
        table.add_row(*_row("original", base, base))
        for name, ev in results:
            if ev.ok:
                table.add_row(*_row(name, ev, base))
            else:
                table.add_row(name, "[red]failed[/red]", *[""] * 6)
        console.print(table)
        for name, ev in results:  # in full, below the table: a table cell would cut the reason short
            if not ev.ok:
                console.print(f"[red]{escape(name)} failed:[/red] {escape(ev.error or '')}", soft_wrap=True)
        seen = {v for _, ev in [("original", base), *results] for v in ev.provenance.values()}
        if "estimated" in seen:
            console.print("* estimated from latency and the device's power model (no energy counter is readable here)", soft_wrap=True)
        if "cached" in seen:
            console.print("\u2020 the same artifact was measured earlier in this run; its figure is reused", soft_wrap=True)
        _print_measurement_notes(spec, [base, *(ev for _, ev in results)])
    if any(not ev.ok for _, ev in results):
        raise typer.Exit(1)


_add_probe_commands()
from . import cli_compress  # noqa: E402,F401  (registers `hadmc compress`)
from . import cli_report  # noqa: E402,F401  (registers `hadmc report`, `compare`, `export`)
from . import cli_delta  # noqa: E402,F401  (registers `hadmc delta`, `hadmc apply-delta`, `hadmc probe push`)


def _usage_errors() -> tuple[type[Exception], ...]:
    """The ClickException classes the CLI can raise: typer 0.20+ ships its own copy of click
    (typer._click), whose classes are not click's; older typers raise click's own."""
    found = [cls for cls in typer.BadParameter.__mro__ if cls.__name__ == "ClickException"]
    try:
        import click

        found.append(click.ClickException)
    except ImportError:
        pass
    return tuple(dict.fromkeys(found))


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear message and a non-zero exit for every failure, never a traceback.

    Exit codes: 0 success, 1 a plan failed, 2 bad input (usage or HAD-MC error), 70 an
    internal error (a bug: the traceback is shown with --verbose), 130 interrupted.
    """
    usage_errors = _usage_errors()
    _session["verbose"] = False
    try:
        # standalone_mode=False returns (not raises) the code of typer.Exit
        rc = app(args=argv, prog_name="hadmc", standalone_mode=False)
    except HadmcError as exc:
        err.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        return 2
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        err.print("aborted")
        return 130
    except KeyboardInterrupt:
        err.print("interrupted")
        return 130
    except usage_errors as exc:  # no arguments, unknown command, missing or malformed option
        exc.show()
        return exc.exit_code
    except Exception as exc:
        verbose = _session["verbose"]
        if verbose:
            err.print_exception()
        err.print(
            f"[bold red]internal error:[/bold red] {escape(type(exc).__name__)}: {escape(str(exc))}"
            + ("" if verbose else " (run again with --verbose for the details, and please report it)")
        )
        return 70
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    # `python -m hadmc.cli`: run the package's own module, where every command is registered
    # (this file as __main__ is a second copy the command modules never see).
    from hadmc.cli import main as _main

    sys.exit(_main())
