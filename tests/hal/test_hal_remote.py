"""A real probe server on loopback in a subprocess, exercised over HTTP."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from hal_models import export_tiny_cnn, matmul_model
from hal_servers import free_port, start_probe_server
from onnx import TensorProto, helper

from hadmc.errors import ConfigError, ProbeError
from hadmc.hal import get_latency_probe, measure_latency_and_energy, sha256_hex
from hadmc.hal.delta import apply_delta, initializer_manifest, make_delta
from hadmc.hal.probe_server import create_app, serve
from hadmc.hal.remote import RemoteEnergyProbe, RemoteProbe

TOKEN = "test-token-0123456789abcdef"
TIMING = {"warmup_runs": 10, "warmup_s": 0.05, "min_iterations": 20, "min_seconds": 0.1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    proc, port = start_probe_server(
        "--token-file", str(token_file), "--store-dir", str(tmp / "store"), "--max-mb", "1", "--timeout-s", "60"
    )
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "token_file": token_file, "store": tmp / "store"}
    proc.terminate()
    proc.wait(10)


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKEN}"}


def _still_answers(url: str) -> None:
    resp = httpx.get(url + "/device", headers=_auth(), timeout=10)
    assert resp.status_code == 200 and resp.json()["device_id"]


def test_remote_measurement_round_trip_matches_local_methodology(server, tiny_cnn_bytes):
    probe = get_latency_probe(f"remote://127.0.0.1:{server['port']}", token_file=server["token_file"], **TIMING)
    assert isinstance(probe, RemoteProbe)
    r = probe.measure(tiny_cnn_bytes)
    assert r.provenance == "measured" and r.backend == "remote:ort-cpu"
    assert r.onnx_sha256 == sha256_hex(tiny_cnn_bytes)
    assert r.iterations == len(r.samples_ms) >= 20 and r.median_ms > 0
    assert r.device_id == probe.info()["device_id"] == probe.device.id
    assert r.input_shape == [1, 3, 32, 32] and r.threads == 1
    assert "versions" in r.meta and "state_before" in r.meta
    assert (server["store"] / f"{r.onnx_sha256}.onnx").read_bytes() == tiny_cnn_bytes


def test_remote_energy_is_labelled_estimated_without_counters(server):
    probe = RemoteProbe(server["url"], token_file=server["token_file"], **TIMING)
    energy_probe = probe.energy_probe()
    assert isinstance(energy_probe, RemoteEnergyProbe)  # measured on the device, not over the network
    m = measure_latency_and_energy(probe, matmul_model(), energy_probe)
    latency, energy = m.latency, m.energy
    assert latency.median_ms > 0
    assert energy is not None and energy.provenance in ("estimated", "measured")
    if not os.path.exists("/sys/class/powercap/intel-rapl:0"):
        assert energy.provenance == "estimated" and energy.method == "estimated-tdp"


def test_remote_session_returns_the_same_logits_as_local_onnxruntime(server):
    data, model = export_tiny_cnn(dynamic_batch=False, seed=3)
    remote = RemoteProbe(server["url"], token_file=server["token_file"]).session(data)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
    np.testing.assert_allclose(remote.run(x.numpy()), expected, rtol=1e-4, atol=1e-4)


def test_missing_or_wrong_token_gets_401_and_server_keeps_answering(server):
    url = server["url"]
    assert httpx.get(url + "/device", timeout=10).status_code == 401
    assert httpx.get(url + "/device", headers={"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"}, timeout=10).status_code == 401
    assert httpx.get(url + "/device", headers={"Authorization": TOKEN}, timeout=10).status_code == 401
    resp = httpx.post(url + "/measure", content=matmul_model(), timeout=10)
    assert resp.status_code == 401
    _still_answers(url)
    with pytest.raises(ProbeError, match="401"):
        RemoteProbe(url, token="not-the-token-at-all").info()


def test_oversize_upload_gets_413_and_server_keeps_answering(server):
    big = os.urandom(2 * 1024 * 1024)  # limit is 1 MiB
    resp = httpx.post(server["url"] + "/measure", content=big, headers=_auth(), timeout=30)
    assert resp.status_code == 413
    _still_answers(server["url"])


def test_bytes_that_are_not_onnx_get_400_and_server_keeps_answering(server):
    url = server["url"]
    for body in (b"\x80\x04\x95 pickle-ish bytes \x00\xff" * 20, b"", b"hello world"):
        resp = httpx.post(url + "/measure", content=body, headers=_auth(), timeout=30)
        assert resp.status_code == 400, resp.text
        _still_answers(url)
    # parses as ONNX but the checker rejects it (a node of an unknown operator)
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    bad = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10).SerializeToString()
    resp = httpx.post(url + "/measure", content=bad, headers=_auth(), timeout=30)
    assert resp.status_code == 400 and "checker" in resp.json()["detail"]
    # upload whose bytes do not match the SHA-256 named in the URL
    data = matmul_model()
    resp = httpx.put(url + f"/models/{'0' * 64}", content=data, headers=_auth(), timeout=30)
    assert resp.status_code == 400
    resp = httpx.post(url + "/infer/" + "ab" * 32, content=b"x", headers=_auth(), timeout=30)
    assert resp.status_code == 404
    _still_answers(url)


def test_second_measurement_while_one_runs_gets_429(server):
    data = matmul_model(64)
    sha = sha256_hex(data)
    assert httpx.put(server["url"] + f"/models/{sha}", content=data, headers=_auth(), timeout=30).status_code == 201
    results = {}

    def long_measure():
        results["long"] = httpx.post(
            server["url"] + f"/measure/{sha}", params={"min_seconds": 2.0, "min_iterations": 10}, headers=_auth(), timeout=60
        ).status_code

    t = threading.Thread(target=long_measure)
    t.start()
    time.sleep(1.0)
    second = httpx.post(server["url"] + f"/measure/{sha}", params={"min_seconds": 0.1}, headers=_auth(), timeout=60)
    t.join()
    assert second.status_code == 429 and second.headers["retry-after"]
    assert results["long"] == 200
    _still_answers(server["url"])


def test_delta_update_sends_only_changed_blocks_and_is_verified_by_hash(server, caplog):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10)).eval()

    def export() -> bytes:
        buf = io.BytesIO()
        torch.onnx.export(model, torch.randn(1, 3, 32, 32), buf, dynamo=False)
        return buf.getvalue()

    base = export()
    with torch.no_grad():
        model[3].weight[0, :10] += 1.0  # fine-tuning touched one region of one tensor
    new = export()
    delta = make_delta(new, initializer_manifest(base, block=4096))
    changed = {name: sorted(b) for name, b in delta["blocks"].items() if b}
    assert changed == {"3.weight": [0]}
    assert apply_delta(base, delta) == new
    tampered = dict(delta, blocks={"3.weight": {"0": "00" * 4096}})
    with pytest.raises(ProbeError, match="SHA-256"):
        apply_delta(base, tampered)
    probe = RemoteProbe(server["url"], token_file=server["token_file"], **TIMING)
    assert probe.upload(base) == sha256_hex(base)
    with caplog.at_level("WARNING", logger="hadmc.hal.remote"):
        assert probe.upload(new, base_sha256=sha256_hex(base)) == sha256_hex(new)
    assert "delta update refused" not in caplog.text  # the server rebuilt it from the delta
    assert (server["store"] / f"{sha256_hex(new)}.onnx").read_bytes() == new


def test_probe_push_sends_only_the_delta_when_the_device_holds_the_base(server, tmp_path, capsys):
    from hadmc.cli import main

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 30 * 30, 10)).eval()
    base, new = tmp_path / "base.onnx", tmp_path / "new.onnx"
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), buf, dynamo=False)
    base.write_bytes(buf.getvalue())
    with torch.no_grad():
        model[3].bias += 0.5  # a new head bias: one small tensor changed
    buf = io.BytesIO()
    torch.onnx.export(model, torch.randn(1, 3, 32, 32), buf, dynamo=False)
    new.write_bytes(buf.getvalue())
    target = f"remote://127.0.0.1:{server['port']}"
    auth = ["--token-file", str(server["token_file"])]
    base_sha, new_sha = sha256_hex(base.read_bytes()), sha256_hex(new.read_bytes())
    assert main(["probe", "push", target, str(new), "--base", "0" * 64, *auth]) == 0  # the device lacks that base
    assert "uploaded the whole model" in capsys.readouterr().out
    (server["store"] / f"{new_sha}.onnx").unlink()
    assert main(["probe", "push", target, str(base), *auth]) == 0
    assert main(["probe", "push", target, str(new), "--base", base_sha, *auth]) == 0
    out = capsys.readouterr().out
    sent = int(float(out.split("sent a delta of ")[1].split(" kB")[0]) * 1000)
    assert f"holds SHA-256 {new_sha}" in out and sent < new.stat().st_size // 10
    assert (server["store"] / f"{new_sha}.onnx").read_bytes() == new.read_bytes()  # rebuilt there, verified by hash
    assert main(["probe", "push", target, str(new), *auth]) == 0
    assert "already holds it; nothing sent" in capsys.readouterr().out
    assert main(["probe", "push", target, str(new), "--base", "xyz", *auth]) == 2  # a usage error, named
    assert "64 hex digits" in capsys.readouterr().err


def test_per_request_timeout_gives_504(tmp_path):
    from fastapi.testclient import TestClient

    app = create_app(token=None, timeout_s=0.5, store_dir=tmp_path)
    data = matmul_model(128)
    with TestClient(app) as client:
        resp = client.post("/measure", content=data, params={"min_seconds": 5.0})
        assert resp.status_code == 504
        assert client.get("/health").status_code == 200


def test_refuses_non_loopback_bind_without_token(monkeypatch):
    monkeypatch.delenv("HADMC_PROBE_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="token"):
        serve(host="0.0.0.0", port=free_port())
    out = subprocess.run(
        [sys.executable, "-m", "hadmc.cli_probe", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, env={k: v for k, v in os.environ.items() if k != "HADMC_PROBE_TOKEN"},
    )
    assert out.returncode != 0 and "token" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_server_gives_a_clear_probe_error():
    with pytest.raises(ProbeError, match="unreachable"):
        RemoteProbe(f"http://127.0.0.1:{free_port()}", request_timeout_s=2).info()


def test_a_remote_comparison_is_timed_on_the_device_in_alternating_blocks(server):
    probe = RemoteProbe(server["url"], token_file=server["token_file"], **TIMING)
    small, big = matmul_model(8), matmul_model(64)
    rel = probe.measure_relative(small, big, max_rounds=1)
    assert rel.pairs >= 10 and rel.ratio_low <= rel.ratio <= rel.ratio_high
    for part, model in ((rel.candidate, small), (rel.reference, big)):
        assert part.backend == "remote:ort-cpu" and part.onnx_sha256 == sha256_hex(model)
        assert part.host["source"] == f"remote:{server['url']}" and part.host["cpu_model"]
        assert len(part.load_avg) == 3
    assert probe.host().source == f"remote:{server['url']}"
    assert rel.candidate.settings["relative"]["max_rounds"] == 1
