"""`hadmc report` and `hadmc compare`: a run's results as one self-contained HTML page plus PNGs.

The page opens offline: no script, no external file; every figure is a matplotlib PNG embedded
as base64 and also written beside the page. Everything drawn is a stored figure of the run
(`hadmc.results`), with its provenance said next to it:

- the final phase (test split, full recovery fidelity) makes the front, its table, the
  original's figures and the header's best plans;
- the search phase (validation split, the search's lower fidelity) makes the grey cloud of
  searched plans and the hypervolume curve;
- the ppo agent's training curves come from predicted episodes when it trains Dyna-style,
  and say so.

Each figure's ``<img>`` carries ``data-points`` (the number of points drawn), so a check
without a browser can tell an empty chart from a full one.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .evaluation import Evaluation
from .files import write_atomic
from .results import FLOORS_PT, RunResults, fastest_within, speedup

log = logging.getLogger(__name__)

#: Provenance marks after a figure in the front table.
MARKS: dict[str, str] = {"measured": "M", "cached": "C", "estimated": "E", "surrogate": "S", "predicted": "P"}
MARK_MEANING: dict[str, str] = {
    "measured": "measured on the target in this run",
    "cached": "an identical artifact was measured earlier in this run; that figure is reused",
    "estimated": "estimated (no counter readable: energy from latency and the device's power model)",
    "surrogate": "test-only surrogate evaluator: not a result",
    "predicted": "predicted by a search model: never a result",
}
#: Objectives drawn against accuracy: field, axis label, unit divisor, log axis.
FRONT_AXES: tuple[tuple[str, str, float, bool], ...] = (
    ("latency_ms", "latency per inference (ms, median, batch 1)", 1.0, True),
    ("energy_mj", "energy per inference (mJ)", 1.0, True),
    ("model_bytes", "ONNX artifact size (MB)", 1e6, True),
)
#: SB3 metric names of the training curves, in the order drawn.
CURVE_METRICS: tuple[str, ...] = (
    "rollout/ep_rew_mean",
    "train/policy_gradient_loss",
    "train/value_loss",
    "train/entropy_loss",
    "train/approx_kl",
    "train/clip_fraction",
    "train/explained_variance",
)
PRECISION_COLOURS = {"fp32": "#d9d9d9", "fp16": "#9ecae1", "int8": "#fd8d3c"}
RUN_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


@dataclass
class Chart:
    """One figure: its file stem, title, caption, PNG bytes and how many points it draws."""

    name: str
    title: str
    caption: str
    png: bytes
    points: int


@dataclass
class ReportFiles:
    """What `write_report` / `write_compare` wrote."""

    html: Path
    pngs: list[Path]


# -- small formatting helpers -----------------------------------------------------------------


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _mark(provenance: str | None) -> str:
    p = provenance or "measured"
    return f'<sup class="mark {p}" title="{_esc(MARK_MEANING.get(p, p))}">{MARKS.get(p, "?")}</sup>'


def _fmt(value: float | None, fmt: str, provenance: str | None = None, mark: bool = True) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return format(value, fmt) + (_mark(provenance) if mark else "")


def _duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else (f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s")


def _short(e: Evaluation) -> str:
    return e.plan_key[:10]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def _figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [a for row in axes for a in row]


def _staircase(ax, xs: Sequence[float], ys: Sequence[float], colour: str, label: str | None) -> None:
    """The 2-D non-dominated staircase (x minimised, y maximised) through the given points."""
    pts = sorted(zip(xs, ys))
    stair, best = [], -math.inf
    for x, y in pts:
        if y > best:
            stair.append((x, y))
            best = y
    if len(stair) > 1:
        ax.step([p[0] for p in stair], [p[1] for p in stair], where="post", color=colour, lw=1.2, alpha=0.7, label=label)


# -- the figures of one run -------------------------------------------------------------------


def front_rows(res: RunResults) -> list[Evaluation]:
    """The front table's rows: the final front fastest first (row n is point n in the figures)."""
    return res.front()


def _value(e: Evaluation, field: str, div: float) -> float | None:
    v = getattr(e, field)
    return None if v is None else float(v) / div


def _axis_provenance(evs: Sequence[Evaluation], field: str) -> str:
    kinds = sorted({e.provenance.get(field, "measured") for e in evs if getattr(e, field) is not None})
    return ", ".join(kinds) if kinds else "none"


def fronts_charts(res: RunResults) -> list[Chart]:
    """Accuracy against latency, energy and size: search cloud, final plans, front, original, hand-made."""
    rows = front_rows(res)
    number = {e.plan_key: i for i, e in enumerate(rows, 1)}
    finals = [e for e in res.final if e.complete]
    searched = [e for e in res.search if e.complete]
    charts = []
    for field, label, div, logx in FRONT_AXES:
        have = [e for e in finals if getattr(e, field) is not None and e.accuracy is not None]
        if not have:
            continue  # e.g. energy where the run measured none
        fig, (ax,) = _figure(7.5, 4.6)
        points = 0
        cloud = [e for e in searched if getattr(e, field) is not None and e.accuracy is not None]
        if cloud:
            ax.scatter([_value(e, field, div) for e in cloud], [100 * e.accuracy for e in cloud], s=14, c="#bdbdbd",
                       label="searched plans (search phase: validation split, lower fidelity)", zorder=1)  # fmt: skip
            points += len(cloud)
        others = [e for e in have if e.plan_key not in number and e.plan_key not in res.handmade and e.plan_key != res.original.plan_key]
        if others:
            ax.scatter([_value(e, field, div) for e in others], [100 * e.accuracy for e in others], s=24, c="#6baed6",
                       label="re-evaluated, off the front (test split)", zorder=2)  # fmt: skip
            points += len(others)
        front = [e for e in rows if getattr(e, field) is not None and e.accuracy is not None]
        xs, ys = [_value(e, field, div) for e in front], [100 * e.accuracy for e in front]
        _staircase(ax, xs, ys, "#d62728", None)
        ax.scatter(xs, ys, s=46, c="#d62728", edgecolors="black", linewidths=0.5, label="Pareto front (test split, full fidelity)", zorder=4)
        points += len(front)
        for e, x, y in zip(front, xs, ys):
            ax.annotate(f"#{number[e.plan_key]}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8, zorder=5)
        hand = [e for e in res.handmade_evaluations() if getattr(e, field) is not None]
        if hand:
            ax.scatter([_value(e, field, div) for e in hand], [100 * e.accuracy for e in hand], marker="s", s=34, facecolors="none",
                       edgecolors="#e6550d", linewidths=1.4, label="hand-made uniform plans (test split)", zorder=3)  # fmt: skip
            for e in hand:
                ax.annotate(res.handmade[e.plan_key].removeprefix("uniform "), (_value(e, field, div), 100 * e.accuracy),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color="#a63603")  # fmt: skip
            points += len(hand)
        o = res.original
        if getattr(o, field) is not None and o.accuracy is not None:
            ax.scatter([_value(o, field, div)], [100 * o.accuracy], marker="*", s=180, c="black", label="original model (test split)", zorder=6)
            points += 1
        if logx:
            ax.set_xscale("log")
        below = _zoom_accuracy(ax, res.original.accuracy, [e.accuracy for e in [*cloud, *others, *front, *hand]])
        ax.set_xlabel(f"{label} [{_axis_provenance(have, field)}]")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="lower right")
        name = field.removesuffix("_ms").removesuffix("_mj").removesuffix("_bytes")
        what = {"latency": "latency", "energy": "energy", "model": "size"}[name]
        ax.set_title(f"accuracy vs {what}", fontsize=10)
        hidden = f" {below[0]} plans below {below[1]:.1f}% lie under the axis (their figures are in the table)." if below[0] else ""
        charts.append(Chart(
            f"front_{what}", f"Accuracy vs {what}", f"Points #n are the rows of the front table. {what.capitalize()} figures: "
            f"{_axis_provenance(have, field)}.{hidden}", _png(fig), points,
        ))  # fmt: skip
    return charts


#: The fronts' accuracy axis shows at most this many points below the original; plans that
#: lost more (a useless model) would squeeze the interesting region to a line.
ZOOM_PT = 12.0


def _zoom_accuracy(ax, original: float | None, accuracies: Sequence[float | None]) -> tuple[int, float]:
    """Limit the accuracy axis to ZOOM_PT below the original's accuracy; (plans under it, its bottom in %)."""
    accs = [100 * a for a in accuracies if a is not None]
    if original is None or not accs:
        return 0, 0.0
    top = max(accs + [100 * original])
    bottom = max(min(accs) - 0.5, 100 * original - ZOOM_PT)
    ax.set_ylim(bottom, top + 0.4 + 0.03 * (top - bottom))
    under = [a for a in accs if a < bottom]
    if under:
        ax.annotate(f"\u25bc {len(under)} plans below {bottom:.1f}%", (0.01, 0.01), xycoords="axes fraction", fontsize=8, color="#555")
    return len(under), bottom


def _run_label(res: RunResults, runs: Sequence[RunResults]) -> str:
    """The run's name, or its directory when another compared run has the same name."""
    return str(res.run_dir) if sum(r.name == res.name for r in runs) > 1 else res.name


def hypervolume_chart(runs: Sequence[RunResults], name: str = "hypervolume") -> Chart | None:
    """Search-phase hypervolume against distinct plans evaluated, one line per run."""
    fig, (ax,) = _figure(7.5, 3.8)
    points = 0
    for i, res in enumerate(runs):
        hist = [(n, v) for n, v in res.hypervolume if v is not None]
        if not hist:
            continue
        xs = [n for n, _ in hist] + [max(res.evaluated, hist[-1][0])]
        ys = [v for _, v in hist] + [hist[-1][1]]
        label = f"{_run_label(res, runs)} ({res.searcher})" if len(runs) > 1 else res.searcher
        ax.step(xs, ys, where="post", color=RUN_COLOURS[i % len(RUN_COLOURS)], lw=1.6, label=label)
        ax.scatter(xs[:-1], ys[:-1], s=12, color=RUN_COLOURS[i % len(RUN_COLOURS)])
        points += len(hist)
    if points == 0:
        return None
    ax.set_xlabel("distinct plans evaluated while searching")
    ax.set_ylabel("hypervolume (search phase)")
    ax.grid(True, alpha=0.25)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("hypervolume over evaluations (validation split, search fidelity)", fontsize=10)
    return Chart(
        name, "Hypervolume over evaluations",
        "Volume of the search front (accuracy points above the original minus the run's reference, times latency and "
        "size relative to the original); it counts validation-split, lower-fidelity figures.", _png(fig), points,
    )  # fmt: skip


def decisions_chart(res: RunResults) -> Chart | None:
    """Prune ratio and precision per layer group (network order) of the front's plans."""
    import numpy as np
    from matplotlib.colors import ListedColormap

    rows = [(i, e) for i, e in enumerate(front_rows(res), 1) if e.plan_key != res.original.plan_key]
    groups = res.groups
    if not rows or not groups:
        return None
    ratio = np.array([[float(e.plan["groups"].get(g, {}).get("prune_ratio", 0.0)) for g in groups] for _, e in rows])
    precisions = list(PRECISION_COLOURS)
    prec = [[e.plan["groups"].get(g, {}).get("precision", "fp32") for g in groups] for _, e in rows]
    prec_idx = np.array([[precisions.index(p) for p in r] for r in prec])
    height = 1.6 + 0.38 * len(rows)
    fig, (a1, a2) = _figure(max(7.5, 0.55 * len(groups) + 2.5), 2 * height, nrows=2)
    labels = [f"#{i} " + (res.handmade[e.plan_key] if e.plan_key in res.handmade else _short(e)) for i, e in rows]
    im = a1.imshow(ratio, cmap="viridis", vmin=0.0, vmax=0.95, aspect="auto")
    a2.imshow(prec_idx, cmap=ListedColormap(list(PRECISION_COLOURS.values())), vmin=-0.5, vmax=len(precisions) - 0.5, aspect="auto")
    for r in range(len(rows)):
        for c in range(len(groups)):
            a1.text(c, r, f"{ratio[r, c]:.2f}".rstrip("0").rstrip(".") or "0", ha="center", va="center", fontsize=7,
                    color="white" if ratio[r, c] < 0.6 else "black")  # fmt: skip
            a2.text(c, r, prec[r][c], ha="center", va="center", fontsize=7)
    for ax, title in ((a1, "prune ratio per layer group"), (a2, "precision per layer group")):
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.set_xticks(range(len(groups)), groups, rotation=45, ha="right", fontsize=8)
        ax.set_title(title + " (groups in network order)", fontsize=10)
    fig.colorbar(im, ax=a1, shrink=0.8, label="fraction of channels removed")
    return Chart(
        "decisions", "Per-group decisions of the front",
        "Rows are the front table's rows (the original left out); columns the layer groups from input to output.",
        _png(fig), int(ratio.size),
    )  # fmt: skip


def training_chart(res: RunResults) -> Chart | None:
    """The ppo agent's training metrics (SB3 names) against agent steps."""
    curves = res.curves
    metrics = [m for m in CURVE_METRICS if any(m in c and math.isfinite(c[m]) for c in curves)]
    if not metrics:
        return None
    ncols = 2
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = _figure(8.0, 2.2 * nrows, ncols=ncols, nrows=nrows)
    points = 0
    for ax, m in zip(axes, metrics):
        pts = [(c["step"], c[m]) for c in curves if m in c and math.isfinite(c[m])]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=2.5, lw=1.0, color="#3182bd")
        ax.set_title(m, fontsize=9)
        ax.tick_params(labelsize=7)
        ax.grid(True, alpha=0.25)
        points += len(pts)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    for ax in axes[-ncols:]:
        ax.set_xlabel("agent steps", fontsize=8)
    dyna = res.meta.get("agent_mode", "dyna") == "dyna"
    caption = (
        f"The agent trained on {res.meta.get('predicted_episodes', '?')} predicted episodes between real evaluations "
        "(Dyna): rollout/ep_rew_mean is the reward of predicted figures, never a measurement."
        if dyna else "On-policy PPO: every episode's reward comes from a real evaluation (search phase)."
    )
    return Chart("training", "Agent training curves (ppo)", caption, _png(fig), points)


# -- tables ---------------------------------------------------------------------------------


def best_per_floor(res: RunResults) -> list[dict[str, Any]]:
    """Per accuracy floor, the fastest searched plan (and hand-made plan, when the run has them)
    within that many points of the original's test accuracy, with its measured speedup."""
    o = res.original
    out = []
    for floor in FLOORS_PT:
        row: dict[str, Any] = {"floor_pt": floor}
        for side, evs in (("searched", res.searched()), ("handmade", res.handmade_evaluations())):
            best = fastest_within(evs, o.accuracy or 0.0, floor) if o.accuracy is not None else None
            row[side] = best
            row[f"{side}_speedup"] = speedup(o, best) if best is not None else None
        out.append(row)
    return out


def _plan_cell(res: RunResults, e: Evaluation | None) -> str:
    if e is None:
        return "none"
    label = res.label(e)
    return f'<code>{_short(e)}</code> <span class="label">{_esc(label)}</span>'


def _best_table(res: RunResults) -> str:
    o = res.original
    hand = bool(res.handmade_evaluations())
    head = "<tr><th>accuracy floor (test split)</th><th>fastest searched plan</th><th>top-1 %</th><th>latency ms</th><th>speedup</th>"
    head += "<th>fastest hand-made plan</th><th>top-1 %</th><th>latency ms</th><th>speedup</th></tr>" if hand else "</tr>"
    body = []
    for row in best_per_floor(res):
        floor = o.accuracy - row["floor_pt"] / 100.0 if o.accuracy is not None else None
        cells = [f"within {row['floor_pt']:g} pt (&ge; {_fmt(100 * floor if floor is not None else None, '.2f', mark=False)}%)"]
        for side in ("searched", "handmade") if hand else ("searched",):
            e = row[side]
            cells.append(_plan_cell(res, e))
            if e is None:
                cells += ["-", "-", "-"]
            else:
                cells += [
                    _fmt(100 * e.accuracy, ".2f", e.provenance.get("accuracy")),
                    _fmt(e.latency_ms, ".3f", e.provenance.get("latency_ms")),
                    _fmt(row[f"{side}_speedup"], ".1f", mark=False) + "x",
                ]
        body.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    return f'<table id="best">{head}{"".join(body)}</table>'


def _front_table(res: RunResults) -> str:
    o = res.original
    cols = ("#", "plan", "what", "split", "fidelity", "top-1 %", "latency ms", "p90 ms", "CoV", "speedup", "energy mJ",
            "ONNX MB", "MMACs", "Mparams", "INT8 recipe", "artifact SHA-256")  # fmt: skip
    lines = ["<tr>" + "".join(f"<th>{_esc(c)}</th>" for c in cols) + "</tr>"]
    for i, e in enumerate(front_rows(res), 1):
        p = e.provenance
        fid = e.fidelity
        cells = [
            str(i),
            f"<code>{_short(e)}</code>",
            _esc(res.label(e)),
            _esc(e.split or "-"),
            "-" if fid is None else f"{fid:.2f} ({e.recovery_steps}/{e.full_recovery_steps} steps)",
            _fmt(100 * e.accuracy if e.accuracy is not None else None, ".2f", p.get("accuracy")),
            _fmt(e.latency_ms, ".3f", p.get("latency_ms")),
            _fmt(e.latency_p90_ms, ".3f", p.get("latency_ms")),
            _fmt(e.latency_cov, ".3f", p.get("latency_ms")),
            _fmt(speedup(o, e), ".1f", mark=False) + ("x" if speedup(o, e) else ""),
            _fmt(e.energy_mj, ".3f", p.get("energy_mj")),
            _fmt(e.model_bytes / 1e6 if e.model_bytes else None, ".3f", p.get("model_bytes")),
            _fmt(e.macs / 1e6 if e.macs else None, ".1f", mark=False),
            _fmt(e.params / 1e6 if e.params else None, ".3f", mark=False),
            _esc((e.quantization or {}).get("name", "-")),
            f"<code>{e.artifact_sha256[:16]}</code>" if e.artifact_sha256 else "-",
        ]
        cls = ' class="best"' if e.plan_key == res.best_key else (' class="original"' if e.plan_key == o.plan_key else "")
        lines.append(f'<tr id="plan-{e.plan_key[:16]}"{cls} data-plan-key="{e.plan_key}">' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    seen = sorted({v for e in front_rows(res) for v in e.provenance.values()})
    legend = "".join(f"<li><sup class=\"mark {k}\">{MARKS.get(k, '?')}</sup> {_esc(MARK_MEANING.get(k, k))}</li>" for k in seen)
    return f'<table id="front">{"".join(lines)}</table><ul class="legend">{legend}</ul>'


def _settings_table(res: RunResults) -> str:
    evs = [res.original, *front_rows(res)]

    def distinct(get) -> str:
        vals = []
        for e in evs:
            v = get(e)
            if v and v not in vals:
                vals.append(v)
        return "<br>".join(_esc(v) for v in vals) or "-"

    def settings(d: dict, prefix: str = "") -> str:
        return ", ".join(settings(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k}={v}" for k, v in sorted(d.items()))

    probe = distinct(lambda e: settings(e.probe))
    versions = distinct(lambda e: ", ".join(f"{k} {v}" for k, v in sorted(e.versions.items())))
    device = distinct(lambda e: e.device)
    quant = distinct(lambda e: ", ".join(f"{k}={v}" for k, v in sorted((e.quantization or {}).items())))
    rows = [("device", device), ("latency probe settings", probe), ("INT8 recipe", quant), ("versions", versions)]
    return '<table id="settings">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _facts(res: RunResults) -> list[tuple[str, str]]:
    cfg = res.config
    lat = cfg.get("latency", {})
    m = res.meta
    pred = m.get("predicted_episodes")
    facts = [
        ("model", f"{cfg.get('model')}" + (f" (weights {cfg['weights']})" if cfg.get("weights") else "")),
        ("data", f"{cfg.get('data')}" + (f", {cfg['image_size']} px" if cfg.get("image_size") else "")),
        ("target", f"{res.original.device} &middot; {_esc(res.target)}, {lat.get('threads', 1)} thread(s), batch {lat.get('batch_size', 1)}"),
        ("searcher", _esc(res.searcher) + (f" ({_esc(m['agent_mode'])})" if m.get("agent_mode") else "")),
        ("budget", f"{res.budget} distinct plans; {res.evaluated} evaluated while searching, {len({e.plan_key for e in res.final if e.ok})} at full fidelity on the test split"),
        ("search fidelity", f"{res.fidelity_text}, validation split" if res.fidelity is not None else "-"),
        ("wall time", _duration(m.get("wall_s"))),
        ("predicted episodes", f"{pred} (the agent's training on its predictor; never figures)" if pred is not None else "none"),
        ("original (test split)", f"{_fmt(100 * res.original.accuracy if res.original.accuracy is not None else None, '.2f', res.original.provenance.get('accuracy'))}% top-1, "
         f"{_fmt(res.original.latency_ms, '.3f', res.original.provenance.get('latency_ms'))} ms"),
        ("status", _esc(res.status)),
    ]  # fmt: skip
    if res.violations:
        facts.append(("constraints", "the best plan misses: " + _esc("; ".join(res.violations))))
    return [(k, v if k in ("target", "searcher", "original (test split)", "status", "constraints") else _esc(v)) for k, v in facts]


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:0;background:#fafafa;color:#222}
main{max-width:1180px;margin:0 auto;padding:18px 26px 40px;background:#fff}
h1{font-size:1.45em;margin:.2em 0 .4em} h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.85em;margin:.4em 0} th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f2f2f2} table#front td,table#best td{white-space:nowrap} tr.best td{background:#fff5e6} tr.original td{background:#f4f4f4}
.facts th{width:11em} .note{background:#eef5fb;border-left:4px solid #3182bd;padding:8px 12px;font-size:.9em}
figure{margin:14px 0} figure img{max-width:100%;border:1px solid #eee} figcaption{font-size:.85em;color:#555}
sup.mark{font-size:.7em;margin-left:1px;color:#777} sup.mark.cached{color:#8c6d00} sup.mark.estimated{color:#b30000}
sup.mark.surrogate,sup.mark.predicted{color:#b30000;font-weight:bold}
ul.legend{font-size:.85em;color:#444;list-style:none;padding-left:0} span.label{color:#555} code{font-size:.95em}
.wide{overflow-x:auto} .grid{display:flex;flex-wrap:wrap;gap:0 14px} .grid figure{flex:1 1 520px;max-width:49%}
"""


def _figure_html(chart: Chart, src: str) -> str:
    return (
        f'<figure id="fig-{chart.name}"><img src="{src}" alt="{_esc(chart.title)}" title="{_esc(chart.title)}" '
        f'data-chart="{chart.name}" data-points="{chart.points}"><figcaption>{_esc(chart.caption)}</figcaption></figure>'
    )


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">'
        f"<title>{_esc(title)}</title><style>{CSS}</style></head><body><main>{body}"
        f'<p class="footer"><small>Written by HAD-MC on {time.strftime("%Y-%m-%d %H:%M")}; self-contained (no scripts, '
        f"no external files).</small></p></main></body></html>\n"
    )


def report_charts(res: RunResults) -> list[Chart]:
    """Every figure of one run's report, in page order."""
    charts = fronts_charts(res)
    charts += [c for c in (hypervolume_chart([res]), decisions_chart(res)) if c is not None]
    if res.searcher == "ppo":
        t = training_chart(res)
        if t is not None:
            charts.append(t)
    return charts


def render_report(res: RunResults, charts: Sequence[Chart] | None = None) -> str:
    """The report page of one run (HTML text, images embedded)."""
    charts = list(report_charts(res) if charts is None else charts)
    by = {c.name: c for c in charts}
    facts = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in _facts(res))
    fid = res.fidelity
    note = (
        '<p class="note" id="phases"><b>Two kinds of figures.</b> The search reads accuracy on the <b>validation split</b> '
        f"at a lower fidelity ({res.fidelity_text}" if fid is not None else '<p class="note" id="phases"><b>Two kinds of figures.</b> The search reads accuracy on the <b>validation split</b> (lower fidelity'
    ) + (
        "): the grey points and the hypervolume curve. The front, its table, the original and the best plans below are "
        "read on the <b>test split at full fidelity</b> (each plan recovered with its whole budget, its artifact saved "
        "and measured). Marks after a figure give its provenance (M measured, C cached, E estimated).</p>"
    )
    parts = [
        f"<header><h1>HAD-MC run <code>{_esc(res.name)}</code></h1><table class=\"facts\">{facts}</table></header>",
        note,
        "<section id=\"best-plans\"><h2>Best plan within 0, 0.25 and 1 point of the original</h2>"
        "<p>Fastest plan whose test accuracy is at most that far below the original's, with its measured speedup over the original.</p>"
        f'<div class="wide">{_best_table(res)}</div></section>',
        "<section id=\"fronts\"><h2>Pareto fronts</h2><div class=\"grid\">"
        + "".join(_figure_html(c, _data_uri(c.png)) for c in charts if c.name.startswith("front_")) + "</div>"
        + ("" if "front_energy" in by else "<p>No energy figures: this run measured none (no readable energy counter, or energy was switched off).</p>")
        + "</section>",
    ]
    parts.append("<section id=\"hypervolume\"><h2>Hypervolume over evaluations</h2>"
                 + (_figure_html(by["hypervolume"], _data_uri(by["hypervolume"].png)) if "hypervolume" in by else "<p>No search front yet.</p>")
                 + "</section>")  # fmt: skip
    parts.append("<section id=\"decisions\"><h2>Per-group decisions of the front</h2>"
                 + (_figure_html(by["decisions"], _data_uri(by["decisions"].png)) if "decisions" in by else "<p>The front holds only the original model.</p>")
                 + "</section>")  # fmt: skip
    if res.searcher == "ppo":
        parts.append("<section id=\"training\"><h2>Agent training curves</h2>"
                     + (_figure_html(by["training"], _data_uri(by["training"].png)) if "training" in by
                        else "<p>The agent had not been updated yet when the run ended (it trains after its initial plans).</p>")
                     + "</section>")  # fmt: skip
    parts.append(
        "<section id=\"front-table\"><h2>The front (test split, full fidelity)</h2>"
        f'<div class="wide">{_front_table(res)}</div><h3>Measured on</h3>{_settings_table(res)}</section>'
    )
    return _page(f"HAD-MC report: {res.name}", "".join(parts))


def _write(out: Path, page: str, charts: Sequence[Chart]) -> ReportFiles:
    out = Path(out)
    if out.exists() and out.is_dir():
        raise ConfigError(f"--out {out} is a directory; pass the path of the HTML file to write")
    folder = out.with_name(out.stem + "_figures")
    pngs = [write_atomic(folder / f"{c.name}.png", c.png) for c in charts]
    write_atomic(out, page)
    log.info("wrote %s and %d figures in %s", out, len(pngs), folder)
    return ReportFiles(out, pngs)


def write_report(res: RunResults, out: str | Path | None = None) -> ReportFiles:
    """Write the run's report (default ``RUN_DIR/report.html``) and its PNGs (``report_figures/``)."""
    charts = report_charts(res)
    return _write(Path(out) if out is not None else res.run_dir / "report.html", render_report(res, charts), charts)


# -- compare ----------------------------------------------------------------------------------


def compare_fronts_chart(runs: Sequence[RunResults]) -> list[Chart]:
    """Every run's final front over accuracy vs latency and vs size, one colour per run."""
    charts = []
    for field, label, div, logx in (FRONT_AXES[0], FRONT_AXES[2]):
        fig, (ax,) = _figure(7.5, 4.6)
        points = 0
        originals = set()
        shown: list[float | None] = []
        for i, res in enumerate(runs):
            colour = RUN_COLOURS[i % len(RUN_COLOURS)]
            front = [e for e in res.front() if getattr(e, field) is not None and e.accuracy is not None]
            if not front:
                continue
            xs, ys = [_value(e, field, div) for e in front], [100 * e.accuracy for e in front]
            shown += [e.accuracy for e in front]
            _staircase(ax, xs, ys, colour, None)
            ax.scatter(xs, ys, s=34, color=colour, edgecolors="black", linewidths=0.4, label=f"{_run_label(res, runs)} ({res.searcher}{' + hand-made plans' if res.handmade else ''})", zorder=3)
            points += len(front)
            o = res.original
            if getattr(o, field) is not None and o.accuracy is not None and (o.plan_key, o.latency_ms) not in originals:
                originals.add((o.plan_key, o.latency_ms))
                ax.scatter([_value(o, field, div)], [100 * o.accuracy], marker="*", s=160, c="black",
                           label="original model" if len(originals) == 1 else None, zorder=5)  # fmt: skip
                points += 1
        if points == 0:
            continue
        if logx:
            ax.set_xscale("log")
        what = "latency" if field == "latency_ms" else "size"
        accs = [r.original.accuracy for r in runs if r.original.accuracy is not None]
        under, bottom = _zoom_accuracy(ax, max(accs) if accs else None, shown)
        caption = "Each run's final front (test split, full fidelity)." + (f" {under} plans below {bottom:.1f}% lie under the axis." if under else "")
        ax.set_xlabel(label)
        ax.set_ylabel("top-1 accuracy (%, test split)")
        ax.grid(True, which="both", alpha=0.25)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_title(f"final fronts: accuracy vs {what}", fontsize=10)
        charts.append(Chart(f"fronts_{what}", f"Fronts: accuracy vs {what}", caption, _png(fig), points))
    return charts


def render_compare(runs: Sequence[RunResults], charts: Sequence[Chart]) -> str:
    head = ("run", "searcher", "budget", "evaluated", "wall time", "predicted episodes", "original top-1 %", "original ms",
            *(f"best within {f:g} pt" for f in FLOORS_PT))  # fmt: skip
    rows = ["<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for res in runs:
        o = res.original
        best = []
        for row in best_per_floor(res):
            e = row["searched"]
            best.append("none" if e is None else f"{_fmt(row['searched_speedup'], '.1f', mark=False)}x, {_fmt(100 * e.accuracy, '.2f', e.provenance.get('accuracy'))}%"
                        f" <code>{_short(e)}</code>")  # fmt: skip
        cells = [
            f"<code>{_esc(res.name)}</code><br><small>{_esc(res.run_dir)}</small>", _esc(res.searcher), _esc(res.budget), str(res.evaluated),
            _duration(res.meta.get("wall_s")), _esc(res.meta.get("predicted_episodes", "-")),
            _fmt(100 * o.accuracy if o.accuracy is not None else None, ".2f", o.provenance.get("accuracy")),
            _fmt(o.latency_ms, ".3f", o.provenance.get("latency_ms")), *best,
        ]  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    devices = sorted({r.original.device for r in runs})
    warn = (f'<p class="note">These runs were measured on different devices ({_esc(", ".join(devices))}): compare their latencies with care.</p>'
            if len(devices) > 1 else "")  # fmt: skip
    body = (
        f"<header><h1>HAD-MC: {len(runs)} runs compared</h1></header>{warn}"
        '<p class="note" id="phases">Hypervolume curves count search-phase figures (validation split, lower fidelity); '
        "fronts and best plans are test-split figures at full fidelity. Marks: M measured, C cached, E estimated.</p>"
        f'<section id="runs"><h2>Runs</h2><div class="wide"><table id="runs-table">{"".join(rows)}</table></div></section>'
        '<section id="figures"><h2>Hypervolume and fronts</h2>' + "".join(_figure_html(c, _data_uri(c.png)) for c in charts) + "</section>"
    )
    return _page(f"HAD-MC compare: {', '.join(r.name for r in runs)}", body)


def write_compare(runs: Sequence[RunResults], out: str | Path | None = None) -> ReportFiles:
    """Write the comparison page of several runs (default ``compare.html``) and its PNGs."""
    if len(runs) < 2:
        raise ConfigError("hadmc compare needs at least two run directories")
    charts = [c for c in [hypervolume_chart(runs), *compare_fronts_chart(runs)] if c is not None]
    return _write(Path(out) if out is not None else Path("compare.html"), render_compare(runs, charts), charts)


__all__ = [
    "Chart",
    "MARKS",
    "ReportFiles",
    "best_per_floor",
    "fronts_charts",
    "front_rows",
    "render_compare",
    "render_report",
    "report_charts",
    "write_compare",
    "write_report",
]
