"""`hadmc report`, `hadmc compare`, `hadmc export`: a finished run's results, to look at and to ship.

Thin skins over `hadmc.results`, `hadmc.report` and `hadmc.export`; they read the run
directory only (no evaluator, no torch), and every bad input is one `HadmcError` message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from .cli import app, console


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="The run directory `hadmc compress --out` wrote.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default RUN_DIR/report.html); the PNGs go to <name>_figures/ beside it.")] = None,
) -> None:
    """Write a self-contained HTML report (fronts, hypervolume, decisions, training curves, front table) and its PNGs."""
    from .report import write_report
    from .results import load_results

    res = load_results(run_dir)
    files = write_report(res, out)
    console.print(f"wrote {escape(str(files.html))} (opens offline) and {len(files.pngs)} figures in {escape(str(files.pngs[0].parent)) if files.pngs else '-'}", soft_wrap=True)


@app.command()
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Two or more run directories.")],
    out: Annotated[Optional[Path], typer.Option(help="HTML file to write (default ./compare.html); the PNGs go to <name>_figures/ beside it.")] = None,
) -> None:
    """Overlay several runs: hypervolume against evaluations, final fronts, best plans per accuracy floor."""
    from .report import write_compare
    from .results import load_results

    runs = [load_results(d) for d in run_dirs]
    files = write_compare(runs, out)
    console.print(f"wrote {escape(str(files.html))} and {len(files.pngs)} figures", soft_wrap=True)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="The run directory `hadmc compress --out` wrote.")],
    out: Annotated[Path, typer.Option(help="File to write (.onnx, or .engine for TensorRT).")],
    plan: Annotated[str, typer.Option(help="best | a row number of the report's front table (1 = fastest) | a plan key (6+ hex digits).")] = "best",
    fmt: Annotated[str, typer.Option("--format", help="onnx (the measured artifact, byte for byte) | tensorrt (an engine built from it).")] = "onnx",
) -> None:
    """Export a plan of a finished run: the ONNX artifact that was measured, or a TensorRT engine built from it."""
    from .export import export_plan
    from .results import load_results

    res = load_results(run_dir)
    done = export_plan(res, plan, fmt, out)
    ev = done.evaluation
    acc = f"{100 * ev.accuracy:.2f}% top-1 ({ev.split} split)" if ev.accuracy is not None else "no accuracy"
    lat = f"{ev.latency_ms:.3f} ms" if ev.latency_ms is not None else "-"
    console.print(f"wrote {escape(str(done.path))} ({done.format}): plan {ev.plan_key[:12]}, {res.label(ev)}; measured {acc}, {lat} on {escape(ev.device)}", soft_wrap=True)
    console.print(f"sha256 {done.sha256}", soft_wrap=True)
    if done.format == "onnx":
        console.print("equal to the measured artifact's recorded SHA-256", soft_wrap=True)
    else:
        console.print(f"built from the measured artifact with sha256 {done.artifact_sha256}", soft_wrap=True)
