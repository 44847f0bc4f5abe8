"""A run read back from its directory: what `hadmc report`, `compare` and `export` show.

It reads the run's store and files only (``hadmc.db``, ``config.yaml``, ``pareto.json``,
``searcher/training_curves.json``); it builds no evaluator and never imports torch, so a
report of a finished run takes seconds.

Every figure here is a stored one: the final phase's (test split, full fidelity) for the
front, the original and the hand-made plans; the search phase's (validation split, search
fidelity) for the cloud of searched plans and the hypervolume curve.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .evaluation import Evaluation

#: run_meta key: plan key -> label of the hand-made plans evaluated in the run (`hadmc.handmade`).
HANDMADE_META = "handmade"
#: Accuracy floors of the report's header and of bench_deploy: points below the original (test split).
FLOORS_PT: tuple[float, ...] = (0.0, 0.25, 1.0)
#: Name of the ONNX Runtime profiler's bucket for nodes outside every group (not a group).
_OTHER = "OTHER"


@dataclass
class RunResults:
    """A finished run, as stored (see module docstring).

    :param run_dir: the run directory
    :param name: the run's name in its store
    :param config: the resolved run configuration (plain data)
    :param status: the run's status in the store (``done`` once finalized)
    :param meta: per-run facts (searcher, wall_s, predicted_episodes, best, ...)
    :param groups: layer group names in network order
    :param search: search-phase evaluations in arrival order (failed ones included)
    :param final: final-phase evaluations in arrival order (failed ones included)
    :param front_keys: plan keys of the final Pareto front (the original included when it is on it)
    :param hypervolume: (distinct plans evaluated, hypervolume) of the search phase, each time the front changed
    :param original: the original model's final evaluation
    :param best_key: the plan the run chose as best (None when no plan could be finalized)
    :param violations: constraints the best plan misses
    :param handmade: plan key -> label of hand-made plans evaluated in the final phase
    :param curves: the ppo agent's training metrics (SB3 names), one dict per update
    """

    run_dir: Path
    name: str
    config: dict[str, Any]
    status: str
    meta: dict[str, Any]
    groups: list[str]
    search: list[Evaluation]
    final: list[Evaluation]
    front_keys: list[str]
    hypervolume: list[tuple[int, float | None]]
    original: Evaluation
    best_key: str | None
    violations: list[str] = field(default_factory=list)
    handmade: dict[str, str] = field(default_factory=dict)
    curves: list[dict[str, float]] = field(default_factory=list)

    # -- facts of the configuration -------------------------------------------------------
    @property
    def searcher(self) -> str:
        return str(self.meta.get("searcher") or self.config.get("search", {}).get("searcher", "?"))

    @property
    def target(self) -> str:
        lat = self.config.get("latency", {})
        return str(lat.get("address") or lat.get("probe") or "?")

    @property
    def budget(self) -> int | None:
        return self.config.get("search", {}).get("budget")

    @property
    def fidelity(self) -> float | None:
        return self.config.get("search", {}).get("fidelity")

    @property
    def fidelity_text(self) -> str | None:
        """How much of each plan's recovery the search ran, in words (None: not recorded)."""
        fid = self.fidelity
        if fid is None:
            return None
        ref = self.config.get("search", {}).get("fidelity_macs_ref") or 0.0  # absent: a run from before the rule
        more = f", more for students under {ref:g} of the original's MACs" if fid < 1.0 and ref > 0.0 else ""
        if fid < 1.0 and self.config.get("search", {}).get("fidelity_scope"):  # absent: a run from before the rule
            more += ", more for plans that train part of the model"
        lr = self.config.get("search", {}).get("fidelity_lr") or 1.0  # absent: a run from before the setting
        if fid < 1.0 and lr != 1.0:
            more += f", shortened recoveries at {lr:g}x the learning rate"
        cap = self.config.get("search", {}).get("fidelity_temperature") or 20.0  # absent: a run from before the setting
        if fid < 1.0 and cap < 20.0:
            more += f" distilling at T <= {cap:g}" if lr != 1.0 else f", shortened recoveries distilling at T <= {cap:g}"
        alpha = self.config.get("search", {}).get("fidelity_alpha")  # absent: a run from before the setting
        alpha = 1.0 if alpha is None else alpha
        if fid < 1.0 and alpha < 1.0:
            more += f", distillation weight alpha <= {alpha:g}" if lr != 1.0 or cap < 20.0 else f", shortened recoveries at distillation weight alpha <= {alpha:g}"
        batch = self.config.get("search", {}).get("fidelity_batch_size")  # absent: a run from before the setting
        if fid < 1.0 and batch is not None and batch < (self.config.get("pipeline", {}).get("batch_size") or 64):
            shortened = lr != 1.0 or cap < 20.0 or alpha < 1.0
            more += f", in batches of {batch}" if shortened else f", shortened recoveries in batches of {batch}"
            share = self.config.get("search", {}).get("fidelity_batch_share")  # absent: a run from before the setting
            if share is not None and share < 1.0:
                more += f" below {share:g} of the plan's steps"
        if fid < 1.0 and self.config.get("search", {}).get("fidelity_full_scope"):  # absent: a run from before the setting
            more += ", shortened recoveries training the whole model"
        return f"{fid:g} of each plan's recovery{more}"

    @property
    def evaluated(self) -> int:
        """Distinct plans evaluated while searching (the searcher's budget counts these)."""
        return len({e.plan_key for e in self.search})

    # -- plans ----------------------------------------------------------------------------
    def final_by_key(self) -> dict[str, Evaluation]:
        """Plan key -> its successful final evaluation."""
        return {e.plan_key: e for e in self.final if e.ok}

    def front(self) -> list[Evaluation]:
        """The final front, fastest first."""
        by_key = self.final_by_key()
        rows = [by_key[k] for k in self.front_keys if k in by_key]
        return sorted(rows, key=lambda e: (e.latency_ms if e.latency_ms is not None else math.inf, e.plan_key))

    def searched(self) -> list[Evaluation]:
        """Complete final evaluations of plans the searcher found (not the original, not hand-made)."""
        return [e for e in self.final if e.complete and e.plan_key != self.original.plan_key and e.plan_key not in self.handmade]

    def handmade_evaluations(self) -> list[Evaluation]:
        return [e for e in self.final if e.complete and e.plan_key in self.handmade]

    def label(self, ev: Evaluation) -> str:
        """What a plan is in this run: the original, a hand-made plan, the best plan, or a searched one."""
        if ev.plan_key == self.original.plan_key:
            return "original"
        if ev.plan_key in self.handmade:
            return f"hand-made: {self.handmade[ev.plan_key]}"
        return "best (searched)" if ev.plan_key == self.best_key else "searched"

    def artifact_path(self, plan_key: str) -> Path:
        """Where the run kept the measured ONNX artifact of a final evaluation."""
        return self.run_dir / "artifacts" / f"{plan_key[:16]}.onnx"

    def find(self, selector: str) -> Evaluation:
        """A final evaluation by ``best``, a row number of the front table (1 = fastest), or a
        plan key (a unique prefix of at least 6 hex digits)."""
        s = selector.strip().lower()
        front = self.front()
        if s == "best":
            if self.best_key is None:
                raise ConfigError(f"run {self.name!r} has no best plan (no plan could be evaluated at full fidelity); pick one with --plan KEY")
            best = self.final_by_key().get(self.best_key)
            if best is None:
                raise ConfigError(f"the best plan {self.best_key[:12]} named in pareto.json has no final evaluation in {self.run_dir}; the run directory is damaged")
            return best
        if s.isdigit() and len(s) <= 4:
            i = int(s)
            if not 1 <= i <= len(front):
                raise ConfigError(f"--plan {selector}: the front has rows 1 to {len(front)} (fastest first, as in the report's table)")
            return front[i - 1]
        if not re.fullmatch(r"[0-9a-f]{6,64}", s):
            raise ConfigError(f"--plan {selector!r}: pass best, a row number of the front (1 to {len(front)}) or a plan key of at least 6 hex digits")
        hits = [e for e in self.final if e.ok and e.plan_key.startswith(s)]
        if len({e.plan_key for e in hits}) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ConfigError(f"--plan {selector}: matches several plans ({', '.join(sorted({e.plan_key[:12] for e in hits}))}); give more digits")
        if any(e.plan_key.startswith(s) for e in self.search):
            raise ConfigError(
                f"plan {selector} was only evaluated while searching (validation split, no saved artifact); the final "
                f"front's plans are: {', '.join(e.plan_key[:12] for e in front)}"
            )
        raise ConfigError(f"no plan {selector!r} in run {self.name!r}; the final front's plans are: {', '.join(e.plan_key[:12] for e in front)}")


def speedup(original: Evaluation, ev: Evaluation, latency: Callable[[Evaluation], float | None] | None = None) -> float | None:
    """The original's latency over the plan's (by `latency`). By default the plan's ratio to
    the original timed in alternating blocks where it has one (what `hadmc compress` prints and
    the reward uses: two medians taken minutes apart drift apart), else the stored medians."""
    if latency is None and ev.latency_ratio and ev.plan_key != original.plan_key:
        return 1.0 / ev.latency_ratio
    lat = latency or (lambda e: e.latency_ms)
    a, b = lat(original), lat(ev)
    return a / b if a and b else None


def fastest_within(
    evaluations: Iterable[Evaluation],
    original_accuracy: float,
    floor_pt: float,
    latency: Callable[[Evaluation], float | None] | None = None,
) -> Evaluation | None:
    """The fastest complete evaluation whose accuracy is at most `floor_pt` points below
    `original_accuracy` (by `latency`, default the stored medians); None when none qualifies."""
    lat = latency or (lambda e: e.latency_ms)
    ok = [
        e for e in evaluations
        if e.complete and e.accuracy is not None and lat(e) is not None and e.accuracy >= original_accuracy - floor_pt / 100.0 - 1e-9
    ]  # fmt: skip
    return min(ok, key=lambda e: (lat(e), e.plan_key)) if ok else None


def load_results(run_dir: str | Path) -> RunResults:
    """Read a finished run from its directory; a clear `ConfigError` when it is not one."""
    from .store import RunStore

    d = Path(run_dir)
    if not d.is_dir():
        raise ConfigError(f"run directory {d} does not exist; pass the folder `hadmc compress --out` wrote (e.g. runs/quickstart)")
    db = d / "hadmc.db"
    if not db.is_file():
        raise ConfigError(f"{d} holds no HAD-MC run (no hadmc.db); pass the folder `hadmc compress --out` wrote")
    summary = _read_json(d / "pareto.json")
    store = RunStore(db)
    try:
        name = summary.get("run") if summary else _read_name(d)
        run_id = store.run_id(name) if name else None
        if run_id is None:
            raise ConfigError(f"{db} holds no run named {name!r}; was the run directory renamed or its config.yaml edited?")
        if summary is None:
            raise ConfigError(
                f"run {name!r} in {d} has not finished (status {store.run_status(run_id)!r}): its front has not been "
                f"evaluated on the test split yet; finish it with: hadmc compress --out {d} --resume"
            )
        final = store.evaluations(run_id, phase="final")
        original_key = summary["original"]["plan_key"]
        originals = [e for e in final if e.plan_key == original_key and e.ok]
        if not originals:
            raise ConfigError(f"{db} lacks the original model's final evaluation named in pareto.json; the run directory is damaged")
        meta = store.meta(run_id)
        search = store.evaluations(run_id, phase="search")
        results = RunResults(
            run_dir=d,
            name=name,
            config=store.run_config(run_id),
            status=store.run_status(run_id),
            meta=meta,
            groups=_group_order(meta, search, final),
            search=search,
            final=final,
            front_keys=store.pareto_keys(run_id, "final"),
            hypervolume=store.hypervolume_history(run_id, "search"),
            original=originals[0],
            best_key=summary.get("best"),
            violations=list(summary.get("violations") or []),
            handmade=dict(meta.get(HANDMADE_META) or {}),
            curves=list(_read_json(d / "searcher" / "training_curves.json") or []),
        )
    finally:
        store.close()
    return results


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; the run directory is damaged") from None


def _read_name(d: Path) -> str | None:
    cfg = d / "config.yaml"
    if not cfg.is_file():
        return d.name
    import yaml

    try:
        return (yaml.safe_load(cfg.read_text()) or {}).get("name") or d.name
    except (OSError, yaml.YAMLError):
        return d.name


def _group_order(meta: dict[str, Any], search: Sequence[Evaluation], final: Sequence[Evaluation]) -> list[str]:
    """Group names in network order: recorded by the run, else the order of a profiled plan's
    per-group latencies, else the plan's names in natural order."""
    if meta.get("groups"):
        return list(meta["groups"])
    for e in [*search, *final]:
        if e.group_latency_ms:
            return [g for g in e.group_latency_ms if g != _OTHER]
    names = next((list(e.plan.get("groups", {})) for e in final if e.plan.get("groups")), [])
    return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])


__all__ = ["FLOORS_PT", "HANDMADE_META", "RunResults", "fastest_within", "load_results", "speedup"]
