"""The remote probe server (``hadmc probe serve``): runs on the edge device, reachable over
the network, and measures models that clients upload.

Endpoints:

- ``GET  /health``                   liveness, no auth
- ``GET  /device``                   DeviceSpec, device id, host, versions, clocks, limits
- ``PUT  /models/{sha256}``          upload ONNX bytes (stored under their SHA-256, verified)
- ``GET  /models/{sha256}``          200 if stored, 404 if not
- ``GET  /models/{sha256}/manifest`` per-initializer SHA-256 block hashes (for delta updates)
- ``POST /models/{sha256}/delta``    build a new model from a stored one plus changed blocks
- ``POST /measure``                  upload + measure in one request (raw ONNX body)
- ``POST /measure/{sha256}``         measure a stored model (``?reference=SHA``: against another
                                     stored model in alternating blocks, ratio and spread)
- ``POST /energy/{sha256}``          energy per inference of a stored model (body: its latency result)
- ``POST /infer/{sha256}``           ``.npy`` batch in, ``.npy`` logits out (accuracy on device)

Security (an authenticated client is trusted with measurements, nothing more):

- a bearer token compared in constant time; wrong tokens are limited per client address
  (429 once exceeded); a non-loopback bind without a token is refused;
- only self-contained ONNX is accepted: external data is refused in every tensor of the model
  (initializers, sparse initializers, node attributes, subgraphs, functions), before
  ``onnx.checker`` runs; ``.npy`` is read with ``allow_pickle=False`` after its header is checked;
- device work runs in a child process working in an empty private directory; a request that
  runs past the limit is ended by killing the child (504) and the device is free at once;
- every measurement setting is validated (finite, bounded), as are input shapes, batches and
  delta updates (block size lower bound, sizes bounded by the upload limit);
- uploads are size-limited (413), the model store has a quota with least-recently-used
  eviction, a request head or body that arrives too slowly is dropped, and interactive API
  docs are off unless asked for.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request)
# at runtime, and those names are imported inside create_app.
import asyncio
import hmac
import io
import logging
import math
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from hadmc.errors import ConfigError, ProbeError
from hadmc.files import finite_number

from .artifact import sha256_hex, validate_onnx
from .auth import AuthFailureLimiter, is_loopback, resolve_token
from .delta import apply_delta, initializer_manifest, parse_delta
from .device import DeviceSpec, load_device_spec
from .host import describe_host, device_state, versions
from .latency import LATENCY_PROBES, get_latency_probe
from .probe_worker import MeasurementTimeout, MeasurementWorker
from .results import LatencyResult

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
#: bounds of what one request may ask the device to do
MAX_RANK = 8
MAX_DIM = 1 << 16
MAX_INPUT_ELEMENTS = 1 << 26  # 64 Mi values: 256 MiB of float32
MAX_BATCH = 1024


# ---------------------------------------------------------------- request settings


def _shape(value: Any) -> tuple[int, ...] | None:
    """``"1,3,224,224"`` (or a sequence) as a bounded shape."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    if not 1 <= len(parts) <= MAX_RANK:
        raise ValueError(f"needs 1 to {MAX_RANK} dimensions, e.g. 1,3,224,224")
    try:
        shape = tuple(int(str(p).strip()) for p in parts)
    except ValueError:
        raise ValueError("must be integers separated by commas, e.g. 1,3,224,224") from None
    if min(shape) < 1 or max(shape) > MAX_DIM:
        raise ValueError(f"each dimension must lie in 1..{MAX_DIM}")
    if shape[0] > MAX_BATCH:
        raise ValueError(f"batch (first dimension) must be at most {MAX_BATCH}")
    if math.prod(shape) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"holds {math.prod(shape)} values, more than the {MAX_INPUT_ELEMENTS} allowed")
    return shape


class MeasureSettings(BaseModel):
    """The settings a measurement request may give (query parameters), each bounded."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    threads: int = Field(1, ge=1, le=1024)
    warmup_runs: int = Field(10, ge=0, le=10_000)
    warmup_s: float = Field(0.2, ge=0.0, le=60.0)
    min_iterations: int = Field(100, ge=1, le=100_000)
    min_seconds: float = Field(1.0, ge=0.0, le=600.0)
    input_shape: tuple[int, ...] | None = None
    energy: bool = False
    reference: str | None = Field(None, pattern=r"^[0-9a-f]{64}$", description="a stored model to time against in alternating blocks")
    max_spread: float | None = Field(None, ge=0.001, le=1.0)
    max_rounds: int | None = Field(None, ge=1, le=20)
    block_s: float | None = Field(None, ge=0.001, le=1.0)
    min_pairs: int | None = Field(None, ge=2, le=10_000)

    @field_validator("input_shape", mode="before")
    @classmethod
    def _input_shape(cls, value: Any) -> tuple[int, ...] | None:
        return _shape(value)

    @field_validator("threads")
    @classmethod
    def _threads(cls, value: int) -> int:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if value > cores:
            raise ValueError(f"must be at most the {cores} CPUs this server may use")
        return value

    def timing(self) -> dict[str, Any]:
        return self.model_dump(include={"threads", "warmup_runs", "warmup_s", "min_iterations", "min_seconds"})

    def relative_options(self) -> dict[str, Any]:
        return self.model_dump(include={"max_spread", "max_rounds", "block_s", "min_pairs"}, exclude_none=True)


class EnergySettings(BaseModel):
    """Query parameters of an energy request."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    probe: str = Field("auto", pattern=r"^(auto|estimated|rapl|nvml|jetson)$")
    window_s: float | None = Field(None, ge=0.1, le=60.0)


def _validated(model: type[BaseModel], items: list[tuple[str, str]]):
    """``model`` from query items; a repeated key or an invalid value is a ProbeError (400)."""
    keys = [k for k, _ in items]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ProbeError(f"query parameter(s) given more than once: {', '.join(repeated)}")
    try:
        return model.model_validate(dict(items))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'query'}: {e['msg']}" for e in exc.errors()[:5])
        raise ProbeError(f"invalid request settings: {problems}") from None


def load_npy(body: bytes, max_elements: int = MAX_INPUT_ELEMENTS) -> np.ndarray:
    """A numeric array from ``.npy`` bytes; the header is checked against the body's length
    before anything is allocated, and pickled objects are refused."""
    fmt = np.lib.format
    buf = io.BytesIO(body)
    try:
        version = fmt.read_magic(buf)
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = reader(buf)
    except Exception as exc:  # ValueError of a bad magic or header, EOF
        raise ProbeError(f"body must be a .npy array (np.save, no pickle): {type(exc).__name__}") from None
    if dtype.kind not in "biuf":
        raise ProbeError(f"the batch must hold numbers, got dtype {dtype}")
    count = math.prod(shape)
    if count > max_elements or count * dtype.itemsize != len(body) - buf.tell():
        raise ProbeError(f"the .npy header says shape {list(shape)} of {dtype}, which does not match the {len(body)}-byte body")
    if not shape or shape[0] > MAX_BATCH:
        raise ProbeError(f"the batch must have a first (batch) dimension of at most {MAX_BATCH}")
    return np.load(io.BytesIO(body), allow_pickle=False)


# ---------------------------------------------------------------- model store


class StoreQuotaError(ProbeError):
    """A model larger than the whole store quota (HTTP 413)."""


class ModelStore:
    """ONNX models on disk under their SHA-256, within a quota: when a new model would pass
    it, the least recently used models are removed.

    :param root: folder of the store
    :param quota_bytes: most bytes the stored models may take together
    """

    def __init__(self, root: str | Path, quota_bytes: int = 2 << 30):
        if quota_bytes < 1:
            raise ConfigError(f"the model store quota must be positive, got {quota_bytes} bytes")
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the model store {self.root}: {exc.strerror}") from None
        self.quota_bytes = int(quota_bytes)
        self._lock = threading.Lock()
        for stale in self.root.glob("*.tmp*"):  # a write that a crash interrupted
            stale.unlink(missing_ok=True)

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ProbeError(f"model id must be a lowercase hex SHA-256, got {sha[:80]!r}")
        return self.root / f"{sha}.onnx"

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def use(self, sha: str) -> Path:
        """Path of a stored model, marked as just used (it is evicted last)."""
        p = self.path(sha)
        with self._lock:
            if not p.is_file():
                raise FileNotFoundError(sha)
            os.utime(p)
        return p

    def get(self, sha: str) -> bytes:
        return self.use(sha).read_bytes()

    def used_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.glob("*.onnx"))

    def put(self, data: bytes) -> str:
        """Store ``data`` (atomically: a reader never sees half a model) and evict the least
        recently used others while the store is over its quota."""
        if len(data) > self.quota_bytes:
            raise StoreQuotaError(f"a model of {len(data)} bytes does not fit the store quota of {self.quota_bytes} bytes")
        sha = sha256_hex(data)
        p = self.path(sha)
        with self._lock:
            if p.is_file():
                os.utime(p)
                return sha
            tmp = p.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
            try:
                tmp.write_bytes(data)
                tmp.replace(p)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise ProbeError(f"the device cannot store the model: {exc.strerror}") from None
            models = sorted(self.root.glob("*.onnx"), key=lambda q: q.stat().st_mtime)
            total = sum(q.stat().st_size for q in models)
            for old in models:
                if total <= self.quota_bytes:
                    break
                if old != p:
                    total -= old.stat().st_size
                    old.unlink(missing_ok=True)
                    log.info("model store over quota: evicted %s", old.name)
        return sha


# ---------------------------------------------------------------- the app


def create_app(
    token: str | None = None,
    device: DeviceSpec | str = "local-cpu",
    backend: str = "ort-cpu",
    store_dir: str | Path | None = None,
    max_bytes: int = 256 * 1024 * 1024,
    store_quota_bytes: int = 2 << 30,
    timeout_s: float = 300.0,
    queue_wait_s: float = 0.0,
    body_timeout_s: float = 60.0,
    auth_failures: int = 10,
    auth_window_s: float = 60.0,
    docs: bool = False,
):
    """The probe server's FastAPI app.

    :param token: bearer token; None disables auth (allowed only on loopback by ``serve``)
    :param device: DeviceSpec (or its name) of this device
    :param backend: local latency probe used for measurements (``ort-cpu``, ``tensorrt``...)
    :param store_dir: folder of the model store (default ``~/.cache/hadmc/probe-models``)
    :param max_bytes: largest accepted upload (413 above)
    :param store_quota_bytes: most bytes the model store keeps (least recently used evicted)
    :param timeout_s: per-request limit of device work; the work is stopped there (504)
    :param queue_wait_s: how long a request waits for running device work before 429
    :param body_timeout_s: how long a request body may take to arrive (408 after)
    :param auth_failures: wrong tokens per client address and ``auth_window_s`` before 429
    :param auth_window_s: window of the wrong-token limit in seconds
    :param docs: serve interactive API docs at ``/docs``
    """
    from fastapi import Depends, FastAPI, HTTPException, Request, Response
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import ClientDisconnect

    for name, value in (("max_bytes", max_bytes), ("timeout_s", timeout_s), ("body_timeout_s", body_timeout_s)):
        if not (finite_number(value) and value > 0):
            raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    spec = device if isinstance(device, DeviceSpec) else load_device_spec(device)
    probe_cls = LATENCY_PROBES.get(backend) if not backend.startswith("remote") else None
    if probe_cls is None:
        raise ConfigError("the probe server measures with a local backend (ort-cpu, ort-cuda, ort-trt, tensorrt), not remote")
    get_latency_probe(backend, device=spec)  # a backend that cannot run here fails now, not per request
    store = ModelStore(store_dir or Path.home() / ".cache" / "hadmc" / "probe-models", store_quota_bytes)
    sandbox = tempfile.mkdtemp(prefix="hadmc-probe-sandbox-")
    worker = MeasurementWorker(backend, spec, sandbox)
    busy = threading.Lock()
    limiter = AuthFailureLimiter(auth_failures, auth_window_s)
    token_bytes = token.encode() if token else None
    host_kind = probe_cls.measures_on
    max_seconds = max(1.0, 0.8 * timeout_s)

    @asynccontextmanager
    async def lifespan(app):
        worker.start()  # imports in the background while the first request is on its way
        try:
            yield
        finally:
            worker.stop()
            shutil.rmtree(sandbox, ignore_errors=True)

    app = FastAPI(
        title="HAD-MC probe",
        version="2.0",
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url=None,
        openapi_url="/openapi.json" if docs else None,
    )

    def check_auth(request: Request) -> None:
        if token_bytes is None:
            return
        client = request.client.host if request.client else "unknown"
        wait = limiter.retry_after(client)
        if wait > 0:
            raise HTTPException(429, "too many wrong tokens from this address; wait and check the token", headers={"Retry-After": str(math.ceil(wait))})
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # compare_digest on equal-type bytes: timing does not reveal how much of the token matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode("utf-8", "replace"), token_bytes):
            limiter.failed(client)
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request, limit: int = max_bytes) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and not length.isdigit():
            raise HTTPException(400, "Content-Length must be a number of bytes")
        if length is not None and int(length) > limit:
            raise HTTPException(413, f"upload of {int(length)} bytes exceeds the {limit}-byte limit")

        async def collect() -> bytes:
            chunks, size = [], 0
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"upload exceeds the {limit}-byte limit")
                chunks.append(chunk)
            return b"".join(chunks)

        try:
            return await asyncio.wait_for(collect(), body_timeout_s)
        except asyncio.TimeoutError:
            raise HTTPException(408, f"the request body did not arrive within {body_timeout_s:g} s") from None
        except ClientDisconnect:
            raise HTTPException(400, "the client disconnected before sending the whole body") from None

    async def checked_store(data: bytes) -> str:
        await run_in_threadpool(validate_onnx, data)
        return await run_in_threadpool(store.put, data)

    def stored(sha: str) -> Path:
        try:
            return store.use(sha)
        except FileNotFoundError:
            raise HTTPException(404, f"model {sha} is not stored here; upload it first") from None

    async def on_device(op: str, **kwargs: Any) -> Any:
        """Run device work in the worker while holding the device; 429 if busy, 504 past the limit."""
        deadline = time.monotonic() + queue_wait_s
        while not busy.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise HTTPException(429, "a measurement is running; retry later", headers={"Retry-After": "1"})
            await asyncio.sleep(0.05)

        def guarded() -> Any:
            try:
                return worker.call(op, timeout_s, **kwargs)
            finally:
                busy.release()  # when the work really ends (the worker is killed at the limit)

        fut = asyncio.get_running_loop().run_in_executor(None, guarded)
        try:
            return await asyncio.shield(fut)
        except MeasurementTimeout as exc:
            raise HTTPException(504, str(exc)) from None

    auth = [Depends(check_auth)]

    @app.exception_handler(ProbeError)
    async def _probe_error(request: Request, exc: ProbeError):
        return JSONResponse({"detail": str(exc)}, status_code=413 if isinstance(exc, StoreQuotaError) else 400)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/device", dependencies=auth)
    async def device_info() -> dict[str, Any]:
        return {
            "spec": spec.model_dump(),
            "device_id": spec.id,
            "backend": backend,
            "host": describe_host(host_kind).model_dump(),
            "versions": versions(),
            "limits": {"max_bytes": max_bytes, "timeout_s": timeout_s, "store_quota_bytes": store.quota_bytes},
            **device_state(),
        }

    @app.put("/models/{sha}", dependencies=auth, status_code=201)
    async def upload(sha: str, request: Request) -> dict[str, str]:
        store.path(sha)
        data = await read_body(request)
        if sha256_hex(data) != sha:
            raise HTTPException(400, "uploaded bytes do not match the SHA-256 in the URL")
        return {"sha256": await checked_store(data)}

    @app.get("/models/{sha}", dependencies=auth)
    async def has_model(sha: str) -> dict[str, Any]:
        stored(sha)
        return {"sha256": sha, "stored": True}

    @app.get("/models/{sha}/manifest", dependencies=auth)
    async def manifest(sha: str) -> dict[str, Any]:
        return await run_in_threadpool(initializer_manifest, stored(sha).read_bytes())

    @app.post("/models/{sha}/delta", dependencies=auth, status_code=201)
    async def delta(sha: str, request: Request) -> dict[str, str]:
        base = stored(sha).read_bytes()
        payload = parse_delta(await read_body(request, 2 * max_bytes + 65536), max_bytes)
        data = await run_in_threadpool(apply_delta, base, payload, max_bytes)
        return {"sha256": await checked_store(data)}

    async def measure(path: Path, settings: MeasureSettings) -> dict[str, Any]:
        return await on_device(
            "measure",
            path=str(path),
            settings={**settings.timing(), "max_seconds": max_seconds},
            input_shape=list(settings.input_shape) if settings.input_shape else None,
            energy=settings.energy,
            reference_path=str(stored(settings.reference)) if settings.reference else None,
            relative_options=settings.relative_options(),
        )

    @app.post("/measure", dependencies=auth)
    async def measure_upload(request: Request) -> dict[str, Any]:
        settings = _validated(MeasureSettings, request.query_params.multi_items())
        sha = await checked_store(await read_body(request))
        return await measure(stored(sha), settings)

    @app.post("/measure/{sha}", dependencies=auth)
    async def measure_stored(sha: str, request: Request) -> dict[str, Any]:
        settings = _validated(MeasureSettings, request.query_params.multi_items())
        return await measure(stored(sha), settings)

    @app.post("/energy/{sha}", dependencies=auth)
    async def energy(sha: str, request: Request) -> dict[str, Any]:
        settings = _validated(EnergySettings, request.query_params.multi_items())
        path = stored(sha)
        try:
            latency = LatencyResult.model_validate_json(await read_body(request, 16 << 20))
        except ValidationError as exc:
            raise HTTPException(400, f"body must be the latency result of this model: {exc.errors()[0]['msg']}") from None
        if latency.onnx_sha256 != sha or not latency.input_shape:
            raise HTTPException(400, "the body must be the latency result of this model, input shape included")
        # the energy window runs with the threads and input shape of that result: bounded alike
        _validated(MeasureSettings, [("threads", str(latency.threads or 1)), ("input_shape", ",".join(map(str, latency.input_shape)))])
        return await on_device("energy", path=str(path), latency=latency.model_dump(), probe=settings.probe, window_s=settings.window_s)

    @app.post("/infer/{sha}", dependencies=auth)
    async def infer(sha: str, request: Request) -> Response:
        path = stored(sha)
        batch = load_npy(await read_body(request))
        logits = await on_device("infer", sha=sha, path=str(path), batch=batch)
        out = io.BytesIO()
        np.save(out, logits, allow_pickle=False)
        return Response(out.getvalue(), media_type="application/octet-stream")

    return app


# ---------------------------------------------------------------- serving


def client_timeout_protocol(head_timeout_s: float):
    """uvicorn's h11 protocol, closing a connection whose request head does not arrive within
    ``head_timeout_s`` seconds of connecting or of the previous response (slow or idle
    clients would otherwise hold connections open for ever)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class ClientTimeoutProtocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_cycle: Any = None

        def _arm(self) -> None:
            self._disarm()
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(head_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _expire(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                log.info("closing a connection whose request head did not arrive within %.0f s", head_timeout_s)
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._head_cycle:  # a request head was parsed
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return ClientTimeoutProtocol


def describe_listen(host: str, port: int, token_source: str, docs: bool) -> str:
    """The start-up banner: what is reachable, and how it is protected."""
    if is_loopback(host):
        reach = "this machine only"
    elif host in ("0.0.0.0", "::", ""):
        reach = "every network interface"
    else:
        reach = f"the network at {host}"
    auth = f"bearer token from {token_source}" if token_source != "none" else "off (allowed on loopback only)"
    shown = f"[{host}]" if ":" in host else host
    return f"probe server on http://{shown}:{port} (reachable from {reach}); auth: {auth}; API docs: {'/docs' if docs else 'off'}"


def _check_bindable(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"cannot resolve --host {host!r}: {exc.strerror or exc}") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; choose another --port or --host") from None


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token_file: str | Path | None = None,
    head_timeout_s: float = 10.0,
    max_connections: int = 64,
    on_ready: Callable[[str], None] | None = None,
    **app_settings: Any,
) -> None:
    """Run the probe server (blocks). Refuses a non-loopback bind without a token.

    :param host: address to bind
    :param port: TCP port
    :param token_file: file holding the bearer token (else ``$HADMC_PROBE_TOKEN``; 16+ characters either way)
    :param head_timeout_s: a connection whose request head does not arrive within this is closed
    :param max_connections: concurrent connections at most (503 beyond)
    :param on_ready: told the start-up banner once everything is checked, before serving
    :param app_settings: passed to ``create_app`` (device, backend, store_dir, max_bytes, docs...)
    """
    import uvicorn

    if not 0 < int(port) < 65536:
        raise ConfigError(f"port must be in 1..65535, got {port}")
    token, source = resolve_token(token_file)
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"refusing to bind {host} without a token: pass --token-file or set $HADMC_PROBE_TOKEN "
            "(the probe runs models on this device)"
        )
    _check_bindable(host, port)
    app = create_app(token=token, **app_settings)
    banner = describe_listen(host, port, source, bool(app_settings.get("docs")))
    log.info(banner)
    if on_ready is not None:
        on_ready(banner)
    uvicorn.run(
        app,
        host=host,
        port=port,
        http=client_timeout_protocol(head_timeout_s),
        timeout_keep_alive=5,
        limit_concurrency=max_connections,
        log_level="warning",
        server_header=False,
    )
