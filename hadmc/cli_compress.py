"""`hadmc compress`: the main job, a resumable search run with a live display.

A thin skin over `hadmc.api` / `hadmc.run.CompressionRun`: it turns flags into a `RunConfig`,
renders the run's events, and prints the final front with provenance marks.
"""

from __future__ import annotations

import math
import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table

from .cli import _MARKS, _row, _speedup, app, console, err


class CompressDisplay:
    """Live state of a run: evaluations done, the running evaluation's stage, the best plan,
    the front and its hypervolume, and a time estimate. Falls back to one line per evaluation
    on stderr when the terminal is not interactive."""

    def __init__(self, budget: int, interactive: bool) -> None:
        self.budget = budget
        self.interactive = interactive
        self.done = 0
        self.phase = "search"
        self.stage = "starting"
        self.best: Any = None
        self.best_reward = -math.inf
        self.front = 0
        self.hv: float | None = None
        self.new_walls: list[float] = []
        self.finalize_total = 0
        self.finalize_done = 0
        self.message = ""
        self.run: Any = None
        self.live: Live | None = None
        self.workers = 1
        self.in_flight = 0

    # -- events ---------------------------------------------------------------------------
    def __call__(self, kind: str, info: dict) -> None:
        if kind == "training":
            self.message = info["message"]
            if not self.interactive:
                err.print(escape(self.message))
        elif kind == "training_epoch":
            left = info["seconds"] / info["epoch"] * (info["epochs"] - info["epoch"])
            self.message = (
                f"training the default model: epoch {info['epoch']}/{info['epochs']}, "
                f"validation accuracy {100 * info['val_accuracy']:.1f}%, about {left:.0f} s left"
            )
            if not self.interactive:
                err.print(self.message)
        elif kind == "plan":
            self.phase = info["phase"]
            self.stage = "starting"
            self.message = ""
            self.in_flight = info.get("in_flight", 1)
        elif kind == "stage":
            self.stage = info["stage"]
        elif kind == "resumed":
            steps = f" (agent at {info['agent_steps']} steps)" if "agent_steps" in info else ""
            self.message = f"resumed after {info['done']} evaluations; {info['searcher']} continues from its checkpoint{steps}"
            err.print(escape(self.message))
        elif kind == "finalize":
            self.phase = "final"
            self.finalize_total = info["max_plans"]
        elif kind == "evaluated":
            self._evaluated(info)
        self.refresh()

    def _evaluated(self, info: dict) -> None:
        o = info["outcome"]
        ev = o.evaluation
        if info["phase"] == "final":
            self.finalize_done += 1
            return
        self.done = info["done"]
        self.in_flight = max(0, self.in_flight - 1)
        if not o.cached:
            self.new_walls.append(ev.wall_s)
        if self.run is not None:
            archive = self.run.archive("search")
            self.front, self.hv = len(archive), archive.hypervolume()
            if ev.complete and o.reward > self.best_reward and self._feasible(ev):
                self.best, self.best_reward = ev, o.reward
        if not self.interactive:
            err.print(self._line(ev, o))

    def _feasible(self, ev) -> bool:
        c = self.run.config.constraints
        floor = c.min_accuracy_for(self.run.baseline("search").accuracy)
        ok_acc = floor is None or (ev.accuracy is not None and ev.accuracy >= floor)
        ok_lat = c.latency_budget_ms is None or (ev.latency_ms is not None and ev.latency_ms <= c.latency_budget_ms)
        return ok_acc and ok_lat

    def _line(self, ev, o) -> str:
        if ev.error:
            what = f"failed: {ev.error[:120]}"
        elif ev.skipped:
            what = f"{ev.latency_ms:.3f} ms, over the hard latency budget (recovery skipped)"
        else:
            what = f"val {100 * ev.accuracy:.2f}%, {ev.latency_ms:.3f} ms, {ev.model_bytes / 1e6:.2f} MB, reward {o.reward:+.3f}"
        tag = " (cached)" if o.cached else ""
        return f"[{self.done}/{self.budget}] {what}{tag}"

    # -- rendering ------------------------------------------------------------------------
    def eta_s(self) -> float | None:
        if not self.new_walls:
            return None
        mean = sum(self.new_walls) / len(self.new_walls)
        return mean * max(self.budget - self.done, 0) / max(1, self.workers)

    def render(self) -> Group:
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold")
        t.add_column()
        bar = ProgressBar(total=max(self.budget, 1), completed=min(self.done, self.budget), width=30)
        eta = self.eta_s()
        t.add_row("evaluations", Group(bar, f"{self.done}/{self.budget}" + (f"  ETA {_duration(eta)} (then the final front)" if eta else "")))
        if self.phase == "final":
            t.add_row("final front", f"{self.finalize_done}/{self.finalize_total} plans at full fidelity on the test split: {self.stage}")
        elif self.workers > 1:
            t.add_row("now", f"{self.in_flight} plans evaluating on {self.workers} workers (latency measured one at a time)")
        else:
            t.add_row("now", f"plan {self.done + 1}: {self.stage}")
        if self.best is not None:
            base = self.run.baseline("search")
            t.add_row(
                "best so far",
                f"{100 * self.best.accuracy:.2f}% val, {self.best.latency_ms:.3f} ms ({_speedup(self.best, base)}), "
                f"{self.best.model_bytes / 1e6:.2f} MB",
            )
        t.add_row("front", f"{self.front} plans, hypervolume {self.hv:.3g}" if self.hv is not None else f"{self.front} plans")
        if self.message:
            t.add_row("", escape(self.message))
        return Group(t)

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self.render())


def _duration(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _front_table(result, title: str) -> Table:
    table = Table(title=title)
    for col in ("plan", "split", "top-1 %", "latency ms", "speedup", "energy mJ", "ONNX MB", "MMACs", "Mparams"):
        table.add_column(col, justify="left" if col in ("plan", "split") else "right", no_wrap=True, min_width=len(col))
    base = result.original
    rows = [("original", base)] + [
        (("* best " if result.best is not None and ev.plan_key == result.best.plan_key else "") + ev.plan_key[:10], ev)
        for ev in result.front
        if ev.plan_key != base.plan_key
    ]
    for name, ev in rows:
        cells = _row(name, ev, base)
        table.add_row(cells[0], ev.split or "-", *cells[1:])
    return table


@app.command()
def compress(
    config: Annotated[Optional[Path], typer.Option(help="Run configuration YAML (default: the shipped quickstart, or the run's own config.yaml with --resume).")] = None,
    model: Annotated[Optional[str], typer.Option(help="`default` or a torchvision architecture name.")] = None,
    weights: Annotated[Optional[Path], typer.Option(help="Local weights (.pt/.pth/.safetensors).")] = None,
    data: Annotated[Optional[str], typer.Option(help="digits | imagefolder:PATH | cifar10:PATH")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Input side in pixels.")] = None,
    device: Annotated[Optional[str], typer.Option(help="Device spec name, YAML path, or `local`.")] = None,
    target: Annotated[Optional[str], typer.Option(help="Where latency is measured: ort-cpu | ort-cuda | ort-trt | tensorrt | remote://host:port.")] = None,
    latency_budget_ms: Annotated[Optional[float], typer.Option(help="Latency the compressed model should meet (ms).")] = None,
    hard_latency_budget: Annotated[Optional[bool], typer.Option("--hard-latency-budget/--soft-latency-budget", help="Plans over the budget skip recovery while searching.")] = None,
    min_accuracy: Annotated[Optional[str], typer.Option(help="Lowest acceptable top-1: absolute (0.97) or relative to the original (-1pt).")] = None,
    budget: Annotated[Optional[int], typer.Option(help="Distinct plans to evaluate while searching.")] = None,
    searcher: Annotated[Optional[str], typer.Option(help="ppo | random | nsga2 | sb3-ppo | greedy")] = None,
    fidelity: Annotated[Optional[float], typer.Option(help="Fraction of each plan's recovery run while searching (1.0 = full).")] = None,
    floor_slack: Annotated[Optional[float], typer.Option(help="Points the accuracy floor is lowered by while searching below full fidelity.")] = None,
    ratio_mean: Annotated[Optional[str], typer.Option(help="PPO ratio mean: token | joint | arithmetic | geometric | harmonic | power:P.")] = None,
    loss: Annotated[Optional[str], typer.Option(help="PPO loss: ppo-clip | pmd-mean | pmd-part.")] = None,
    advantage: Annotated[Optional[str], typer.Option(help="Advantage estimator: gae | group | loo | ploo.")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Seed of the search and of recovery training.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Plans evaluated at once, each by a worker with its own evaluator; latency is still measured one artifact at a time.", min=1, max=256)] = None,
    executor: Annotated[Optional[str], typer.Option(help="Where the workers run: process (this machine) | ray (a Ray cluster; pip install 'hadmc[ray]').")] = None,
    address: Annotated[Optional[str], typer.Option(help="Ray cluster to join (auto, HOST:PORT or ray://HOST:PORT); default: start Ray here.")] = None,
    deployed_model: Annotated[Optional[Path], typer.Option(help="ONNX model the devices run now: each plan's delta patch size against it is recorded.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Run directory (default runs/<name>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out where it stopped.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON (progress still on stderr).")] = False,
) -> None:
    """Search compression plans, measured on the target, and print the Pareto front.

    Ctrl-C stops cleanly: every finished evaluation is saved, and --resume continues.
    """
    import json

    from .api import build_config
    from .run import CompressionRun

    if config is None and resume and out is not None and (out / "config.yaml").is_file():
        from .config import RunConfig

        config = RunConfig.load_stored(out / "config.yaml")
    cfg = build_config(
        config, target=target, out=out, model=model, weights=weights, data=data, image_size=image_size, device=device,
        latency_budget_ms=latency_budget_ms, hard_latency_budget=hard_latency_budget, min_accuracy=min_accuracy,
        budget=budget, searcher=searcher, fidelity=fidelity, floor_slack=floor_slack, ratio_mean=ratio_mean, loss=loss, advantage=advantage, seed=seed,
        workers=workers, executor=executor, address=address, deployed_model=deployed_model,
    )  # fmt: skip
    interactive = sys.stderr.isatty() and not as_json
    display = CompressDisplay(cfg.search.budget, interactive)
    display.workers = cfg.execution.workers
    run = None
    live = Live(display.render(), console=err, refresh_per_second=4, transient=True) if interactive else None
    started = time.perf_counter()

    def interrupted(signum, frame):  # Ctrl-C: stop now, and in any case before the next evaluation
        if run is not None:
            run.request_stop()
        raise KeyboardInterrupt

    try:
        previous_handler = signal.signal(signal.SIGINT, interrupted)
    except ValueError:  # not the main thread (an embedding app): Ctrl-C stays the app's to handle
        previous_handler = None
    try:
        if live is not None:
            live.start()
            display.live = live
        run = CompressionRun(cfg, resume=resume, on_event=display)
        display.run = run
        display.stage = "measuring the original model"
        display.refresh()
        run.baseline("search")
        display.done = run.distinct("search")
        run.search()
        result = run.finalize()
    except KeyboardInterrupt:
        if live is not None:
            live.stop()
        done = run.distinct("search") if run is not None else 0
        where = cfg.resolved_run_dir
        err.print(
            f"stopped after {done} evaluations; everything finished so far is saved in {where}.\n"
            f"Continue with: hadmc compress --out {where} --resume"
        )
        raise typer.Exit(130) from None
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
        if live is not None and live.is_started:
            live.stop()
        if run is not None:
            run.close()

    if as_json:
        print(json.dumps({
            "run_dir": str(result.run_dir), "original": result.original.model_dump(mode="json"),
            "front": [e.model_dump(mode="json") for e in result.front],
            "best": result.best.model_dump(mode="json") if result.best else None,
            "violations": result.violations, "searcher": result.searcher, "evaluations": result.evaluations,
            "wall_s": result.wall_s,
        }, indent=1))  # fmt: skip
        return
    _print_result(cfg, result, time.perf_counter() - started)


def _weights(cfg) -> str:
    o = cfg.objectives
    return ", ".join(f"{k} {getattr(o, k):g}" for k in ("accuracy", "latency", "energy", "size"))


def _print_result(cfg, result, seconds: float) -> None:
    probe = cfg.latency.address or cfg.latency.probe
    title = (
        f"Pareto front · {cfg.model} on {cfg.data} · {result.original.device} · {probe}, "
        f"{cfg.latency.threads} thread{'s' if cfg.latency.threads > 1 else ''}, batch 1"
    )
    console.print(_front_table(result, title))
    seen = {v for ev in [result.original, *result.front] for v in ev.provenance.values()}
    console.print("Accuracy on the test split, every plan recovered with its full budget (final phase).", soft_wrap=True)
    if "estimated" in seen:
        console.print(f"{_MARKS['estimated']} estimated from latency and the device's power model (no energy counter is readable here)", soft_wrap=True)
    if "cached" in seen:
        console.print(f"{_MARKS['cached']} the same artifact was measured earlier in this run; its figure is reused", soft_wrap=True)
    best = result.best
    if best is None:
        console.print("[red]no plan could be evaluated at full fidelity[/red]")
    else:
        console.print(
            f"best plan {best.plan_key[:10]}: {100 * best.accuracy:.2f}% test, {best.latency_ms:.3f} ms ({_speedup(best, result.original)}), "
            f"{best.model_bytes / 1e6:.2f} MB",
            soft_wrap=True,
        )
        for v in result.violations:
            console.print(f"[yellow]no plan meets the constraints; the best found misses one: {escape(v)}[/yellow]", soft_wrap=True)
        timed = [e for e in result.front if e.latency_ms is not None and e.plan_key != result.original.plan_key]
        base_ms = result.original.latency_ms
        if timed and base_ms and min(e.latency_ms for e in timed) >= base_ms:
            fastest = min(timed, key=lambda e: e.latency_ms)
            console.print(
                f"[yellow]no plan on the front is faster than the original on this target: the fastest, {fastest.plan_key[:10]}, "
                f"takes {fastest.latency_ms:.3f} ms against the original's {base_ms:.3f} ms; the front trades size and "
                f"accuracy only (objective weights: {_weights(cfg)})[/yellow]",
                soft_wrap=True,
            )
    if best is not None and best.patch_bytes is not None:
        console.print(
            f"update patch of the best plan against the deployed model: {best.patch_bytes / 1e3:.1f} kB "
            f"({100 * best.patch_bytes / best.model_bytes:.1f}% of the model; {result.run_dir / 'best' / 'update.patch'})",
            soft_wrap=True,
        )
    execution = result.searcher.get("execution")
    if execution:
        console.print(
            f"{execution['workers']} {execution['executor']} workers ({execution['threads_per_worker']} torch "
            f"thread{'s' if execution['threads_per_worker'] > 1 else ''} each); "
            f"latency {execution['latency']}.",
            soft_wrap=True,
        )
    d = result.run_dir
    n = result.searcher.get("predicted_episodes")
    trained = f"; the agent also trained on {n} predicted episodes" if n else ""
    console.print(
        f"{result.evaluations} plans evaluated by {result.searcher.get('searcher', '?')}{trained}; {_duration(seconds)} this session.\n"
        f"files: {d / 'hadmc.db'}, {d / 'config.yaml'}, {d / 'pareto.json'}, {d / 'best'}/ (model.onnx, plan.json, metrics.json)",
        soft_wrap=True,
    )
