"""The ``remote://host:port`` latency probe: measures on a probe server (``hadmc probe
serve``, see ``probe_server``) running on the edge device.

Models travel once: the client asks whether the server holds an artifact (by SHA-256) and
uploads it only if not, or sends a delta of changed initializer blocks against a model the
server already has. Latency and energy are measured on the device; accuracy runs there too
(``session``), so every figure is the device's own.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hadmc.errors import ProbeError

from .artifact import InputSpec, ModelLike, graph_inputs, model_bytes, sha256_hex
from .auth import TOKEN_ENV, check_token, read_token_file
from .delta import make_delta
from .device import DeviceSpec
from .energy import EnergyProbe
from .latency import LatencyProbe, RuntimeSession
from .host import HostInfo
from .results import EnergyResult, LatencyResult, RelativeLatency

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Push:
    """What `RemoteProbe.push` sent: ``nothing`` (already held), a ``delta`` or the ``model``."""

    sha256: str
    sent: Literal["nothing", "delta", "model"]
    bytes_sent: int


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
        if token is None and os.environ.get(TOKEN_ENV):
            token = check_token(os.environ[TOKEN_ENV], f"${TOKEN_ENV}")
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
        return self.push(data, base_sha256).sha256

    def push(self, data: bytes, base_sha256: str | None = None) -> Push:
        """`upload`, saying what went over the wire: nothing (the server holds it), a delta
        against ``base_sha256``, or the whole model (no base, the server lacks it, or it refused
        the delta)."""
        sha = sha256_hex(data)
        if self._request("GET", f"/models/{sha}").status_code == 200:
            return Push(sha, "nothing", 0)
        if base_sha256 is not None and self._request("GET", f"/models/{base_sha256}").status_code == 200:
            manifest = self._ok(self._request("GET", f"/models/{base_sha256}/manifest"), "manifest").json()
            body = json.dumps(make_delta(data, manifest)).encode()
            resp = self._request("POST", f"/models/{base_sha256}/delta", content=body)
            if resp.status_code < 400 and resp.json()["sha256"] == sha:
                return Push(sha, "delta", len(body))
            log.warning("delta update refused (%s); uploading the whole model", resp.text[:200])
        self._ok(self._request("PUT", f"/models/{sha}", content=data), "upload")
        return Push(sha, "model", len(data))

    # -- probe API ----------------------------------------------------------------------
    def _post_measure(self, sha: str, input_shape: tuple[int, ...] | None, **extra: Any) -> dict[str, Any]:
        params: dict[str, Any] = {**self.timing_settings(), "threads": self._threads, **extra}
        params.pop("max_seconds")  # the server caps the timed phase by its own request limit
        if input_shape is not None:
            params["input_shape"] = ",".join(str(s) for s in input_shape)
        return self._ok(self._request("POST", f"/measure/{sha}", params=params), "measurement").json()

    def _as_remote(self, latency: LatencyResult, settings: dict[str, Any]) -> LatencyResult:
        """A result the server measured, as this client records it."""
        return latency.model_copy(
            update={
                "backend": f"remote:{latency.backend}",
                "settings": settings,
                "host": {**latency.host, "source": f"remote:{self.url}"},
                "meta": {**latency.meta, "url": self.url, "remote_settings": latency.settings},
            }
        )

    def host(self) -> HostInfo:
        """The device's own report of the machine it measures on."""
        return HostInfo.model_validate({**self.info()["host"], "source": f"remote:{self.url}"})

    def measure(self, model: ModelLike, input_shape: tuple[int, ...] | None = None, base_sha256: str | None = None) -> LatencyResult:
        """Latency measured on the device (the server's backend and methodology).

        :param base_sha256: a model the server already holds; only changed blocks are sent
        """
        data = model_bytes(model)
        inputs = graph_inputs(data, input_shape)
        sha = self.upload(data, base_sha256)
        t0 = time.perf_counter()
        latency = LatencyResult.model_validate(self._post_measure(sha, inputs[0].shape)["latency"])
        return self._as_remote(latency, self.result_settings(inputs)).model_copy(update={"wall_s": time.perf_counter() - t0})

    def measure_relative(self, model: ModelLike, reference: ModelLike, input_shape: tuple[int, ...] | None = None, **options: Any) -> RelativeLatency:
        """``model`` against ``reference`` in alternating blocks, on the device (the candidate
        travels as a delta of the reference where it can)."""
        data, ref = model_bytes(model), model_bytes(reference)
        inputs, ref_inputs = graph_inputs(data, input_shape), graph_inputs(ref, input_shape)
        ref_sha = self.upload(ref)
        sha = self.upload(data, base_sha256=ref_sha)
        relative = RelativeLatency.model_validate(self._post_measure(sha, input_shape, reference=ref_sha, **options)["relative"])
        return relative.model_copy(
            update={
                "candidate": self._as_remote(relative.candidate, self.relative_settings(inputs, **options)),
                "reference": self._as_remote(relative.reference, self.result_settings(ref_inputs)),
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
