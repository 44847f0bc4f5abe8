"""Remote hardware-in-the-loop probe: a small HTTP server on the edge device, and the
``remote://host:port`` latency probe that talks to it.

Server (``hadmc probe serve``, FastAPI + uvicorn):

- ``GET  /health``                  liveness, no auth
- ``GET  /device``                  DeviceSpec, device id, versions, clocks, temperature
- ``PUT  /models/{sha256}``         upload ONNX bytes (stored under their SHA-256, verified)
- ``GET  /models/{sha256}``         200 if stored, 404 if not
- ``GET  /models/{sha256}/manifest`` per-initializer SHA-256 block hashes (for delta updates)
- ``POST /models/{sha256}/delta``   build a new model from a stored one plus changed blocks
- ``POST /measure``                 upload + measure in one request (raw ONNX body)
- ``POST /measure/{sha256}``        measure a stored model
- ``POST /infer/{sha256}``          ``.npy`` batch in, ``.npy`` logits out (accuracy on device)

Security: a bearer token compared in constant time (``hmac.compare_digest``); binding a
non-loopback address without a token is refused; only ONNX is accepted (no pickle, ``.npy``
loads with ``allow_pickle=False``); ``onnx.checker`` runs before any session; models with
external-data references are refused (they would read files on the device); an upload size
limit (413); a per-request timeout (504); one measurement at a time (429 with Retry-After).
"""


import asyncio
import hashlib
import hmac
import io
import ipaddress
import logging
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from hadmc.errors import ConfigError, ProbeError

from .artifact import InputSpec, ModelLike, graph_inputs, model_bytes, sha256_hex
from .device import DeviceSpec, load_device_spec
from .energy import EnergyProbe, EnergyResult
from .latency import LatencyProbe, LatencyResult, RuntimeSession, get_latency_probe
from .measure import lazy_runner, measure_latency_and_energy

log = logging.getLogger(__name__)

DEFAULT_PORT = 8765
#: bytes per block of the initializer delta protocol
DELTA_BLOCK = 1 << 20


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token_file(path: str | Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc}") from exc
    if len(token) < 16:
        raise ConfigError(f"token in {path} is too short ({len(token)} chars); use at least 16 random characters")
    return token


def versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    import hadmc

    return {
        "hadmc": hadmc.__version__,
        "python": platform.python_version(),
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
    }


def device_state() -> dict[str, Any]:
    """Clocks and temperatures as the OS reports them (empty where it reports none)."""
    state: dict[str, Any] = {"clocks_mhz": {}, "temperature_c": {}}
    try:
        import psutil

        freq = psutil.cpu_freq()
        if freq:
            state["clocks_mhz"]["cpu"] = round(freq.current, 1)
        temps = getattr(psutil, "sensors_temperatures", lambda: {})() or {}
        for chip, entries in temps.items():
            for i, entry in enumerate(entries):
                state["temperature_c"][f"{chip}/{entry.label or i}"] = entry.current
        state["load_avg"] = list(os.getloadavg())
    except Exception as exc:  # sensors are best effort; the measurement does not depend on them
        log.debug("device state unavailable: %s", exc)
    return state


# ---------------------------------------------------------------- ONNX validation + delta


def validate_onnx(data: bytes):
    """Parse and check ONNX bytes; ProbeError (-> HTTP 400) when they are not a valid model."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:
        raise ProbeError(f"not a valid ONNX model: {exc}") from exc
    if not model.graph.node:
        raise ProbeError("not a valid ONNX model: the graph has no nodes")
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise ProbeError(f"initializer {init.name!r} references external data; send a self-contained model")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # ValidationError
        raise ProbeError(f"ONNX checker rejected the model: {exc}") from exc
    return model


def _raw(init) -> bytes:
    from onnx import numpy_helper

    if init.raw_data:
        return bytes(init.raw_data)
    return numpy_helper.to_array(init).tobytes()


def initializer_manifest(data: bytes, block: int = DELTA_BLOCK) -> dict[str, Any]:
    """Per-initializer SHA-256 of each ``block``-byte slice of its raw data."""
    import onnx

    model = onnx.load_model_from_string(data)
    tensors = {}
    for init in model.graph.initializer:
        raw = _raw(init)
        tensors[init.name] = {
            "size": len(raw),
            "blocks": [hashlib.sha256(raw[i : i + block]).hexdigest() for i in range(0, max(len(raw), 1), block)],
        }
    return {"sha256": sha256_hex(data), "block": block, "tensors": tensors}


def make_delta(new_data: bytes, base_manifest: dict[str, Any]) -> dict[str, Any]:
    """What the device needs to rebuild ``new_data`` from the base model it holds: the new
    graph with every initializer's bytes stripped, plus only the blocks whose hash differs."""
    import onnx

    block = int(base_manifest["block"])
    model = onnx.load_model_from_string(new_data)
    blocks: dict[str, dict[int, str]] = {}
    for init in model.graph.initializer:
        raw = _raw(init)
        old = base_manifest["tensors"].get(init.name)
        changed = {}
        for j, i in enumerate(range(0, max(len(raw), 1), block)):
            piece = raw[i : i + block]
            if old is None or old["size"] != len(raw) or j >= len(old["blocks"]) or old["blocks"][j] != hashlib.sha256(piece).hexdigest():
                changed[j] = piece.hex()
        blocks[init.name] = changed
        _strip(init, len(raw))
    return {
        "base_sha256": base_manifest["sha256"],
        "target_sha256": sha256_hex(new_data),
        "block": block,
        "skeleton": model.SerializeToString().hex(),
        "blocks": blocks,
    }


def _strip(init, size: int) -> None:
    # keep the tensor's name, type and dims; its bytes travel as blocks (or stay on the device)
    for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
        init.ClearField(field)
    init.ClearField("raw_data")  # ONNX is proto2: an empty-but-set field would still serialize
    init.doc_string = f"hadmc-delta-size:{size}"


def apply_delta(base_data: bytes, delta: dict[str, Any]) -> bytes:
    """Rebuild the target model from the base bytes and a delta; verified by SHA-256."""
    import onnx

    if sha256_hex(base_data) != delta.get("base_sha256"):
        raise ProbeError("delta base does not match the stored model")
    block = int(delta["block"])
    base = {init.name: _raw(init) for init in onnx.load_model_from_string(base_data).graph.initializer}
    try:
        model = onnx.load_model_from_string(bytes.fromhex(delta["skeleton"]))
    except Exception as exc:
        raise ProbeError(f"delta skeleton is not a valid ONNX model: {exc}") from exc
    for init in model.graph.initializer:
        size = int(init.doc_string.removeprefix("hadmc-delta-size:") or 0)
        changed = {int(k): bytes.fromhex(v) for k, v in delta["blocks"].get(init.name, {}).items()}
        old = base.get(init.name, b"")
        pieces = []
        for j, i in enumerate(range(0, max(size, 1), block)):
            if j in changed:
                pieces.append(changed[j])
            elif len(old) == size:
                pieces.append(old[i : i + block])
            else:
                raise ProbeError(f"delta lacks block {j} of {init.name!r}, which changed size")
        init.raw_data = b"".join(pieces)[:size]
        init.ClearField("doc_string")
    out = model.SerializeToString()
    if sha256_hex(out) != delta["target_sha256"]:
        raise ProbeError("model rebuilt from the delta does not match its SHA-256; upload it in full")
    return out


# ---------------------------------------------------------------- server


class ModelStore:
    """ONNX models on disk under their SHA-256."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise ProbeError(f"model id must be a lowercase hex SHA-256, got {sha[:80]!r}")
        return self.root / f"{sha}.onnx"

    def has(self, sha: str) -> bool:
        return self.path(sha).exists()

    def get(self, sha: str) -> bytes:
        p = self.path(sha)
        if not p.exists():
            raise FileNotFoundError(sha)
        return p.read_bytes()

    def put(self, data: bytes) -> str:
        sha = sha256_hex(data)
        p = self.path(sha)
        if not p.exists():
            tmp = p.with_suffix(f".tmp{os.getpid()}-{threading.get_ident()}")
            tmp.write_bytes(data)
            tmp.replace(p)  # atomic: a reader never sees half a model
        return sha


def create_app(
    token: str | None = None,
    device: DeviceSpec | str = "local-cpu",
    backend: str = "ort-cpu",
    store_dir: str | Path | None = None,
    max_bytes: int = 256 * 1024 * 1024,
    timeout_s: float = 300.0,
    queue_wait_s: float = 0.0,
):
    """The probe server's FastAPI app.

    :param token: bearer token; None disables auth (allowed only on loopback by ``serve``)
    :param device: DeviceSpec (or its name) of this device
    :param backend: local latency probe used for measurements (``ort-cpu``, ``tensorrt``...)
    :param store_dir: folder of the model store (default ``~/.cache/hadmc/probe-models``)
    :param max_bytes: largest accepted upload (413 above)
    :param timeout_s: per-request limit of a measurement or inference (504 above)
    :param queue_wait_s: how long a request waits for a running measurement before 429
    """
    from fastapi import Depends, FastAPI, HTTPException, Request, Response
    from fastapi.responses import JSONResponse

    spec = device if isinstance(device, DeviceSpec) else load_device_spec(device)
    store = ModelStore(store_dir or Path.home() / ".cache" / "hadmc" / "probe-models")
    busy = threading.Lock()
    token_bytes = token.encode() if token else None
    app = FastAPI(title="HAD-MC probe", version="2.0")
    sessions: dict[tuple[str, int], RuntimeSession] = {}

    def check_auth(request: Request) -> None:
        if token_bytes is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        # compare_digest on equal-type bytes: timing does not reveal how much of the token matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token_bytes):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_bytes:
            raise HTTPException(413, f"upload of {int(length)} bytes exceeds the {max_bytes}-byte limit")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPException(413, f"upload exceeds the {max_bytes}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    def checked_store(data: bytes) -> str:
        try:
            validate_onnx(data)
        except ProbeError as exc:
            raise HTTPException(400, str(exc)) from exc
        return store.put(data)

    def stored(sha: str) -> bytes:
        try:
            return store.get(sha)
        except ProbeError as exc:
            raise HTTPException(400, str(exc)) from exc
        except FileNotFoundError as exc:
            raise HTTPException(404, f"model {sha} is not stored here; upload it first") from exc

    async def exclusive(work, *args):
        """Run ``work`` in a thread while holding the device; 429 if busy, 504 on timeout."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + queue_wait_s
        while not busy.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise HTTPException(429, "a measurement is running; retry later", headers={"Retry-After": "1"})
            await asyncio.sleep(0.05)

        def guarded():
            try:
                return work(*args)
            finally:
                busy.release()  # released when the work really ends, even after a 504

        fut = loop.run_in_executor(None, guarded)
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        except asyncio.TimeoutError as exc:
            raise HTTPException(504, f"the request exceeded the server's {timeout_s:.0f} s limit; lower min_seconds") from exc
        except ProbeError as exc:
            raise HTTPException(400, str(exc)) from exc

    def measure_sync(data: bytes, params: dict[str, Any]) -> dict[str, Any]:
        energy = bool(params.pop("energy", False))
        shape = params.pop("input_shape", None)
        probe = get_latency_probe(backend, device=spec, max_seconds=max(1.0, 0.8 * timeout_s), **params)
        before = device_state()
        m = measure_latency_and_energy(probe, data, probe.energy_probe("auto") if energy else None, input_shape=shape)
        m.latency.meta.update({"state_before": before, "state_after": device_state(), "versions": versions()})
        return {"latency": m.latency.model_dump(), "energy": m.energy.model_dump() if m.energy else None}

    def energy_sync(data: bytes, latency: LatencyResult, name: str, window_s: float | None) -> dict[str, Any]:
        probe = get_latency_probe(backend, device=spec, threads=latency.threads or 1)
        energy_probe = probe.energy_probe(name, **({"window_s": window_s} if window_s else {}))
        return energy_probe.measure(lazy_runner(probe, data, tuple(latency.input_shape)), latency).model_dump()

    def parse_params(request: Request) -> dict[str, Any]:
        q = request.query_params
        params: dict[str, Any] = {}
        try:
            for key, cast in (("threads", int), ("warmup_runs", int), ("min_iterations", int), ("warmup_s", float), ("min_seconds", float)):
                if key in q:
                    params[key] = cast(q[key])

            if "input_shape" in q and q["input_shape"]:
                params["input_shape"] = tuple(int(s) for s in q["input_shape"].split(","))
        except ValueError as exc:
            raise HTTPException(400, f"bad query parameter: {exc}") from exc
        if params.get("threads", 1) > (os.cpu_count() or 1) or params.get("threads", 1) < 1:
            raise HTTPException(400, f"threads must be in 1..{os.cpu_count()}")
        params["energy"] = q.get("energy", "false").lower() in ("1", "true", "yes")
        return params

    auth = [Depends(check_auth)]

    @app.exception_handler(ProbeError)
    async def _probe_error(request: Request, exc: ProbeError):
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/device", dependencies=auth)
    async def device_info() -> dict[str, Any]:
        return {
            "spec": spec.model_dump(),
            "device_id": spec.id,
            "backend": backend,
            "versions": versions(),
            "limits": {"max_bytes": max_bytes, "timeout_s": timeout_s},
            **device_state(),
        }

    @app.put("/models/{sha}", dependencies=auth, status_code=201)
    async def upload(sha: str, request: Request) -> dict[str, str]:
        data = await read_body(request)
        if sha256_hex(data) != sha:
            raise HTTPException(400, "uploaded bytes do not match the SHA-256 in the URL")
        return {"sha256": checked_store(data)}

    @app.get("/models/{sha}", dependencies=auth)
    async def has_model(sha: str) -> dict[str, Any]:
        stored(sha)
        return {"sha256": sha, "stored": True}

    @app.get("/models/{sha}/manifest", dependencies=auth)
    async def manifest(sha: str) -> dict[str, Any]:
        return initializer_manifest(stored(sha))

    @app.post("/models/{sha}/delta", dependencies=auth, status_code=201)
    async def delta(sha: str, request: Request) -> dict[str, str]:
        import json

        body = await read_body(request)
        try:
            payload = json.loads(body)
        except ValueError as exc:
            raise HTTPException(400, f"delta must be JSON: {exc}") from exc
        try:
            data = apply_delta(stored(sha), payload)
        except (ProbeError, KeyError, TypeError, ValueError) as exc:
            raise HTTPException(400, f"cannot apply delta: {exc}") from exc
        return {"sha256": checked_store(data)}

    @app.post("/measure", dependencies=auth)
    async def measure_upload(request: Request) -> dict[str, Any]:
        params = parse_params(request)
        data = await read_body(request)
        checked_store(data)
        return await exclusive(measure_sync, data, params)

    @app.post("/measure/{sha}", dependencies=auth)
    async def measure_stored(sha: str, request: Request) -> dict[str, Any]:
        params = parse_params(request)
        return await exclusive(measure_sync, stored(sha), params)

    @app.post("/energy/{sha}", dependencies=auth)
    async def energy(sha: str, request: Request) -> dict[str, Any]:
        data = stored(sha)
        try:
            latency = LatencyResult.model_validate_json(await read_body(request))
            window_s = float(request.query_params["window_s"]) if "window_s" in request.query_params else None
        except ValueError as exc:
            raise HTTPException(400, f"body must be the latency result of this model: {exc}") from exc
        return await exclusive(energy_sync, data, latency, request.query_params.get("probe", "auto"), window_s)

    @app.post("/infer/{sha}", dependencies=auth)
    async def infer(sha: str, request: Request) -> Response:
        data = stored(sha)
        body = await read_body(request)
        try:
            batch = np.load(io.BytesIO(body), allow_pickle=False)
        except Exception as exc:
            raise HTTPException(400, f"body must be a .npy array (np.save, no pickle): {exc}") from exc

        def run() -> bytes:
            key = (sha, 0)
            if key not in sessions:
                sessions.clear()  # keep one model's session resident, not every model ever sent
                sessions[key] = get_latency_probe(backend, device=spec).session(data)
            out = io.BytesIO()
            np.save(out, sessions[key].run(batch), allow_pickle=False)
            return out.getvalue()

        return Response(await exclusive(run), media_type="application/octet-stream")

    return app


def serve(
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    token_file: str | Path | None = None,
    **app_settings: Any,
) -> None:
    """Run the probe server (blocks). Refuses a non-loopback bind without a token.

    :param host: address to bind
    :param port: TCP port
    :param token_file: file holding the bearer token (16+ characters)
    :param app_settings: passed to ``create_app`` (device, backend, store_dir, max_bytes...)
    """
    import uvicorn

    token = read_token_file(token_file) if token_file else os.environ.get("HADMC_PROBE_TOKEN") or None
    if token is None and not is_loopback(host):
        raise ConfigError(f"refusing to bind {host} without a token: pass --token-file (the probe runs code on this device)")
    app = create_app(token=token, **app_settings)
    log.info("probe server on %s:%d (auth %s)", host, port, "on" if token else "off, loopback only")
    uvicorn.run(app, host=host, port=port, log_level="warning")


# ---------------------------------------------------------------- client


class RemoteProbe(LatencyProbe):
    """Latency probe that measures on a remote probe server (``remote://host:port``).

    :param url: ``http://host:port`` of the server
    :param token: bearer token (default: ``token_file``, then ``$HADMC_PROBE_TOKEN``)
    :param token_file: file holding the token
    :param threads: threads the server's backend uses
    :param request_timeout_s: client-side limit of one request
    :param busy_retry_s: how long to keep retrying while the server answers 429 (busy)
    """

    name = "remote"

    def __init__(
        self,
        url: str,
        token: str | None = None,
        token_file: str | Path | None = None,
        threads: int = 1,
        request_timeout_s: float = 600.0,
        busy_retry_s: float = 600.0,
        device: DeviceSpec | None = None,
        **timing: Any,
    ):
        import httpx

        super().__init__(device, **timing)
        if token is None and token_file is not None:
            token = read_token_file(token_file)
        token = token or os.environ.get("HADMC_PROBE_TOKEN")
        self.url = url.rstrip("/")
        self._threads = int(threads)
        self.busy_retry_s = float(busy_retry_s)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=request_timeout_s)
        self._info: dict[str, Any] | None = None

    # -- transport ----------------------------------------------------------------------
    def _request(self, method: str, path: str, **kw: Any):
        import httpx

        deadline = time.monotonic() + self.busy_retry_s
        while True:
            try:
                resp = self._client.request(method, path, **kw)
            except httpx.HTTPError as exc:
                raise ProbeError(f"remote probe at {self.url} is unreachable ({exc}); is `hadmc probe serve` running there?") from exc
            if resp.status_code == 429 and time.monotonic() < deadline:
                time.sleep(float(resp.headers.get("retry-after", "1")))
                continue
            return resp

    def _ok(self, resp, what: str):
        if resp.status_code >= 400:
            try:
                detail = resp.json().get("detail", resp.text)
            except ValueError:
                detail = resp.text
            hint = " (check the token: --token-file or $HADMC_PROBE_TOKEN)" if resp.status_code == 401 else ""
            raise ProbeError(f"remote probe {what} failed with HTTP {resp.status_code}: {detail}{hint}")
        return resp

    def info(self) -> dict[str, Any]:
        """The server's ``/device`` answer (spec, versions, clocks, temperature)."""
        if self._info is None:
            self._info = self._ok(self._request("GET", "/device"), "device info").json()
        return self._info

    def _default_device(self) -> DeviceSpec:
        return DeviceSpec.model_validate(self.info()["spec"])

    @property
    def threads(self) -> int:
        return self._threads

    def backend_settings(self) -> dict[str, Any]:
        info = self.info()
        return {"threads": self._threads, "remote_backend": info["backend"], "remote_versions": info["versions"]}

    def upload(self, data: bytes, base_sha256: str | None = None) -> str:
        """Make sure the server holds ``data``; with ``base_sha256`` of a model the server
        already has, send only the changed initializer blocks (verified by hash there)."""
        sha = sha256_hex(data)
        if self._request("GET", f"/models/{sha}").status_code == 200:
            return sha
        if base_sha256 is not None and self._request("GET", f"/models/{base_sha256}").status_code == 200:
            manifest = self._ok(self._request("GET", f"/models/{base_sha256}/manifest"), "manifest").json()
            import json

            body = json.dumps(make_delta(data, manifest)).encode()
            resp = self._request("POST", f"/models/{base_sha256}/delta", content=body)
            if resp.status_code < 400 and resp.json()["sha256"] == sha:
                return sha
            log.warning("delta update refused (%s); uploading the whole model", resp.text[:200])
        self._ok(self._request("PUT", f"/models/{sha}", content=data), "upload")
        return sha

    # -- probe API ----------------------------------------------------------------------
    def measure(self, model: ModelLike, input_shape: tuple[int, ...] | None = None, base_sha256: str | None = None) -> LatencyResult:
        """Latency measured on the device (the server's backend and methodology).

        :param base_sha256: a model the server already holds; only changed blocks are sent
        """
        data = model_bytes(model)
        inputs = graph_inputs(data, input_shape)
        sha = self.upload(data, base_sha256)
        params: dict[str, Any] = {**self.timing_settings(), "threads": self._threads}
        params.pop("max_seconds")
        params["input_shape"] = ",".join(str(s) for s in inputs[0].shape)
        t0 = time.perf_counter()
        payload = self._ok(self._request("POST", f"/measure/{sha}", params=params), "measurement").json()
        latency = LatencyResult.model_validate(payload["latency"])
        return latency.model_copy(
            update={
                "backend": f"remote:{latency.backend}",
                "settings": self.result_settings(inputs),
                "wall_s": time.perf_counter() - t0,
                "meta": {**latency.meta, "url": self.url, "remote_settings": latency.settings},
            }
        )

    def energy_probe(self, name: str = "auto", **settings: Any) -> EnergyProbe:
        """Energy measured on the device by its own probe (``auto``: a counter there, else the
        labelled estimate), never from round trips over the network."""
        return RemoteEnergyProbe(self, name, **settings)

    def measure_energy(self, latency: LatencyResult, name: str = "auto", window_s: float | None = None) -> EnergyResult:
        """Energy per inference of the artifact ``latency`` was measured on, on the device."""
        params: dict[str, Any] = {"probe": name}
        if window_s is not None:
            params["window_s"] = window_s
        remote = latency.model_copy(update={"backend": latency.backend.removeprefix("remote:"), "settings": latency.meta.get("remote_settings", {})})
        resp = self._request("POST", f"/energy/{latency.onnx_sha256}", params=params, content=remote.model_dump_json())
        return EnergyResult.model_validate(self._ok(resp, "energy measurement").json())

    def _open(self, data: bytes, inputs: list[InputSpec]) -> RuntimeSession:
        sha = self.upload(data)

        def run_feed(feed: dict[str, np.ndarray]) -> np.ndarray:
            (arr,) = feed.values()
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            resp = self._ok(self._request("POST", f"/infer/{sha}", content=buf.getvalue()), "inference")
            return np.load(io.BytesIO(resp.content), allow_pickle=False)

        rs = RuntimeSession(run_feed, inputs, inner=None)
        rs._dynamic_batch = True  # the server splits fixed-batch graphs itself
        return rs

    def close(self) -> None:
        self._client.close()


class RemoteEnergyProbe(EnergyProbe):
    """Energy per inference measured by the probe server on its device.

    :param remote: the RemoteProbe that measured the latency
    :param name: energy probe on the device (``auto``, ``rapl``, ``nvml``, ``jetson``, ``estimated``)
    :param window_s: measured window on the device (its default when None)
    """

    name = "remote"

    def __init__(self, remote: RemoteProbe, name: str = "auto", window_s: float | None = None):
        super().__init__(remote.device, window_s=window_s or 2.0)
        self.remote = remote
        self.device_probe = name
        self._window_s = window_s

    def settings(self) -> dict[str, Any]:
        return {"energy": f"remote:{self.device_probe}", "window_s": self._window_s, "url": self.remote.url}

    def measure(self, run_once: Any = None, latency: LatencyResult | None = None) -> EnergyResult:
        if latency is None or not latency.onnx_sha256:
            raise ProbeError("remote energy needs the latency result of the artifact measured on the device")
        return self.remote.measure_energy(latency, self.device_probe, self._window_s)
