"""Parallel evaluation: worker processes on this machine, or Ray actors on a cluster.

A `CompressionRun` with ``execution.workers > 1`` (or ``execution.executor: ray``) hands new
plans to an `Executor` instead of evaluating them itself. Each worker builds its evaluator
once (through the same factory as a sequential run, `build_evaluator`), measures the original
model, and then evaluates one plan at a time. The run stays the one owner of the store: a
worker only returns the `Evaluation` (and, for final evaluations, the ONNX artifact); the run
records it, tells the searcher and checkpoints, exactly as it does for its own evaluations.

Figures stay true under parallelism:

- latency, energy and per-node profiles are measured under a `MeasurementLock` that every
  worker of one machine shares (an exclusive lock on a file: the kernel releases it when its
  holder dies, so a crashed worker never leaves it held); recovery training and accuracy
  runs go on in parallel, on their own cores;
- each worker runs with a fixed number of torch threads (the machine's cores divided by the
  workers), so workers do not fight over cores;
- a latency figure is only comparable with figures of the same device: every worker reports
  the device and host it measures on, and a run whose workers measure on different devices is
  refused (`ConfigError`) rather than mixing their figures in one front.

Faults: a worker that dies (a segfault, the OOM killer, a SIGKILL) loses only the plan it was
evaluating. The worker is restarted and the plan retried once; a second death records the
plan as failed with the reason, and the search goes on. A killed driver takes its worker
processes with it (Linux parent-death signal), so a resumed run never shares the machine with
orphans of the last one.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import hashlib
import logging
import os
import platform
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig
from .errors import ConfigError, HadmcError
from .evaluation import Evaluation
from .plan import CompressionPlan

log = logging.getLogger(__name__)

#: What the run's reports say about latency measured by parallel workers.
LOCKED_LATENCY = (
    "measured one artifact at a time on each machine, under a measurement lock its workers share; "
    "recovery training and accuracy runs go on in parallel"
)
RAY_MISSING = "the ray executor needs Ray: pip install 'hadmc[ray]'"


# -- the measurement lock ------------------------------------------------------------------


class MeasurementLock:
    """An exclusive lock on a file, shared by every process of one machine that opens the same
    path; the kernel drops it when the holding process dies. Re-entrant within a process, and
    every instance for one path in a process shares one hold (two would block each other).

    :param path: the lock file (created if missing)
    """

    _held: dict[str, _Hold] = {}
    _registry = threading.Lock()

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with MeasurementLock._registry:
            self._hold = MeasurementLock._held.setdefault(str(self.path.absolute()), _Hold())

    def __enter__(self) -> MeasurementLock:
        import fcntl

        hold = self._hold
        hold.local.acquire()
        if hold.depth == 0:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                except BaseException:
                    os.close(fd)
                    raise
            except BaseException:
                hold.local.release()
                raise
            hold.fd = fd
        hold.depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        import fcntl

        hold = self._hold
        hold.depth -= 1
        if hold.depth == 0 and hold.fd is not None:
            fcntl.flock(hold.fd, fcntl.LOCK_UN)
            os.close(hold.fd)
            hold.fd = None
        hold.local.release()

    def __getstate__(self) -> dict[str, Any]:  # only the path travels to another process
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])


@dataclass
class _Hold:
    """One process's hold on one lock file."""

    local: Any = field(default_factory=threading.RLock)
    fd: int | None = None
    depth: int = 0


def lock_token(config: RunConfig) -> str:
    """A name shared by every worker of one run (its run directory and name)."""
    return hashlib.sha256(f"{config.resolved_run_dir.resolve()}|{config.name}".encode()).hexdigest()[:16]


def lock_path(token: str) -> Path:
    """The measurement lock of run `token` on this machine."""
    return Path(tempfile.gettempdir()) / f"hadmc-measure-{token}.lock"


# -- what workers build and report ---------------------------------------------------------


def build_worker_evaluator(config: RunConfig, *, worker: int, measurement_lock: Any, model: Any = None, data: Any = None):
    """The evaluator of one worker: `build_evaluator`, with the shared measurement lock."""
    from .evaluation import build_evaluator

    del worker  # every real worker is built alike
    return build_evaluator(config, model=model, data=data, measurement_lock=measurement_lock)


#: Builds one worker's evaluator: ``factory(config, worker=i, measurement_lock=lock, model=, data=)``.
#: Module-level functions (or partials of them) only: it travels to the worker by pickle. The
#: default is `build_worker_evaluator`; tests pass their own (a surrogate, one that crashes).
EvaluatorFactory = Callable[..., Any]


@dataclass
class WorkerSpec:
    """Everything a worker needs to build its evaluator (sent to it once, by pickle).

    :param config_json: the run configuration
    :param factory: see `EvaluatorFactory`
    :param token: the run's `lock_token`
    :param threads: torch threads of the worker (0 until the executor has divided its cores)
    :param shared_store: the worker can reach the run's database (same machine) and shares its
        measurement cache; else it keeps a cache of its own in a temporary folder of its node
    :param model: an `nn.Module` given to the Python API instead of a model name
    :param data: a `DataBundle` given to the Python API instead of a data spec
    """

    config_json: str
    factory: EvaluatorFactory
    token: str
    threads: int
    shared_store: bool = True
    model: Any = None
    data: Any = None


@dataclass
class WorkerInfo:
    """What a ready worker reports: enough for the run to start without an evaluator of its own."""

    worker: int
    node: str
    device: Any
    signature: str
    groups: list
    baselines: dict[str, Evaluation]
    fingerprint: str
    evaluator_name: str


@dataclass
class Task:
    """One plan sent to a worker (`attempt` 2 is the retry after a worker died on it)."""

    ticket: int
    plan: CompressionPlan
    phase: str
    keep: bool = False
    profile: bool = False
    attempt: int = 1


@dataclass
class Done:
    """A finished task: the evaluation (failed, with the reason, when the worker died twice)
    and the ONNX artifact of a final evaluation."""

    ticket: int
    evaluation: Evaluation
    onnx: bytes | None = None
    worker: int = -1


def device_signature(evaluator: Any) -> str:
    """Device id, and the measuring host's processor and GPU: figures are comparable only
    between evaluations of equal signatures."""
    device = evaluator.device
    parts = [str(getattr(device, "id", device))]
    probe = getattr(evaluator, "latency_probe", None)
    if probe is not None and hasattr(probe, "host"):
        try:
            host = probe.host()
            parts += [host.kind, host.cpu_model, host.gpu_name or "", ",".join(host.isa)]
        except Exception as exc:  # a remote probe that is down fails its first measurement anyway
            log.warning("could not read the measuring host (%s); comparing device ids only", exc)
    return "|".join(parts)


class WorkerRuntime:
    """A worker's side (a process or a Ray actor): its evaluator, built once, and its answers."""

    def __init__(self, spec: WorkerSpec, worker: int, node: str | None = None) -> None:
        import torch

        torch.set_num_threads(spec.threads)
        with contextlib.suppress(RuntimeError):  # only settable before any inter-op work
            torch.set_num_interop_threads(1)
        config = RunConfig.model_validate_json(spec.config_json)
        #: the node-local folder of a worker that cannot reach the run's database (its measurement cache)
        self.scratch = None if spec.shared_store else Path(tempfile.gettempdir()) / "hadmc-workers" / spec.token
        if self.scratch is not None:
            config = config.model_copy(update={"run_dir": self.scratch})
        self.worker = worker
        self.node = node or platform.node()
        self.lock = MeasurementLock(lock_path(spec.token))
        self.evaluator = spec.factory(config, worker=worker, measurement_lock=self.lock, model=spec.model, data=spec.data)

    def describe(self) -> WorkerInfo:
        from .run import model_fingerprint

        ev = self.evaluator
        baselines = {p: (ev.baseline_for(p) if hasattr(ev, "baseline_for") else ev.baseline) for p in ("search", "final")}
        return WorkerInfo(
            worker=self.worker,
            node=self.node,
            device=ev.device,
            signature=device_signature(ev),
            groups=list(ev.groups),
            baselines=baselines,
            fingerprint=model_fingerprint(ev.model) if hasattr(ev, "model") else "-",
            evaluator_name=type(ev).__name__,
        )

    def evaluate(self, task: Task) -> Done:
        ev = self.evaluator
        if hasattr(ev, "profile_plans"):
            ev.profile_plans = task.profile
        onnx = None
        try:
            if task.keep and hasattr(ev, "evaluate_with_artifact"):
                evaluation, compressed = ev.evaluate_with_artifact(task.plan, task.phase)
                onnx = compressed.onnx_bytes if compressed is not None else None
            else:
                evaluation = ev.evaluate(task.plan, phase=task.phase)
        except Exception as exc:  # the evaluator should not raise; if it does the run goes on
            log.exception("evaluating plan %s raised", task.plan.key()[:12])
            evaluation = failed_evaluation(task, f"{type(exc).__name__}: {exc}")
        return Done(task.ticket, evaluation.model_copy(update={"node": self.node}), onnx, self.worker)


def failed_evaluation(task: Task, error: str) -> Evaluation:
    return Evaluation(plan_key=task.plan.key(), plan=task.plan.model_dump(mode="json"), phase=task.phase, error=error)  # type: ignore[arg-type]


class PooledEvaluator:
    """What a run needs of an evaluator when the evaluators live in workers: the model's groups,
    the device, the original's figures and the names that key the run's evaluation contexts,
    as the first ready worker reported them."""

    def __init__(self, info: WorkerInfo) -> None:
        self.groups = info.groups
        self.device = info.device
        self.fingerprint = info.fingerprint
        self.evaluator_name = info.evaluator_name
        self._baselines = info.baselines
        #: whether search evaluations carry per-group latency profiles (set by the run, sent with each task)
        self.profile_plans = False

    def baseline_for(self, phase: str) -> Evaluation:
        return self._baselines[phase]

    @property
    def baseline(self) -> Evaluation:
        return self._baselines["final"]


# -- executors -----------------------------------------------------------------------------


class Executor(abc.ABC):
    """Evaluates plans in workers, several at once (see module docstring).

    `submit` never blocks (tasks wait for a free worker in a queue); `wait` blocks until
    something happened (a result, a worker ready, a worker restarted) and returns the results.
    A worker that dies loses its task; the task is retried once on a restarted worker, then
    returned failed with the reason.
    """

    kind = ""
    #: seconds `start` waits for the other workers once the first is ready
    START_GRACE_S = 600.0

    def __init__(self, workers: int, threads: int) -> None:
        self.workers = workers
        self.threads = threads
        self.reference: WorkerInfo | None = None
        self.nodes: set[str] = set()
        self._up: set[int] = set()  # workers that reported ready at least once
        self._queue: deque[Task] = deque()
        self._tickets = 0
        self._pending = 0  # submitted, not yet returned by wait

    # -- subclasses ---------------------------------------------------------------------
    @abc.abstractmethod
    def _idle(self) -> int:
        """Workers ready and without a task."""

    @abc.abstractmethod
    def _send(self, task: Task) -> None:
        """Give `task` to an idle worker."""

    @abc.abstractmethod
    def _poll(self, timeout: float | None) -> list[Done]:
        """Block until an event (see `wait`); results of this round."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop every worker (an in-flight evaluation is abandoned)."""

    # -- shared -------------------------------------------------------------------------
    @property
    def free(self) -> int:
        """Plans that could start now (idle workers not claimed by queued tasks)."""
        return max(0, self._idle() - len(self._queue))

    @property
    def in_flight(self) -> int:
        return self._pending

    def start(self) -> PooledEvaluator:
        """Wait until every worker is ready (each has reported the device it measures on, so a
        run of mixed devices is refused before any figure is taken); the run's facts come from
        the first one's report. Workers that cannot be placed within `START_GRACE_S` of the
        first (a Ray cluster short of CPUs) join later, and are checked when they do."""
        deadline = None
        while len(self._up) < self.workers:
            if self.reference is not None:
                deadline = deadline or time.monotonic() + self.START_GRACE_S
                if time.monotonic() >= deadline:
                    log.warning("%d of %d workers are ready after %.0f s; starting with those", len(self._up), self.workers, self.START_GRACE_S)
                    break
            self._poll(None if deadline is None else max(0.0, deadline - time.monotonic()))
        assert self.reference is not None
        return PooledEvaluator(self.reference)

    def submit(self, plan: CompressionPlan, phase: str, *, keep: bool = False, profile: bool = False) -> int:
        self._tickets += 1
        self._pending += 1
        self._queue.append(Task(self._tickets, plan, phase, keep, profile))
        self._dispatch()
        return self._tickets

    def wait(self, timeout: float | None = None) -> list[Done]:
        """Results that arrived (possibly none: a worker became ready or was restarted)."""
        done = self._poll(timeout)
        self._dispatch()
        self._pending -= len(done)
        return done

    def _dispatch(self) -> None:
        while self._queue and self._idle() > 0:
            self._send(self._queue.popleft())

    def _ready(self, info: WorkerInfo) -> None:
        """A worker reported ready: it must measure on the run's device."""
        if self.reference is None:
            self.reference = info
        elif info.signature != self.reference.signature:
            raise ConfigError(
                f"worker {info.worker} on {info.node} measures on {_describe(info)}, while this run measures on "
                f"{_describe(self.reference)} (worker {self.reference.worker} on {self.reference.node}); latency figures of "
                "different devices are never mixed in one front: run one search per device (e.g. a Ray cluster of one "
                "machine type, or --executor process on the device)"
            )
        self.nodes.add(info.node)
        self._up.add(info.worker)
        log.info("worker %d ready on %s (%s)", info.worker, info.node, info.signature)

    def _died(self, task: Task | None, reason: str, worker: int) -> list[Done]:
        """Worker `worker` died during `task`: the task is retried once, then returned failed."""
        if task is None:
            return []
        if task.attempt == 1:
            log.warning("worker %d died evaluating plan %s (%s); retrying it once", worker, task.plan.key()[:12], reason)
            task.attempt = 2
            self._queue.appendleft(task)
            return []
        log.warning("worker %d died again evaluating plan %s (%s); recorded as failed", worker, task.plan.key()[:12], reason)
        error = f"WorkerDied: the worker evaluating this plan died twice (last: {reason}); the plan was tried twice and is recorded as failed"
        return [Done(task.ticket, failed_evaluation(task, error), worker=worker)]

    def execution(self) -> dict[str, Any]:
        """How this run's plans were evaluated (run meta, pareto.json, the report)."""
        return {
            "executor": self.kind,
            "workers": self.workers,
            "threads_per_worker": self.threads,
            "nodes": sorted(self.nodes),
            "device": self.reference.signature if self.reference else None,
            "latency": LOCKED_LATENCY,
        }


def _describe(info: WorkerInfo) -> str:
    dev_id, *host = info.signature.split("|")
    model = next((h for h in host[1:3][::-1] if h), "")
    return f"device {dev_id}" + (f" ({model})" if model else "")


# -- worker processes ----------------------------------------------------------------------


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel kill this process when the driver dies (Linux), so no orphan keeps
    evaluating (and loading the machine) after a SIGKILL of the run."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent_pid:  # the driver died before the call above
        os._exit(0)


def _process_main(spec: WorkerSpec, conn: Any, worker: int, parent_pid: int) -> None:
    """A worker process: build the evaluator, report, then evaluate tasks until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    _die_with_parent(parent_pid)
    try:
        runtime = WorkerRuntime(spec, worker)
        info = runtime.describe()
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", info))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        done = runtime.evaluate(task)
        try:
            conn.send(("done", done))
        except OSError:
            return


@dataclass
class _Process:
    worker: int
    proc: Any = None
    conn: Any = None
    ready: bool = False
    task: Task | None = None
    starts: int = 0
    info: WorkerInfo | None = field(default=None, repr=False)


class ProcessExecutor(Executor):
    """Worker processes on this machine (spawned, so no parent state is shared).

    :param spec: what each worker builds its evaluator from
    :param workers: number of worker processes
    """

    kind = "process"

    def __init__(self, spec: WorkerSpec, workers: int) -> None:
        import multiprocessing as mp

        super().__init__(workers, spec.threads)
        self.spec = spec
        self._mp = mp.get_context("spawn")
        self._slots = [_Process(i) for i in range(workers)]
        for slot in self._slots:
            self._start(slot)

    def _start(self, slot: _Process) -> None:
        parent, child = self._mp.Pipe()
        slot.proc = self._mp.Process(
            target=_process_main, args=(self.spec, child, slot.worker, os.getpid()), name=f"hadmc-worker-{slot.worker}", daemon=True
        )
        slot.proc.start()
        child.close()
        slot.conn, slot.ready, slot.task = parent, False, None
        slot.starts += 1

    def _idle(self) -> int:
        return sum(1 for s in self._slots if s.ready and s.task is None)

    def _send(self, task: Task) -> None:
        slot = next(s for s in self._slots if s.ready and s.task is None)
        slot.task = task
        try:
            slot.conn.send(task)
        except OSError:  # it died while idle: the sentinel reports it; the task goes back
            pass

    def _poll(self, timeout: float | None) -> list[Done]:
        from multiprocessing.connection import wait

        watch: dict[Any, tuple[_Process, Any]] = {}
        for s in self._slots:
            watch[s.conn] = (s, s.proc)
            watch[s.proc.sentinel] = (s, s.proc)
        done: list[Done] = []
        for obj in wait(list(watch), timeout):
            slot, proc = watch[obj]
            if proc is not slot.proc:  # this process was already found dead and replaced
                continue
            # what it sent before dying counts; then a closed pipe or an exited process is a death
            if not self._receive(slot, done) or not proc.is_alive():
                self._lost(slot, done)
        return done

    def _receive(self, slot: _Process, done: list[Done]) -> bool:
        """Take every message waiting from `slot`; False once its pipe is closed."""
        while True:
            try:
                if not slot.conn.poll():
                    return True
                msg = slot.conn.recv()
            except (EOFError, OSError):
                return False
            kind = msg[0]
            if kind == "ready":
                slot.ready, slot.info = True, msg[1]
                self._ready(msg[1])
            elif kind == "done":
                slot.task = None
                done.append(msg[1])
            elif kind == "failed":
                self.close()
                raise HadmcError(f"worker {slot.worker} could not build its evaluator: {msg[1]}")

    def _lost(self, slot: _Process, done: list[Done]) -> None:
        slot.proc.join(timeout=10)
        if slot.proc.is_alive():  # its pipe broke but it lives on: it cannot be trusted with work
            slot.proc.kill()
            slot.proc.join(timeout=5)
        code = slot.proc.exitcode
        reason = f"killed by {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        with contextlib.suppress(OSError):
            slot.conn.close()
        if not slot.ready and slot.task is None:
            self.close()
            raise HadmcError(f"worker {slot.worker} died while starting ({reason}); run with --workers 1 to see the error")
        done.extend(self._died(slot.task, reason, slot.worker))
        self._start(slot)

    def close(self) -> None:
        for slot in self._slots:
            if slot.conn is not None:
                with contextlib.suppress(OSError):
                    slot.conn.send(None)
        for slot in self._slots:
            if slot.proc is not None:
                slot.proc.join(timeout=2)
                if slot.proc.is_alive():
                    slot.proc.kill()
                    slot.proc.join(timeout=5)
            if slot.conn is not None:
                with contextlib.suppress(OSError):
                    slot.conn.close()
                slot.conn = None


# -- Ray actors ----------------------------------------------------------------------------


def import_ray():
    """Ray, or one clear message naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


class RayWorker:
    """A worker as a Ray actor (the class is wrapped by ``ray.remote`` in `RayExecutor`)."""

    def __init__(self, spec: WorkerSpec, worker: int) -> None:
        import ray

        node = f"ray:{ray.get_runtime_context().get_node_id()[:12]} ({platform.node()})"
        self.error: str | None = None
        try:
            self.runtime = WorkerRuntime(spec, worker, node)
        except Exception as exc:  # told to the driver by `describe`, in the words a process worker uses
            self.error = f"{type(exc).__name__}: {exc}"

    def describe(self) -> WorkerInfo | str:
        """The worker's report, or why it could not build its evaluator."""
        if self.error is not None:
            return self.error
        try:
            return self.runtime.describe()
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"

    def evaluate(self, task: Task) -> Done:
        return self.runtime.evaluate(task)

    def cleanup(self) -> None:
        """Remove the node-local measurement cache (the run is over; its figures are in the run store)."""
        if self.runtime.scratch is not None:
            shutil.rmtree(self.runtime.scratch, ignore_errors=True)


@dataclass
class _Actor:
    worker: int
    handle: Any = None
    ready_ref: Any = None
    task_ref: Any = None
    task: Task | None = None
    ready: bool = False


class RayExecutor(Executor):
    """The same workers as Ray actors on a Ray cluster; results come back to the driver, which
    records them in its run store.

    :param spec: what each actor builds its evaluator from (``shared_store`` is ignored: actors
        keep their measurement cache on their own node)
    :param workers: number of actors
    :param address: the cluster (``auto``, ``HOST:PORT``, ``ray://HOST:PORT``); None joins an
        already initialised Ray, or starts a local one
    """

    kind = "ray"

    def __init__(self, spec: WorkerSpec, workers: int, address: str | None = None) -> None:
        ray = import_ray()
        self._owns_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"the Ray cluster at {address}" if address else "a local Ray instance"
                raise ConfigError(f"cannot start or join {where}: {exc}") from None
            self._owns_ray = True
        threads = spec.threads or max(1, int(ray.cluster_resources().get("CPU", workers)) // workers)
        super().__init__(workers, threads)
        self.ray = ray
        self.spec = dataclasses.replace(spec, threads=threads, shared_store=False)
        self._cls = ray.remote(num_cpus=threads, max_restarts=0, max_task_retries=0)(RayWorker)
        self._actors = [_Actor(i) for i in range(workers)]
        for actor in self._actors:
            self._start(actor)

    def _start(self, actor: _Actor) -> None:
        actor.handle = self._cls.remote(self.spec, actor.worker)
        actor.ready_ref, actor.task_ref, actor.task, actor.ready = actor.handle.describe.remote(), None, None, False

    def _idle(self) -> int:
        return sum(1 for a in self._actors if a.ready and a.task is None)

    def _send(self, task: Task) -> None:
        actor = next(a for a in self._actors if a.ready and a.task is None)
        actor.task, actor.task_ref = task, actor.handle.evaluate.remote(task)

    def _poll(self, timeout: float | None) -> list[Done]:
        ray = self.ray
        refs: dict[Any, _Actor] = {}
        for a in self._actors:
            if a.ready_ref is not None:
                refs[a.ready_ref] = a
            if a.task_ref is not None:
                refs[a.task_ref] = a
        ready, _ = ray.wait(list(refs), num_returns=1, timeout=timeout)
        if ready:  # everything else that is ready too
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=0)
        done: list[Done] = []
        for ref in ready:
            actor = refs[ref]
            starting = ref is actor.ready_ref
            try:
                value = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._lost(actor, _first_line(exc), done, starting)
                continue
            except ray.exceptions.RayTaskError as exc:
                if starting:
                    self.close()
                    raise HadmcError(f"worker {actor.worker} could not build its evaluator: {_first_line(exc)}") from None
                task, actor.task, actor.task_ref = actor.task, None, None
                assert task is not None
                done.append(Done(task.ticket, failed_evaluation(task, f"WorkerError: {_first_line(exc)}"), worker=actor.worker))
                continue
            if starting and isinstance(value, str):
                self.close()
                raise HadmcError(f"worker {actor.worker} could not build its evaluator: {value}")
            if starting:
                actor.ready_ref, actor.ready = None, True
                self._ready(value)
            else:
                actor.task, actor.task_ref = None, None
                done.append(value)
        return done

    def _lost(self, actor: _Actor, reason: str, done: list[Done], starting: bool) -> None:
        if starting:
            self.close()
            raise HadmcError(f"worker {actor.worker} died while starting ({reason})")
        with contextlib.suppress(Exception):
            self.ray.kill(actor.handle)
        done.extend(self._died(actor.task, f"the actor died: {reason}", actor.worker))
        self._start(actor)

    def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: a dead or busy actor keeps its cache
            refs = [a.handle.cleanup.remote() for a in self._actors if a.handle is not None and a.ready and a.task is None]
            if refs:
                self.ray.wait(refs, num_returns=len(refs), timeout=10)
        for a in self._actors:
            if a.handle is not None:
                with contextlib.suppress(Exception):
                    self.ray.kill(a.handle)
                a.handle = None
        if self._owns_ray:
            self.ray.shutdown()
            self._owns_ray = False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


# -- construction --------------------------------------------------------------------------


def start_executor(
    config: RunConfig, *, factory: EvaluatorFactory | None = None, model: Any = None, data: Any = None
) -> Executor:
    """The executor `config.execution` asks for, with its workers starting."""
    ex = config.execution
    spec = WorkerSpec(
        config_json=config.model_dump_json(),
        factory=factory or build_worker_evaluator,
        token=lock_token(config),
        threads=ex.threads_per_worker or 0,  # 0: the executor divides the cores it has among the workers
        model=model,
        data=data,
    )
    if ex.executor == "ray":
        return RayExecutor(spec, ex.workers, ex.address)
    spec.threads = spec.threads or max(1, _cores() // ex.workers)
    _check_picklable(spec)
    return ProcessExecutor(spec, ex.workers)


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _check_picklable(spec: WorkerSpec) -> None:
    import pickle

    for what in ("factory", "model", "data"):
        try:
            pickle.dumps(getattr(spec, what))
        except Exception as exc:
            raise ConfigError(
                f"the {what} of this run cannot be sent to worker processes ({type(exc).__name__}: {exc}); "
                "use workers=1, or a model and data given by name"
            ) from None


__all__ = [
    "LOCKED_LATENCY",
    "Done",
    "Executor",
    "MeasurementLock",
    "PooledEvaluator",
    "ProcessExecutor",
    "RayExecutor",
    "Task",
    "WorkerInfo",
    "WorkerRuntime",
    "WorkerSpec",
    "build_worker_evaluator",
    "device_signature",
    "import_ray",
    "start_executor",
]
