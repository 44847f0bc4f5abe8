"""The probe server's device work (measurements, energy windows, inferences) runs in a child
process, so a request that runs past its limit is really ended: the child is killed and the
device is free for the next request at once.

The child works from an empty private directory: a runtime that resolves a relative file
reference of a model (external data) finds nothing there, whatever got past the checks.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np

from hadmc.errors import HadmcError, ProbeError

from .device import DeviceSpec

log = logging.getLogger(__name__)


class MeasurementTimeout(ProbeError):
    """The work ran past the server's per-request limit and was stopped."""


class MeasurementWorker:
    """A child process that runs one piece of device work at a time.

    :param backend: latency probe name used on this device (``ort-cpu``, ``tensorrt``...)
    :param spec: the DeviceSpec of this device
    :param sandbox: an empty private directory the child works in
    """

    #: seconds a new child may take to import its runtime before it counts as failed; not
    #: part of any request's time limit
    STARTUP_S = 120.0

    def __init__(self, backend: str, spec: DeviceSpec, sandbox: str | Path):
        self.backend = backend
        self.spec = spec
        self.sandbox = Path(sandbox)
        self._ctx = multiprocessing.get_context("spawn")  # no inherited threads, CUDA-safe
        self._proc: Any = None
        self._conn: Any = None
        self._ready = False

    def start(self) -> None:
        """Start the child (returns at once; it imports its modules in the background)."""
        parent, child = self._ctx.Pipe()
        self._proc = self._ctx.Process(
            target=serve_requests,
            args=(child, self.backend, self.spec.model_dump(), str(self.sandbox)),
            name="hadmc-probe-worker",
            daemon=True,
        )
        self._proc.start()
        child.close()
        self._conn = parent
        self._ready = False

    def _wait_ready(self) -> None:
        """Wait for the child's imports (outside the request's limit: a restart after a
        stopped request must not eat the next request's time)."""
        if self._ready:
            return
        if not self._conn.poll(self.STARTUP_S):
            self.stop()
            raise ProbeError(f"the measurement process did not start within {self.STARTUP_S:g} s")
        try:
            status, _ = self._conn.recv()
        except (EOFError, OSError) as exc:
            self.stop()
            raise ProbeError("the measurement process failed to start (see the server's log)") from exc
        self._ready = status == "ready"

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def call(self, op: str, timeout_s: float, **kwargs: Any) -> Any:
        """Run ``op`` in the child and return its result.

        :raises MeasurementTimeout: after ``timeout_s`` seconds; the child is killed first
        :raises ProbeError: the work failed (bad model or input), or the child died
        """
        if not self.alive:
            self.stop()
            self.start()
        self._wait_ready()
        try:
            self._conn.send((op, kwargs))
        except (BrokenPipeError, OSError) as exc:
            self.stop()
            raise ProbeError(f"the measurement process was not reachable ({exc}); retry the request") from exc
        if not self._conn.poll(timeout_s):
            self.stop()
            raise MeasurementTimeout(f"the request exceeded the server's {timeout_s:g} s limit and was stopped; lower min_seconds or min_iterations")
        try:
            status, payload = self._conn.recv()
        except (EOFError, OSError) as exc:
            code = self._proc.exitcode if self._proc is not None else None
            self.stop()
            raise ProbeError(f"the measurement process ended unexpectedly (exit code {code}; out of memory?); the next request starts a new one") from exc
        if status == "ok":
            return payload
        raise ProbeError(payload)

    def stop(self) -> None:
        """Kill the child (if any) and wait for it; the next call starts a new one."""
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(10)
            self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# ---------------------------------------------------------------- the child


class _DeviceWork:
    """What the child can do, one method per request kind."""

    def __init__(self, backend: str, spec: DeviceSpec):
        self.backend = backend
        self.spec = spec
        self._session: tuple[str, Any] | None = None  # one resident inference session

    def _probe(self, **settings: Any):
        from .latency import get_latency_probe

        return get_latency_probe(self.backend, device=self.spec, **settings)

    @staticmethod
    def _read(path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except FileNotFoundError:
            raise ProbeError("the model left the store (quota eviction) while the request waited; upload it again") from None

    def measure(
        self,
        path: str,
        settings: dict[str, Any],
        input_shape: list[int] | None,
        energy: bool,
        reference_path: str | None = None,
        relative_options: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        from .host import device_state, versions
        from .measure import measure_latency_and_energy

        data = self._read(path)
        reference = self._read(reference_path) if reference_path else None
        probe = self._probe(**settings)
        before = device_state()
        shape = tuple(input_shape) if input_shape else None
        m = measure_latency_and_energy(
            probe,
            data,
            probe.energy_probe("auto") if energy else None,
            input_shape=shape,
            reference=reference,
            relative_options=relative_options,
        )
        m.latency.meta.update({"state_before": before, "state_after": device_state(), "versions": versions()})
        return {
            "latency": m.latency.model_dump(),
            "energy": m.energy.model_dump() if m.energy else None,
            "relative": m.relative.model_dump() if m.relative else None,  # its candidate is m.latency
        }

    def energy(self, path: str, latency: dict[str, Any], probe: str, window_s: float | None) -> dict[str, Any]:
        from .measure import lazy_runner
        from .results import LatencyResult

        result = LatencyResult.model_validate(latency)
        latency_probe = self._probe(threads=result.threads or 1)
        energy_probe = latency_probe.energy_probe(probe, **({"window_s": window_s} if window_s else {}))
        runner = lazy_runner(latency_probe, self._read(path), tuple(result.input_shape))
        return energy_probe.measure(runner, result).model_dump()

    def infer(self, sha: str, path: str, batch: np.ndarray) -> np.ndarray:
        if self._session is None or self._session[0] != sha:
            self._session = None  # keep one model's session resident, not every model ever sent
            self._session = (sha, self._probe().session(self._read(path)))
        session = self._session[1]
        spec = session.inputs[0]
        if batch.ndim != len(spec.shape):
            raise ProbeError(f"batch has rank {batch.ndim}, the model input {spec.name!r} expects rank {len(spec.shape)} (shape {list(spec.shape)})")
        fixed = [(i, d) for i, d in enumerate(spec.shape) if i > 0 and d > 1]
        if any(batch.shape[i] != d for i, d in fixed):
            raise ProbeError(f"batch has shape {list(batch.shape)}, the model input {spec.name!r} expects {['N', *spec.shape[1:]]}")
        try:
            return np.asarray(session.run(batch))
        except HadmcError:
            raise
        except Exception as exc:  # the runtime's own error types: the model failed on this input
            raise ProbeError(f"the model failed on this input: {type(exc).__name__}: {str(exc)[:300]}") from exc


def serve_requests(conn: Any, backend: str, spec_data: dict[str, Any], sandbox: str) -> None:
    """The child's loop: one ``(op, kwargs)`` in, one ``("ok", result)`` or ``("error", message)`` out."""
    os.chdir(sandbox)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the server's to handle
    work = _DeviceWork(backend, DeviceSpec.model_validate(spec_data))
    ops = {"measure": work.measure, "energy": work.energy, "infer": work.infer}
    from . import measure  # noqa: F401  (the runtime imports happen now, before the first request)

    work._probe()  # opens nothing; imports the backend (ONNX Runtime...) and checks it is there
    conn.send(("ready", None))
    while True:
        try:
            op, kwargs = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", ops[op](**kwargs)))
        except HadmcError as exc:
            conn.send(("error", str(exc)))
        except Exception as exc:  # anything a model can make a runtime raise is the request's fault
            log.debug("device work %s failed", op, exc_info=True)
            conn.send(("error", f"{op} failed on the device: {type(exc).__name__}: {str(exc)[:300]}"))
