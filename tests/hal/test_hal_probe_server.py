"""The probe server as an attacker meets it: no file disclosure, bounded work, no free retries."""

from __future__ import annotations

import io
import json
import os
import socket
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hal_models import external_data_models, matmul_model
from hal_servers import free_port, start_probe_server

from hadmc.errors import ConfigError, ProbeError
from hadmc.hal import sha256_hex
from hadmc.hal.artifact import validate_onnx
from hadmc.hal.auth import AuthFailureLimiter, resolve_token
from hadmc.hal.delta import MIN_DELTA_BLOCK, initializer_manifest, make_delta, parse_delta
from hadmc.hal.device import detect_local
from hadmc.hal.probe_server import ModelStore, create_app, describe_listen, serve
from hadmc.hal.probe_worker import MeasurementWorker

TOKEN = "test-token-0123456789abcdef"
SECRET = b"TOPSECRET-0123456789"
FAST = {"warmup_runs": 10, "warmup_s": 0.02, "min_iterations": 10, "min_seconds": 0.05}


@pytest.fixture()
def secret_cwd(tmp_path, monkeypatch):
    """The server's working directory holds a file worth stealing."""
    (tmp_path / "secret.bin").write_bytes(SECRET * 4)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture()
def client(tmp_path):
    with TestClient(create_app(token=None, store_dir=tmp_path / "store", timeout_s=30)) as c:
        yield c


# ---------------------------------------------------------------- file disclosure


@pytest.mark.parametrize("where", ["initializer", "constant_node", "if_branch", "sparse_initializer", "sparse_constant", "loop_body"])
def test_external_data_anywhere_in_the_model_gets_400_and_no_file_content(client, secret_cwd, where):
    data = external_data_models("secret.bin")[where]
    for resp in (
        client.post("/measure", content=data, params=FAST),
        client.put(f"/models/{sha256_hex(data)}", content=data),
    ):
        assert resp.status_code == 400, resp.text
        assert "external data" in resp.json()["detail"]
        assert b"TOPSECRET" not in resp.content and "secret.bin" not in resp.text
    assert not list((secret_cwd / "store").glob("*.onnx"))


def test_the_refusal_does_not_say_whether_the_referenced_file_exists(secret_cwd):
    def message(location: str) -> str:
        with pytest.raises(ProbeError) as info:
            validate_onnx(external_data_models(location)["constant_node"])
        return str(info.value)

    assert message("secret.bin") == message("no-such-file.bin") == message("/etc/passwd")


def test_the_worker_runs_in_an_empty_private_directory_so_a_miss_reaches_no_file(tmp_path, secret_cwd):
    # Suppose a model got past the checks: the runtime resolves its reference in the sandbox.
    model = tmp_path / "leak.onnx"
    model.write_bytes(external_data_models("secret.bin")["if_branch"])
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir(mode=0o700)
    worker = MeasurementWorker("ort-cpu", detect_local("cpu"), sandbox)
    try:
        with pytest.raises(ProbeError) as info:
            worker.call("infer", 60, sha="x" * 64, path=str(model), batch=np.zeros((), np.bool_))
        assert "TOPSECRET" not in str(info.value) and "not regular file" in str(info.value)
    finally:
        worker.stop()
    assert list(sandbox.iterdir()) == []


# ---------------------------------------------------------------- bounded work


@pytest.mark.parametrize(
    "params",
    [
        {"warmup_runs": 10**9},
        {"warmup_s": 1e9},
        {"warmup_s": "nan"},
        {"min_seconds": "inf"},
        {"min_iterations": 0},
        {"min_iterations": "many"},
        {"threads": 10**6},
        {"input_shape": "1,3,100000,100000"},
        {"input_shape": "100000,3,32,32"},
        {"input_shape": "1,-3"},
        {"input_shape": ",".join(["1"] * 20)},
        {"energy": "perhaps"},
        {"no_such_setting": 1},
    ],
)
def test_absurd_or_unknown_measurement_settings_get_4xx_before_any_work(client, params):
    data = matmul_model()
    resp = client.post("/measure", content=data, params=params)
    assert 400 <= resp.status_code < 500, resp.text
    assert "invalid request settings" in resp.json()["detail"]


@pytest.mark.parametrize("changes", [{"threads": 10**6}, {"input_shape": []}, {"input_shape": [10**6, 8]}, {"onnx_sha256": "0" * 64}])
def test_an_energy_request_is_bounded_like_a_measurement(client, changes):
    data = matmul_model()
    sha = sha256_hex(data)
    client.put(f"/models/{sha}", content=data)
    stats = {"median_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0, "std_ms": 0.0, "cov": 0.0, "iterations": 10}
    body = {**stats, "threads": 1, "batch": 1, "input_shape": [1, 8], "backend": "ort-cpu", "device_id": "d", "onnx_sha256": sha, **changes}
    resp = client.post(f"/energy/{sha}", content=json.dumps(body))
    assert resp.status_code == 400, resp.text


def test_a_repeated_setting_is_refused(client):
    resp = client.post("/measure?min_seconds=0.1&min_seconds=100", content=matmul_model())
    assert resp.status_code == 400 and "more than once" in resp.json()["detail"]


def test_a_request_past_the_limit_is_stopped_and_the_device_is_free_at_once(tmp_path):
    app = create_app(token=None, store_dir=tmp_path, timeout_s=2.0)
    data = matmul_model(128)
    with TestClient(app) as client:
        client.post("/measure", content=data, params=FAST)  # the worker is warm
        slow = client.post(f"/measure/{sha256_hex(data)}", params={"warmup_s": 30})
        assert slow.status_code == 504 and "stopped" in slow.json()["detail"]
        nxt = client.post(f"/measure/{sha256_hex(data)}", params=FAST)
        assert nxt.status_code == 200, nxt.text  # not 429: the lock went with the killed work
        assert nxt.json()["latency"]["iterations"] >= 10


def test_model_store_evicts_the_least_recently_used_beyond_its_quota(tmp_path):
    models = [matmul_model(16, seed=i) for i in range(3)]
    store = ModelStore(tmp_path, quota_bytes=2 * len(models[0]) + 100)
    a, b = store.put(models[0]), store.put(models[1])
    os.utime(store.path(a), (1, 1))
    os.utime(store.path(b), (2, 2))
    store.use(a)  # a is now the most recently used
    c = store.put(models[2])
    assert store.has(a) and store.has(c) and not store.has(b)
    assert store.used_bytes() <= store.quota_bytes


def test_a_model_larger_than_the_quota_gets_413(tmp_path):
    data = matmul_model(64)
    with TestClient(create_app(token=None, store_dir=tmp_path, store_quota_bytes=len(data) // 2)) as client:
        resp = client.put(f"/models/{sha256_hex(data)}", content=data)
        assert resp.status_code == 413 and "quota" in resp.json()["detail"]


def _delta_body(**changes) -> bytes:
    base, new = matmul_model(64, seed=0), matmul_model(64, seed=1)
    delta = make_delta(new, initializer_manifest(base, block=MIN_DELTA_BLOCK))
    delta.update(changes)
    return json.dumps(delta).encode()


@pytest.mark.parametrize(
    "body, words",
    [
        (_delta_body(block=16), "block"),
        (_delta_body(blocks={"W": {"0": "00" * 10}}), "expected"),
        (_delta_body(blocks={"W": {"99": "00" * MIN_DELTA_BLOCK}}), "beyond"),
        (_delta_body(skeleton="zz"), "not a valid ONNX"),
        (b'{"base_sha256": 1}', "invalid delta"),
        (b"[" * 100_000 + b"]" * 100_000, "JSON"),
        (b'{"a":' * 400_000, "entries"),
    ],
)
def test_malformed_or_costly_deltas_are_refused(tmp_path, body, words):
    base = matmul_model(64, seed=0)
    with TestClient(create_app(token=None, store_dir=tmp_path, max_bytes=1 << 20)) as client:
        assert client.put(f"/models/{sha256_hex(base)}", content=base).status_code == 201
        resp = client.post(f"/models/{sha256_hex(base)}/delta", content=body)
        assert resp.status_code == 400, resp.text
        assert words.lower() in resp.json()["detail"].lower()


def test_a_delta_may_not_claim_more_bytes_than_the_upload_limit():
    base, new = matmul_model(64, seed=0), matmul_model(64, seed=1)
    delta = make_delta(new, initializer_manifest(base, block=MIN_DELTA_BLOCK))
    with pytest.raises(ProbeError, match="limit"):
        from hadmc.hal.delta import apply_delta

        apply_delta(base, parse_delta(json.dumps(delta).encode(), 1000), max_bytes=1000)


@pytest.mark.parametrize(
    "body",
    [
        b"not npy",
        b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000,), }" + b" " * 40 + b"\n",
        b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }" + b" " * 49 + b"\n" + b"\x00" * 8,
    ],
)
def test_inference_bodies_that_are_not_plain_numeric_npy_get_400(client, body):
    data = matmul_model()
    client.put(f"/models/{sha256_hex(data)}", content=data)
    resp = client.post(f"/infer/{sha256_hex(data)}", content=body)
    assert resp.status_code == 400, resp.text


def test_inference_with_the_wrong_shape_gets_400_and_the_right_one_works(client):
    data = matmul_model(8)
    sha = sha256_hex(data)
    client.put(f"/models/{sha}", content=data)

    def npy(arr):
        buf = io.BytesIO()
        np.save(buf, arr, allow_pickle=False)
        return buf.getvalue()

    bad = client.post(f"/infer/{sha}", content=npy(np.zeros((2, 5), np.float32)))
    assert bad.status_code == 400 and "expects" in bad.json()["detail"]
    good = client.post(f"/infer/{sha}", content=npy(np.ones((2, 8), np.float32)))
    assert good.status_code == 200 and np.load(io.BytesIO(good.content)).shape == (2, 8)


# ---------------------------------------------------------------- unauthenticated pressure


def test_repeated_wrong_tokens_are_limited_per_client_address(tmp_path):
    app = create_app(token=TOKEN, store_dir=tmp_path, auth_failures=3, auth_window_s=600)
    with TestClient(app) as client:
        for _ in range(3):
            assert client.get("/device", headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}).status_code == 401
        blocked = client.get("/device", headers={"Authorization": f"Bearer {TOKEN}"})
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) > 0
        assert client.get("/health").status_code == 200


def test_the_limiter_forgets_failures_once_they_leave_the_window():
    limiter = AuthFailureLimiter(max_failures=2, window_s=0.2)
    limiter.failed("a")
    limiter.failed("a")
    assert limiter.retry_after("a") > 0 and limiter.retry_after("b") == 0
    time.sleep(0.25)
    assert limiter.retry_after("a") == 0


def test_interactive_api_docs_are_off_unless_asked_for(tmp_path):
    with TestClient(create_app(token=None, store_dir=tmp_path)) as client:
        assert client.get("/docs").status_code == 404 and client.get("/openapi.json").status_code == 404
    with TestClient(create_app(token=None, store_dir=tmp_path, docs=True)) as client:
        assert client.get("/docs").status_code == 200


def test_a_token_from_the_environment_needs_the_same_length_as_one_from_a_file(tmp_path):
    with pytest.raises(ConfigError, match="too short"):
        resolve_token(None, {"HADMC_PROBE_TOKEN": "short"})
    short = tmp_path / "token"
    short.write_text("short\n")
    with pytest.raises(ConfigError, match="too short"):
        resolve_token(short, {})
    assert resolve_token(None, {"HADMC_PROBE_TOKEN": TOKEN}) == (TOKEN, "$HADMC_PROBE_TOKEN")


def test_the_banner_tells_the_truth_about_auth_and_reach():
    assert "this machine only" in describe_listen("127.0.0.1", 1, "none", False)
    assert "auth: off" in describe_listen("127.0.0.1", 1, "none", False)
    open_banner = describe_listen("0.0.0.0", 8765, "$HADMC_PROBE_TOKEN", False)
    assert "every network interface" in open_banner and "token from $HADMC_PROBE_TOKEN" in open_banner
    assert "API docs: off" in open_banner


def test_serve_refuses_a_short_environment_token_and_a_busy_port(monkeypatch):
    monkeypatch.setenv("HADMC_PROBE_TOKEN", "short")
    with pytest.raises(ConfigError, match="too short"):
        serve(host="127.0.0.1", port=free_port())
    monkeypatch.setenv("HADMC_PROBE_TOKEN", TOKEN)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ConfigError, match="cannot listen"):
            serve(host="127.0.0.1", port=taken.getsockname()[1])


@pytest.fixture(scope="module")
def env_token_server(tmp_path_factory):
    """A real server whose token comes from the environment, with a 1 s client timeout."""
    tmp = tmp_path_factory.mktemp("probe-env")
    env = dict(os.environ, HADMC_PROBE_TOKEN=TOKEN)
    proc, port = start_probe_server("--store-dir", str(tmp / "store"), "--client-timeout-s", "1", env=env)
    banner = ""
    while "probe server" not in banner:
        banner = proc.stderr.readline().decode()
    yield port, banner
    proc.terminate()
    proc.communicate(timeout=10)


def test_a_server_with_an_environment_token_says_auth_is_on_and_enforces_it(env_token_server):
    port, banner = env_token_server
    assert httpx.get(f"http://127.0.0.1:{port}/device", timeout=10).status_code == 401
    assert httpx.get(f"http://127.0.0.1:{port}/device", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 200
    assert "token from $HADMC_PROBE_TOKEN" in banner and "auth: off" not in banner


def test_a_client_that_never_finishes_its_request_head_is_disconnected(env_token_server):
    port, _ = env_token_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        t0 = time.monotonic()
        assert s.recv(1024) == b""  # closed by the server, well before the 10 s socket timeout
        assert time.monotonic() - t0 < 9


def test_a_body_that_trickles_in_gets_408(env_token_server):
    port, _ = env_token_server
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"POST /measure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 1000\r\n\r\n".encode() + b"x" * 10
        )
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408")
