"""Fuzzing the probe server: random, truncated and oversized bodies, bad headers and bad query
values against every endpoint never get a 500, and a valid request is answered correctly
afterwards. Bounded by its example count and a 2 s per-request limit (well under 2 minutes)."""

from __future__ import annotations

import io
import json
import time

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from hal_models import matmul_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hadmc.hal import sha256_hex
from hadmc.hal.delta import MIN_DELTA_BLOCK, initializer_manifest, make_delta

TOKEN = "fuzz-token-0123456789abcdef"
MAX_BYTES = 64 * 1024
MODEL = matmul_model(8)
SHA = sha256_hex(MODEL)
OTHER = matmul_model(8, seed=1)
ENDPOINTS = [
    ("GET", "/health"),
    ("GET", "/device"),
    ("GET", "/docs"),
    ("PUT", "/models/{sha}"),
    ("GET", "/models/{sha}"),
    ("GET", "/models/{sha}/manifest"),
    ("POST", "/models/{sha}/delta"),
    ("POST", "/measure"),
    ("POST", "/measure/{sha}"),
    ("POST", "/energy/{sha}"),
    ("POST", "/infer/{sha}"),
    ("DELETE", "/models/{sha}"),
]
SETTINGS = ["threads", "warmup_runs", "warmup_s", "min_iterations", "min_seconds", "input_shape", "energy", "probe", "window_s"]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _delta() -> bytes:
    return json.dumps(make_delta(OTHER, initializer_manifest(MODEL, block=MIN_DELTA_BLOCK))).encode()


def _latency() -> bytes:
    stats = {"median_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "mean_ms": 1.0, "std_ms": 0.0, "cov": 0.0, "iterations": 10}
    return json.dumps({**stats, "threads": 1, "batch": 1, "input_shape": [1, 8], "backend": "ort-cpu", "device_id": "d", "onnx_sha256": SHA}).encode()


VALID_BODIES = [MODEL, _npy(np.ones((2, 8), np.float32)), _delta(), _latency()]

shas = st.one_of(
    st.just(SHA),
    st.text("0123456789abcdef", min_size=64, max_size=64),
    st.text(st.characters(codec="ascii", categories=["L", "N", "P", "S"], exclude_characters="/?#%\\"), max_size=100),
)
bodies = st.one_of(
    st.binary(max_size=2048),
    st.sampled_from(VALID_BODIES).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n])),  # truncated
    st.sampled_from(VALID_BODIES).flatmap(lambda b: st.binary(min_size=1, max_size=64).map(lambda junk: b + junk)),
    st.integers(MAX_BYTES + 1, 2 * MAX_BYTES).map(lambda n: b"\x00" * n),  # oversized
    st.sampled_from(VALID_BODIES),
)
query_values = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.text(max_size=30),
    st.sampled_from(["1,3,32,32", "1,8", "2,8", "", ",", "1,,1", "true", "nan", "-0"]),
)
queries = st.lists(st.tuples(st.one_of(st.sampled_from(SETTINGS), st.text(max_size=10)), query_values), max_size=4)
auth_headers = st.one_of(
    st.just(f"Bearer {TOKEN}"),
    st.just(f"Bearer {TOKEN}"),
    st.just(TOKEN),
    st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=60),
    st.just("Bearer " + "x" * 10_000),
)
extra_headers = st.dictionaries(
    st.sampled_from(["content-type", "x-forwarded-for", "accept", "transfer-encoding-x", "range", "expect-x"]),
    st.text(st.characters(codec="latin-1", exclude_categories=["Cc"]), max_size=40),
    max_size=3,
)


@pytest.fixture(scope="module")
def fuzz_client(tmp_path_factory):
    from hadmc.hal.probe_server import create_app

    app = create_app(
        token=TOKEN,
        store_dir=tmp_path_factory.mktemp("fuzz-store"),
        max_bytes=MAX_BYTES,
        store_quota_bytes=16 * MAX_BYTES,
        timeout_s=2.0,
        auth_failures=10**9,  # the wrong-token limit is tested on its own; here it would lock the fuzzer out
    )
    with TestClient(app) as client:
        assert client.put(f"/models/{SHA}", content=MODEL, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 201
        client.started = time.perf_counter()
        yield client


EXAMPLES = 500


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(endpoint=st.sampled_from(ENDPOINTS), sha=shas, body=bodies, query=queries, auth=auth_headers, headers=extra_headers)
def test_no_request_gets_a_500(fuzz_client, endpoint, sha, body, query, auth, headers):
    method, template = endpoint
    path = template.format(sha=sha)
    raw_headers = {k: v.encode("latin-1") for k, v in {**headers, "Authorization": auth}.items()}  # bytes as sent
    resp = fuzz_client.request(method, path, content=body if method in ("PUT", "POST") else None, params=query, headers=raw_headers)
    assert resp.status_code < 500 or resp.status_code == 504, (method, path, query, resp.status_code, resp.text[:300])


def test_the_server_answers_a_valid_request_correctly_after_the_fuzzing(fuzz_client):
    # runs after test_no_request_gets_a_500 on the same server (pytest keeps file order)
    print(f"\nprobe server fuzz: {EXAMPLES} requests, {time.perf_counter() - fuzz_client.started:.1f} s")
    auth = {"Authorization": f"Bearer {TOKEN}"}
    fuzz_client.put(f"/models/{SHA}", content=MODEL, headers=auth)
    measured = fuzz_client.post(f"/measure/{SHA}", params={"min_iterations": 10, "min_seconds": 0.05, "warmup_s": 0.01}, headers=auth)
    assert measured.status_code == 200, measured.text
    latency = measured.json()["latency"]
    assert latency["onnx_sha256"] == SHA and latency["iterations"] >= 10 and latency["median_ms"] > 0
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    resp = fuzz_client.post(f"/infer/{SHA}", content=_npy(x), headers=auth)
    assert resp.status_code == 200, resp.text
    expected = ort.InferenceSession(MODEL).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.load(io.BytesIO(resp.content)), expected, rtol=1e-5)
