"""CompressionRun: the one owner of a compression run.

It holds the resolved `RunConfig`, the evaluator (built by `build_evaluator`, the one path from
a configuration to an evaluator), the `RunStore`, a `ParetoArchive` per phase and the
evaluation contexts. It is the single place that

- de-duplicates plans: a plan already evaluated in this context is answered from the store
  with its measured figures relabelled `cached`, and never counts against the budget;
- records every evaluation with its reward and the updated front in one transaction;
- drives a searcher (`search`): ask, evaluate, tell, checkpoint, until the budget of distinct
  plans is spent; Ctrl-C leaves everything recorded so far, and `resume=True` continues;
- finalizes (`finalize`): the search front is re-evaluated at full fidelity on the test split,
  and only those figures make the front a user sees (`pareto.json`, `best/`).

Search evaluations read accuracy on the validation split, possibly at a lower recovery
fidelity; final ones on the test split at the plan's whole recovery budget. Both are stored,
each marked with its phase and split, under different contexts, so one is never served for
the other.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig
from .errors import ConfigError, HadmcError
from .evaluation import OBJECTIVES, Evaluation, Phase
from .files import write_atomic, write_json
from .pareto import ParetoArchive, dominates
from .plan import CompressionPlan
from .store import RunStore

log = logging.getLogger(__name__)

#: Event callback of a run: (kind, info). Kinds: ``plan`` (an evaluation starts), ``stage``
#: (a pipeline stage starts), ``evaluated`` (an outcome), ``finalize`` (the final phase starts).
EventSink = Callable[[str, dict], None]


@dataclass
class Outcome:
    """One plan's evaluation as the run saw it."""

    evaluation: Evaluation
    reward: float
    terms: dict[str, float | None] = field(default_factory=dict)
    cached: bool = False
    pareto: bool = False


@dataclass
class CompressionResult:
    """What a finished run hands back: the final front (test split, full fidelity) and the best plan.

    :param run_dir: the run directory (``hadmc.db``, ``config.yaml``, ``pareto.json``, ``best/``)
    :param original: the unmodified model's final evaluation
    :param front: the final Pareto front, fastest first
    :param best: the best plan by the configured reward among those meeting the constraints
        (or, when none does, the best plan found; see `violations`)
    :param violations: which constraint `best` misses and by how much (empty when it meets all)
    :param searcher: the searcher's name and summary (e.g. predicted episodes)
    :param evaluations: distinct plans evaluated while searching
    """

    run_dir: Path
    original: Evaluation
    front: list[Evaluation]
    best: Evaluation | None
    violations: list[str] = field(default_factory=list)
    searcher: dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0
    wall_s: float = 0.0


def model_fingerprint(model: Any) -> str:
    """SHA-256 (16 hex) of a module's weights, so figures of other weights are never reused."""
    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes() if tensor.numel() else b"")
        h.update(str(tuple(tensor.shape)).encode())
    del torch
    return h.hexdigest()[:16]


def config_differences(config: RunConfig, stored: dict[str, Any]) -> list[str]:
    """Top-level settings of `config` that differ from a run's `stored` config and would change
    its figures: everything but the name, the run directory, the execution settings and the
    search's budget and finalize_max. Settings added since the run started take their
    defaults, which is what it ran with, except those that came with a change of behaviour
    (`hadmc.config.LEGACY_SETTINGS`): they take the value the run ran with. An empty `stored`
    (no config kept) differs in nothing."""
    from .config import with_legacy_settings

    if not stored:
        return []
    now = config.model_dump(mode="json")
    stored = with_legacy_settings(stored)
    try:
        stored = RunConfig.parse(stored).model_dump(mode="json")
    except ConfigError:  # a setting since removed or renamed: compare as stored (and differ)
        pass
    free = {"name", "run_dir", "execution"}  # where plans are evaluated changes no figure
    differ = []
    for key in sorted(set(now) | set(stored)):
        if key in free:
            continue
        a, b = now.get(key), stored.get(key)
        if key == "search" and isinstance(a, dict) and isinstance(b, dict):
            a = {k: v for k, v in a.items() if k not in ("budget", "finalize_max")}
            b = {k: v for k, v in b.items() if k not in ("budget", "finalize_max")}
        if a != b:
            differ.append(key)
    return differ


class CompressionRun:
    """One compression run (see module docstring).

    :param config: the run configuration
    :param evaluator: anything with ``groups``, ``device``, ``baseline`` (or ``baseline_for(phase)``)
        and ``evaluate(plan, phase=..., progress=...)``; None builds the real one
    :param store: the run store; None opens ``config.database_path`` when ``run_dir`` is set
        or the evaluator is built here, else an in-memory store (tests with the surrogate)
    :param resume: True continues an existing run (an error if there is none), False starts a
        new one (an error if the run directory already holds this run), None does either
    :param model: an `nn.Module` to compress instead of ``config.model`` (Python API)
    :param data: a `DataBundle` instead of loading ``config.data``
    :param on_event: receives progress events (see `EventSink`)
    :param evaluator_factory: builds each worker's evaluator when ``config.execution`` asks for
        workers (default `hadmc.parallel.build_worker_evaluator`; a test seam: see `EvaluatorFactory`)
    :param executor: an `hadmc.parallel.Executor` to evaluate plans with, instead of the one
        ``config.execution`` describes
    """

    def __init__(
        self,
        config: RunConfig,
        *,
        evaluator: Any = None,
        store: RunStore | None = None,
        resume: bool | None = None,
        model: Any = None,
        data: Any = None,
        on_event: EventSink | None = None,
        evaluator_factory: Any = None,
        executor: Any = None,
    ) -> None:
        self.config = config
        self.on_event = on_event
        self.executor = executor
        built_here = evaluator is None
        on_disk = config.run_dir is not None or built_here
        self.run_dir: Path | None = config.resolved_run_dir if on_disk else None
        self._owns_store = store is None
        if store is None:
            if self.run_dir is not None:
                self._check_run_dir(resume)
            store = RunStore(config.database_path if self.run_dir is not None else ":memory:")
        self.store = store
        existing = store.run_id(config.name)
        if resume is True and existing is None:
            raise ConfigError(f"there is no run {config.name!r} in {store.path} to resume; drop --resume to start it")
        if resume is False and existing is not None and store.count(existing):
            raise ConfigError(
                f"{store.path.parent} already holds run {config.name!r} with {store.count(existing)} evaluations; "
                "pass --resume to continue it, or --out to start a new run elsewhere"
            )
        if existing is not None:
            self._check_same_config(store.run_config(existing))
        on_train = lambda msg: self._emit("training", {"message": msg})  # noqa: E731
        on_epoch = lambda info: self._emit("training_epoch", info)  # noqa: E731
        if evaluator is None and (executor is not None or config.execution.parallel):
            evaluator = self._start_workers(evaluator_factory, model, data, on_train, on_epoch)
        elif evaluator is None:
            from .evaluation import build_evaluator

            evaluator = build_evaluator(config, model=model, data=data, on_train=on_train, on_epoch=on_epoch)
        self.evaluator = evaluator
        self.groups = list(evaluator.groups)
        self.run_id = store.open_run(config.name, config.model_dump(mode="json"))
        # The report draws per-group decisions in network order; plan JSON sorts the names.
        store.set_meta(self.run_id, groups=[g.name for g in self.groups])
        fingerprint = getattr(evaluator, "fingerprint", None) or (model_fingerprint(evaluator.model) if hasattr(evaluator, "model") else "-")
        # The evaluator's class is part of the context so surrogate figures can never be
        # served to a real run with the same configuration (workers report theirs).
        kind = getattr(evaluator, "evaluator_name", None) or type(evaluator).__name__
        self.contexts: dict[str, str] = {
            phase: f"{kind}:{fingerprint}:{config.evaluation_context(phase)}" for phase in ("search", "final")
        }
        self._baselines: dict[str, Evaluation] = {}
        self._stop = threading.Event()
        self.archives: dict[str, ParetoArchive] = {}
        self.started = time.perf_counter()
        self._prior_wall = float(store.meta(self.run_id).get("wall_s", 0.0))
        self._scratch = None
        if self.run_dir is not None:
            write_atomic(self.run_dir / "config.yaml", config.dump_yaml())

    def _start_workers(self, factory, model, data, on_train, on_epoch):
        """Start the executor's workers; the run's facts come from the first one ready."""
        from .parallel import start_executor

        if self.executor is None:
            ex = self.config.execution
            if self.config.model == "default" and (ex.executor == "process" or ex.address is None):
                from .models import load_default_model

                load_default_model(on_train=on_train, on_epoch=on_epoch)  # trained once here, not by every worker of this machine
            self.executor = start_executor(self.config, factory=factory, model=model, data=data)
        try:
            return self.executor.start()
        except BaseException:
            self.executor.close()
            raise

    # -- construction checks ------------------------------------------------------------
    def _check_run_dir(self, resume: bool | None) -> None:
        d = self.run_dir
        assert d is not None
        if d.exists() and not d.is_dir():
            raise ConfigError(f"run directory {d} exists and is not a directory; choose another --out")
        if resume is False and d.is_dir() and any(d.iterdir()) and not (d / "hadmc.db").is_file():
            raise ConfigError(f"{d} is not empty and holds no HAD-MC run; choose an empty or new --out")

    def _check_same_config(self, stored: dict[str, Any]) -> None:
        """Refuse to resume under settings that change figures (the budget may grow)."""
        differ = config_differences(self.config, stored)
        if differ:
            raise ConfigError(
                f"run {self.config.name!r} was started with other settings for: {', '.join(differ)}; resume it with "
                "its own config.yaml (only search.budget and the execution settings may change) or start a new run with --out"
            )

    # -- facts --------------------------------------------------------------------------
    def baseline(self, phase: Phase = "search") -> Evaluation:
        """The original model's evaluation in `phase` (validation split while searching)."""
        if phase not in self._baselines:
            ev = self.evaluator
            self._baselines[phase] = ev.baseline_for(phase) if hasattr(ev, "baseline_for") else ev.baseline
            # Measuring the original profiles it: the evaluator's groups now carry their measured
            # latency shares, which searchers and predictors use (workers report theirs after it).
            self.groups = list(getattr(ev, "groups", self.groups))
        return self._baselines[phase]

    @property
    def device(self):
        return self.evaluator.device

    def objectives(self) -> dict[str, str]:
        """Objectives of the fronts: accuracy, latency and size, and energy where it is measured
        (an estimate from latency would only repeat the latency)."""
        base = self.baseline("search")
        out = {k: v for k, v in OBJECTIVES.items() if k != "energy_mj"}
        if base.energy_mj is not None and base.provenance.get("energy_mj") == "measured":
            out["energy_mj"] = OBJECTIVES["energy_mj"]
        return out

    def reference(self, phase: Phase = "search") -> dict[str, float]:
        """Hypervolume reference: the original's figures, and its accuracy minus
        ``search.hypervolume_accuracy_pt`` points, so plans worse than that add no volume."""
        base = self.baseline(phase)
        ref: dict[str, float] = {}
        if base.accuracy is not None:
            ref["accuracy"] = base.accuracy - self.config.search.hypervolume_accuracy_pt / 100.0
        for name in self.objectives():
            if name != "accuracy" and getattr(base, name) is not None and getattr(base, name) > 0:
                ref[name] = float(getattr(base, name))
        return ref

    def archive(self, phase: Phase = "search") -> ParetoArchive:
        """The phase's Pareto archive (rebuilt from the store on first use)."""
        if phase not in self.archives:
            ref = self.reference(phase)
            scale = {k: v for k, v in ref.items() if k != "accuracy"}
            scale["accuracy"] = 0.01  # volume in accuracy points x relative latency x relative size
            archive = ParetoArchive(reference=ref, scale=scale, objectives=self.objectives())
            for ev in self.store.evaluations(self.run_id, include_errors=False, context=self.contexts[phase]):
                archive.add_evaluation(ev)
            self.archives[phase] = archive
        return self.archives[phase]

    def reward_breakdown(self, evaluation: Evaluation):
        """The configured reward of an evaluation against the original in the same phase."""
        from .reward import compute_reward

        c = self.config
        slack = c.search.floor_slack_pt / 100.0 if evaluation.phase == "search" and c.search.fidelity < 1.0 else 0.0
        return compute_reward(evaluation, self.baseline(evaluation.phase), c.objectives, c.constraints, c.failure_penalty, slack)

    def reward(self, evaluation: Evaluation) -> float:
        return self.reward_breakdown(evaluation).reward

    def distinct(self, phase: Phase = "search") -> int:
        """Distinct plans evaluated in this run and phase (the searcher's budget counts these)."""
        return self.store.distinct_plans(self.run_id, self.contexts[phase])

    def evaluations(self, phase: Phase = "search", *, include_errors: bool = True) -> list[Evaluation]:
        return self.store.evaluations(self.run_id, include_errors=include_errors, context=self.contexts[phase])

    def _emit(self, kind: str, info: dict) -> None:
        if self.on_event is not None:
            self.on_event(kind, info)

    # -- evaluation ---------------------------------------------------------------------
    def resolve(self, plan: CompressionPlan) -> CompressionPlan:
        from .pipeline import resolve_plan

        return resolve_plan(plan, self.groups)

    def evaluate(self, plans: Sequence[CompressionPlan], phase: Phase = "search") -> list[Evaluation]:
        """Evaluate `plans` (identical ones once; known ones from the store, marked `cached`)."""
        return [o.evaluation for o in self.evaluate_outcomes(plans, phase)]

    def evaluate_outcomes(self, plans: Sequence[CompressionPlan], phase: Phase = "search") -> list[Outcome]:
        """Like `evaluate`, with each plan's reward and whether it was cached or joined the front.

        New plans are evaluated here one after another, or all at once by the workers."""
        slots: list[Outcome | str] = []  # an outcome, or the key of a new plan evaluated below
        new: dict[str, Any] = {}  # key -> the resolved plan, or the ticket of a worker evaluating it
        for plan in plans:
            resolved = self._resolved(plan, phase)
            if isinstance(resolved, Outcome):
                slots.append(resolved)
                continue
            key = resolved.key()
            if key not in new:
                known = self._known(key, phase)
                if known is not None:
                    slots.append(known)
                    continue
                new[key] = self._submit(resolved, phase) if self.executor is not None else resolved
            slots.append(key)
        outcomes: dict[str, Outcome] = {}
        if self.executor is None:
            for key, plan in new.items():
                outcomes[key] = self._evaluate_new(plan, phase)
        else:
            waiting = {ticket: key for key, ticket in new.items()}
            while waiting:
                self._check_stop()
                for done in self.executor.wait():
                    outcomes[waiting.pop(done.ticket)] = self._finish(done, phase)
        out, given = [], set()
        for slot in slots:
            if isinstance(slot, str):  # a plan repeated in `plans` is answered from its first evaluation
                out.append(_as_cached(outcomes[slot]) if slot in given else outcomes[slot])
                given.add(slot)
            else:
                out.append(slot)
        return out

    def _resolved(self, plan: CompressionPlan, phase: Phase) -> CompressionPlan | Outcome:
        """The plan resolved against the model's groups, or its recorded failure when it does not fit."""
        try:
            return self.resolve(plan)
        except HadmcError as exc:
            ev = Evaluation(plan_key=plan.key(), plan=plan.model_dump(mode="json"), phase=phase, error=f"{type(exc).__name__}: {exc}")
            return self._record(ev, phase)

    def _known(self, key: str, phase: Phase) -> Outcome | None:
        if not self.config.use_cache:
            return None
        ctx = self.contexts[phase]
        hit = self.store.lookup(key, ctx) or self.store.lookup_failure(key, ctx, self.run_id)
        if hit is None:
            return None
        b = self.reward_breakdown(hit)
        return Outcome(hit.as_cached(), b.reward, b.terms, cached=True)

    def request_stop(self) -> None:
        """Stop before the next evaluation starts (with KeyboardInterrupt, as Ctrl-C does): a
        signal handler calls this, so a stop is honoured even when the interrupt itself was
        raised where Python cannot pass it on (a finalizer, a library's cleanup)."""
        self._stop.set()

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise KeyboardInterrupt

    def _evaluate_new(self, plan: CompressionPlan, phase: Phase) -> Outcome:
        self._check_stop()
        self._emit("plan", {"phase": phase, "plan_key": plan.key(), "done": self.distinct(phase)})

        def stage(name: str) -> None:
            self._emit("stage", {"phase": phase, "stage": name})

        compressed = None
        try:
            if phase == "final" and self.run_dir is not None and hasattr(self.evaluator, "evaluate_with_artifact"):
                ev, compressed = self.evaluator.evaluate_with_artifact(plan, phase)
            else:
                ev = self.evaluator.evaluate(plan, phase=phase, progress=stage)
        except Exception as exc:  # the evaluator should not raise; if it does the run goes on
            log.exception("evaluating plan %s raised", plan.key()[:12])
            ev = Evaluation(plan_key=plan.key(), plan=plan.model_dump(mode="json"), phase=phase, error=f"{type(exc).__name__}: {exc}")
        return self._record(self._keep_artifact(ev, compressed.onnx_bytes if compressed is not None else None), phase)

    def _keep_artifact(self, ev: Evaluation, onnx_bytes: bytes | None) -> Evaluation:
        """Save a final evaluation's artifact (the figures name its SHA-256)."""
        if onnx_bytes is None:
            return ev
        write_atomic(self.artifact_path(ev.plan_key), onnx_bytes)
        return ev.model_copy(update={"artifact_sha256": hashlib.sha256(onnx_bytes).hexdigest()})

    # -- evaluation in workers ----------------------------------------------------------
    def _submit(self, plan: CompressionPlan, phase: Phase) -> int:
        keep = phase == "final" and self.run_dir is not None
        ticket = self.executor.submit(plan, phase, keep=keep, profile=bool(getattr(self.evaluator, "profile_plans", False)))
        self._emit("plan", {"phase": phase, "plan_key": plan.key(), "done": self.distinct(phase), "in_flight": self.executor.in_flight})
        return ticket

    def _finish(self, done, phase: Phase) -> Outcome:
        """Record what a worker returned (its artifact saved first)."""
        return self._record(self._keep_artifact(done.evaluation, done.onnx), phase)

    def _record(self, ev: Evaluation, phase: Phase) -> Outcome:
        b = self.reward_breakdown(ev)
        archive = self.archive(phase)
        before = set(archive.keys())
        self.store.record(self.run_id, ev, context=self.contexts[phase], reward=b.reward, archive=archive)
        outcome = Outcome(ev, b.reward, b.terms, cached=False, pareto=ev.plan_key in archive and ev.plan_key not in before)
        self._emit("evaluated", {"phase": phase, "outcome": outcome, "done": self.distinct(phase)})
        return outcome

    def artifact_path(self, plan_key: str) -> Path:
        """Where the measured ONNX artifact of a final evaluation is kept."""
        if self.run_dir is None:
            raise ConfigError("this run keeps no files (no run_dir)")
        return self.run_dir / "artifacts" / f"{plan_key[:16]}.onnx"

    # -- search -------------------------------------------------------------------------
    def make_searcher(self, name: str | None = None):
        """The configured searcher, restored from its checkpoint when the run has one."""
        from .search import get_searcher
        from .search.base import PlanSpace, SearchContext

        name = name or self.config.search.searcher
        cls = get_searcher(name)
        if self.run_dir is not None:
            directory = self.run_dir / "searcher"
        else:  # a run without files: the searcher's scratch space goes when the run closes
            import tempfile

            self._scratch = self._scratch or tempfile.TemporaryDirectory(prefix="hadmc-searcher-")
            directory = Path(self._scratch.name)
        baseline = self.baseline("search")  # first: it gives the groups their latency shares
        context = SearchContext(
            space=PlanSpace(self.groups, self.layout()),
            config=self.config,
            baseline=baseline,
            reward=self.reward,
            reference=self.reference("search"),
            objectives=self.objectives(),
            directory=directory,
            database=self.config.database_path if self.run_dir is not None else None,
            run_name=self.config.name,
            seed=self.config.seed,
            device=self.device,
            extra={"groups": self.groups},
            workers=self.executor.workers if self.executor is not None else 1,
        )
        searcher = cls(context)
        if hasattr(self.evaluator, "profile_plans"):
            self.evaluator.profile_plans = bool(cls.wants_profiles)
        meta = self.store.meta(self.run_id)
        if meta.get("searcher") not in (None, name):
            raise ConfigError(f"run {self.config.name!r} was searched with {meta['searcher']!r}; resume it with that searcher")
        state = self._searcher_state_path()
        if state is not None and state.is_file():
            import torch

            searcher.load_state_dict(torch.load(state, weights_only=False))
            log.info("searcher %s resumed from %s", name, state)
            self._emit("resumed", {"searcher": name, "done": self.distinct("search"), **searcher.summary()})
        self.store.set_meta(self.run_id, searcher=name)
        return searcher

    def layout(self):
        from .envs.spaces import ActionLayout

        return ActionLayout.from_search(
            self.config.search, getattr(self.device, "precisions", ("fp32",)), getattr(self.device, "backend", None)
        )

    def _searcher_state_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / "searcher" / "state.pt"

    def save_searcher(self, searcher) -> None:
        """Checkpoint the searcher atomically (after every tell)."""
        path = self._searcher_state_path()
        if path is None:
            return
        import io

        import torch

        buf = io.BytesIO()
        torch.save(searcher.state_dict(), buf)
        write_atomic(path, buf.getvalue())
        self.store.set_meta(self.run_id, searcher_state=str(path.relative_to(self.run_dir)), wall_s=self._wall(), **searcher.summary())

    def search(self, searcher=None, *, budget: int | None = None) -> Any:
        """Ask, evaluate, tell until `budget` distinct plans have been evaluated in this run.

        Cached plans (known to the store) do not count. Returns the searcher (closed).
        """
        budget = budget or self.config.search.budget
        own = searcher is None
        searcher = searcher or self.make_searcher()
        self.store.set_status(self.run_id, "searching")
        stale = 0
        try:
            if self.executor is not None:
                self.store.set_meta(self.run_id, execution=self.executor.execution())
                self._search_pooled(searcher, budget)
            while self.executor is None and self.distinct("search") < budget:
                want = min(self.config.search.batch, budget - self.distinct("search"))
                plans = searcher.ask(want)
                if not plans:
                    log.warning("searcher %s has no more plans after %d evaluations", searcher.name, self.distinct("search"))
                    break
                told_plans, outcomes = [], []
                for plan in plans:
                    if self.distinct("search") >= budget:
                        break
                    outcomes.append(self.evaluate_outcomes([plan], "search")[0])
                    told_plans.append(plan)
                searcher.tell(told_plans, [o.evaluation for o in outcomes], [o.reward for o in outcomes])
                self.save_searcher(searcher)
                stale = 0 if any(not o.cached for o in outcomes) else stale + 1
                if stale >= 200:
                    log.warning("searcher %s proposed only known plans 200 times in a row; stopping the search", searcher.name)
                    break
        except KeyboardInterrupt:
            self.store.set_status(self.run_id, "interrupted")
            raise
        finally:
            self.store.set_meta(self.run_id, search_wall_s=self._wall(), wall_s=self._wall(), **searcher.summary())
            if own:
                searcher.close()
        self.store.set_status(self.run_id, "searched")
        return searcher

    def _search_pooled(self, searcher, budget: int) -> None:
        """The search loop with workers: ask for as many plans as there are free workers, tell
        each outcome as it arrives (any order), checkpoint after every tell. A plan asked while
        an identical one is in flight waits for it and is told its figures as `cached`."""
        ex = self.executor
        flight: dict[int, tuple[CompressionPlan, str]] = {}  # ticket -> (plan as asked, resolved key)
        by_key: dict[str, int] = {}
        waiters: dict[int, list[CompressionPlan]] = {}
        stale, exhausted = 0, False

        def room() -> int:
            return budget - self.distinct("search") - len(flight)

        while True:
            self._check_stop()
            want = min(ex.free, room())
            short = False  # the searcher had fewer plans than free workers: ask again soon
            if want > 0 and not exhausted:
                plans = searcher.ask(want)
                short = len(plans) < want
                if not plans and not flight:
                    log.warning("searcher %s has no more plans after %d evaluations", searcher.name, self.distinct("search"))
                    break
                started = told = 0
                for plan in plans:
                    if room() <= 0:
                        break  # the budget is spoken for; like the sequential loop, the rest is never told
                    resolved = self._resolved(plan, "search")
                    if isinstance(resolved, Outcome):  # it does not fit the model: recorded failed
                        searcher.tell([plan], [resolved.evaluation], [resolved.reward])
                        started, told = started + 1, told + 1
                        continue
                    key = resolved.key()
                    if key in by_key:
                        waiters.setdefault(by_key[key], []).append(plan)
                        continue
                    known = self._known(key, "search")
                    if known is not None:
                        searcher.tell([plan], [known.evaluation], [known.reward])
                        told += 1
                        continue
                    ticket = self._submit(resolved, "search")
                    flight[ticket], by_key[key] = (plan, key), ticket
                    started += 1
                if told:
                    self.save_searcher(searcher)
                if plans:  # none while others are out means "tell me first", not "nothing new"
                    stale = 0 if started else stale + 1
                if stale >= 200:
                    log.warning("searcher %s proposed only known plans 200 times in a row; stopping the search", searcher.name)
                    exhausted = True
                if plans and not started and not exhausted:
                    continue  # only known plans: ask again before waiting
            if not flight and (exhausted or room() <= 0):
                break
            for done in ex.wait(0.25 if short and flight else None):
                plan, key = flight.pop(done.ticket)
                del by_key[key]
                o = self._finish(done, "search")
                extra = waiters.pop(done.ticket, [])
                searcher.tell([plan, *extra], [o.evaluation] + [o.evaluation.as_cached()] * len(extra), [o.reward] * (1 + len(extra)))
                self.save_searcher(searcher)

    def _wall(self) -> float:
        """Seconds this run has taken, over all its sessions (a resumed run adds up)."""
        return self._prior_wall + time.perf_counter() - self.started

    # -- the final front ----------------------------------------------------------------
    def finalize(self, max_plans: int | None = None) -> CompressionResult:
        """Re-evaluate the search front at full fidelity on the test split; write the results.

        Up to `max_plans` (``search.finalize_max``) plans at or near the search front are
        chosen (see `_finalize_candidates`): the fastest plan within each accuracy band of the
        original (0, 0.25, 0.5, 1, 2 points, then wider), then the rest by reward. Their final
        figures, and the original's, form the front the user sees; `pareto.json` and `best/`
        are written from them.
        """
        max_plans = max_plans or self.config.search.finalize_max
        self._emit("finalize", {"max_plans": max_plans})
        base = self.baseline("final")
        self._record_original(base)
        chosen = self._finalize_candidates(max_plans)
        finals = self.evaluate_outcomes([CompressionPlan.parse(ev.plan) for ev in chosen], "final")
        front_keys = set(self.archive("final").keys())
        front = [o.evaluation for o in finals if o.evaluation.plan_key in front_keys]
        if base.plan_key in front_keys:
            front.append(self.store.lookup(base.plan_key, self.contexts["final"]) or base)
        front.sort(key=lambda e: (e.latency_ms if e.latency_ms is not None else math.inf))
        # The best plan is one of the front the user sees: the reward times latency against the
        # original in alternating blocks, the front compares medians, and on a drifting machine
        # a plan the medians dominate could otherwise win on its ratio.
        on_front = [e for e in front if e.complete and e.plan_key != base.plan_key]
        best, violations = self._best(on_front or [o.evaluation for o in finals if o.evaluation.complete])
        meta = self.store.meta(self.run_id)
        result = CompressionResult(
            run_dir=self.run_dir or Path("."),
            original=base,
            front=front,
            best=best,
            violations=violations,
            searcher={k: v for k, v in meta.items() if k not in ("searcher_state",)},
            evaluations=self.distinct("search"),
            wall_s=self._wall(),
        )
        self.store.set_meta(self.run_id, wall_s=result.wall_s, best=best.plan_key if best else None, violations=violations)
        if self.run_dir is not None:
            self._write_results(result)
        self.store.set_status(self.run_id, "done")
        return result

    def _record_original(self, base: Evaluation) -> None:
        ctx = self.contexts["final"]
        if self.store.lookup(base.plan_key, ctx) is None:
            self.store.record(self.run_id, base, context=ctx, reward=self.reward(base), archive=self.archive("final"))

    def _finalize_candidates(self, max_plans: int) -> list[Evaluation]:
        """Plans the search front holds, or would hold if its accuracy read one image more.

        A validation accuracy is k of n images, and one image moves it by 1/n (0.56 points on
        the embedded default's 180): a plan one image short of the front is as likely to be on
        the test split's front as the plan that shut it out. Measured: in a bench_deploy search
        (budget 64) the validation front's only plans between 0.31 and 0.85 ms were uniform
        70% int8, 97.8% validation and 97.0% test, and two searched plans at 97.8% and 0.41
        and 0.47 ms it shut out by milliseconds were never finalized.
        """
        done = [e for e in self.evaluations("search", include_errors=False) if e.complete and e.accuracy is not None]
        front = near_front(done, list(self.objectives()))
        acc0 = self.baseline("search").accuracy or 0.0
        rewards = self.store.rewards(self.run_id, self.contexts["search"])
        chosen: list[Evaluation] = []
        for band in (0.0, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0):
            within = [e for e in front if e.accuracy is not None and e.accuracy >= acc0 - band / 100.0 - 1e-9 and e not in chosen]
            if within:
                chosen.append(min(within, key=lambda e: e.latency_ms or math.inf))
        rest = sorted((e for e in front if e not in chosen), key=lambda e: -rewards.get(e.plan_key, -math.inf))
        return (chosen + rest)[:max_plans]

    def _best(self, finals: list[Evaluation]) -> tuple[Evaluation | None, list[str]]:
        if not finals:
            return None, ["no plan of the front could be evaluated at full fidelity"]
        c = self.config.constraints
        floor = c.min_accuracy_for(self.baseline("final").accuracy)

        def misses(e: Evaluation) -> list[str]:
            out = []
            if floor is not None and e.accuracy is not None and e.accuracy < floor:
                out.append(f"accuracy {100 * e.accuracy:.2f}% is {100 * (floor - e.accuracy):.2f} points below the floor {100 * floor:.2f}%")
            if c.latency_budget_ms is not None and e.latency_ms is not None and e.latency_ms > c.latency_budget_ms:
                out.append(f"latency {e.latency_ms:.3f} ms is {e.latency_ms - c.latency_budget_ms:.3f} ms over the budget {c.latency_budget_ms:g} ms")
            return out

        rewards = {e.plan_key: self.reward(e) for e in finals}
        feasible = [e for e in finals if not misses(e)]
        if feasible:
            return max(feasible, key=lambda e: rewards[e.plan_key]), []
        best = max(finals, key=lambda e: rewards[e.plan_key])
        return best, misses(best)

    def _write_results(self, result: CompressionResult) -> None:
        d = self.run_dir
        assert d is not None

        def row(e: Evaluation) -> dict[str, Any]:
            return {
                "plan_key": e.plan_key,
                "artifact": str(self.artifact_path(e.plan_key).relative_to(d)) if e.artifact_sha256 else None,
                **e.model_dump(mode="json", include={
                    "phase", "split", "accuracy", "latency_ms", "latency_p90_ms", "latency_cov", "energy_mj", "model_bytes",
                    "macs", "params", "provenance", "recovery_steps", "full_recovery_steps", "quantization", "artifact_sha256", "plan",
                    "patch_bytes", "patch_base_sha256", "node",
                }),
            }  # fmt: skip

        write_json(
            d / "pareto.json",
            {
                "run": self.config.name,
                "device": self.device.id,
                "searcher": result.searcher,
                "evaluations": result.evaluations,
                "original": row(result.original),
                "front": [row(e) for e in result.front],
                "best": result.best.plan_key if result.best else None,
                "violations": result.violations,
                "hypervolume": self.archive("final").hypervolume(),
                **({"execution": self.executor.execution()} if self.executor is not None else {}),
            },
        )
        best_dir = d / "best"
        if result.best is not None:
            src = self.artifact_path(result.best.plan_key)
            if src.is_file():
                tmp = best_dir / ".model.onnx.tmp"
                best_dir.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, tmp)
                tmp.replace(best_dir / "model.onnx")
                if self.config.deployed_model is not None:  # what `hadmc apply-delta` turns the deployed model into this one with
                    from .hal.delta import make_patch

                    write_atomic(best_dir / "update.patch", make_patch(Path(self.config.deployed_model).read_bytes(), src.read_bytes()))
            write_json(best_dir / "plan.json", result.best.plan)
            write_json(best_dir / "metrics.json", {**row(result.best), "violations": result.violations})

    def close(self) -> None:
        if self.executor is not None:
            self.executor.close()
            self.executor = None
        if self._owns_store:
            self.store.close()
            self._owns_store = False
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _as_cached(outcome: Outcome) -> Outcome:
    return Outcome(outcome.evaluation.as_cached(), outcome.reward, outcome.terms, cached=True, pareto=False)


def near_front(evaluations: list[Evaluation], objectives: list[str]) -> list[Evaluation]:
    """The evaluations no other one dominates even with their accuracy read one image higher
    (1 / `accuracy_samples`; an accuracy without its image count gets no such allowance).
    The Pareto front is among them."""
    signs = {k: (-1.0 if OBJECTIVES[k] == "max" else 1.0) for k in objectives}

    def row(e: Evaluation, lift: float = 0.0) -> np.ndarray:
        values = [getattr(e, k) for k in objectives]
        return np.array([np.inf if v is None else signs[k] * (float(v) + (lift if k == "accuracy" else 0.0)) for k, v in zip(objectives, values)])

    rows = [row(e) for e in evaluations]
    out = []
    for i, e in enumerate(evaluations):
        # a hair under one image, so a plan that would only tie a faster one stays dominated
        lifted = row(e, (1.0 - 1e-6) / e.accuracy_samples if e.accuracy_samples else 0.0)
        if not any(j != i and dominates(r, lifted) for j, r in enumerate(rows)):
            out.append(e)
    return out


__all__ = ["CompressionResult", "CompressionRun", "EventSink", "Outcome", "model_fingerprint", "near_front"]
