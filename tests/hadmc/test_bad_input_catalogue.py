"""The bad-input catalogue: what a careless or hostile user can hand HAD-MC, and the one clear
answer each gets.

One table across plans, configs, devices, weights, data, targets, output folders, usage and
the probe server. Every case asserts the exit code (CLI), error type (API) or HTTP status
(server); that no traceback is shown; the key words of the message; and that every file that
existed before (the bad inputs themselves and an artifact already in the output folder) is
untouched afterwards. The count is printed.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from hadmc.cli import main
from hadmc.config import RunConfig
from hadmc.hal import sha256_hex
from hadmc.hal.delta import initializer_manifest, make_delta

# the HAL tests' model builders (importlib mode: their folder is not on sys.path by itself)
sys.path.insert(0, str(Path(__file__).parents[1] / "hal"))
from hal_models import external_data_models, matmul_model  # noqa: E402

TOKEN = "catalogue-token-0123456789"
GARBAGE = bytes(range(256)) * 8


@dataclass(frozen=True)
class Case:
    """One bad input.

    :param id: what is wrong, in a few words
    :param area: plans, usage, devices, weights, data, targets, output, configs, updates, server
    :param run: CLI arguments (``{tmp}`` is the case's folder), a callable for API cases, or
        ``(method, path, kwargs)`` for the probe server
    :param expect: exit code (CLI), exception type name (API) or HTTP status (server)
    :param words: words the message must hold (case-insensitive)
    :param files: files to create first, name -> bytes or a callable writing the path
    :param absent: words the message must not hold
    """

    id: str
    area: str
    run: list[str] | Callable | tuple
    expect: int | str
    words: tuple[str, ...]
    files: dict[str, bytes | str | Callable[[Path], None]] = field(default_factory=dict)
    absent: tuple[str, ...] = ()


def _nested(depth: int) -> str:
    return '{"default": ' + "[" * depth + "]" * depth + "}"


def _pickled_module(path: Path) -> None:
    torch.save({"model": torch.nn.Linear(2, 2)}, path)  # a whole object, not only tensors


def _other_classes(path: Path) -> None:
    import torchvision

    torch.save(torchvision.models.mobilenet_v3_small(num_classes=5).state_dict(), path)


def _corrupt_images(root: Path) -> None:
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(b"\x89PNG but not really" + bytes(i))


def _folder(path: Path) -> None:
    path.mkdir()


def _device(**changes) -> str:
    base = {
        "kind": "cpu", "peak_tops": {"fp32": 0.5, "int8": 1.0}, "memory_bandwidth_gbs": 20, "memory_gb": 8,
        "tdp_w": 35, "idle_w": 5, "precisions": ["fp32", "int8"], "backend": "ort-cpu",
    }
    base.update(changes)
    import yaml

    return yaml.safe_dump(base)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tiny_onnx_file(path: Path) -> None:
    path.write_bytes(_tiny_onnx())


def _patch_of_other_models(path: Path) -> None:
    from hadmc.hal.delta import make_patch

    path.write_bytes(make_patch(matmul_model(16, seed=1), matmul_model(16, seed=2)))


def _config(name: str) -> Callable[[Path], None]:
    def load(tmp: Path) -> None:
        RunConfig.load(tmp / name)

    return load


EVAL = ["evaluate", "--model", "resnet18", "--image-size", "16"]
COMPRESS = ["compress", "--config"]
MEASURE = ["probe", "measure", "--no-energy"]
ONNX_BAD = b"\x08\x07" + GARBAGE  # a protobuf-ish prefix, then noise

CASES = [
    # -- plans ------------------------------------------------------------------------------
    Case("plan file missing", "plans", [*EVAL, "--plan", "{tmp}/nosuch.json"], 2, ("plan file", "does not exist")),
    Case("plan is a folder", "plans", [*EVAL, "--plan", "{tmp}/dir.json"], 2, ("is a folder",), {"dir.json": _folder}),
    Case("plan is empty", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("is empty",), {"p.json": b""}),
    Case("plan is binary garbage", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("p.json", "binary"), {"p.json": GARBAGE}),
    Case("plan is a device", "plans", [*EVAL, "--plan", "/dev/zero"], 2, ("not a regular file",)),
    Case("plan is not JSON", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("not valid JSON", "line 1"), {"p.json": b"{default: fp32"}),
    Case("plan repeats a key", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("'default' appears twice",), {"p.json": b'{"default": {}, "default": {}}'}),
    Case("plan absurdly nested", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("nests deeper",), {"p.json": _nested(10_000).encode()}),
    Case("plan precision unknown", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("plan.default.precision", "fp16"), {"p.json": b'{"default": {"precision": "int3"}}'}),
    Case("plan boolean for a ratio", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("prune_ratio", "not true/false"), {"p.json": b'{"default": {"prune_ratio": true}}'}),
    Case("plan NaN ratio", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("NaN",), {"p.json": b'{"default": {"prune_ratio": NaN}}'}),
    Case("plan ratio out of range", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("prune_ratio", "0.95"), {"p.json": b'{"default": {"prune_ratio": 2.0}}'}),
    Case("plan unknown field", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("plan.default.prune", "extra"), {"p.json": b'{"default": {"prune": 0.5}}'}),
    Case("plan not an object", "plans", [*EVAL, "--plan", "{tmp}/p.json"], 2, ("dictionary",), {"p.json": b"[1, 2]"}),
    Case("plan name unknown", "plans", [*EVAL, "--plan", "int3"], 2, ("shipped plans", "fp32")),
    # -- usage ------------------------------------------------------------------------------
    Case("no arguments", "usage", [], 2, ("Usage", "evaluate")),
    Case("unknown command", "usage", ["compres"], 2, ("No such command",)),
    Case("missing option", "usage", ["evaluate"], 2, ("Missing option", "--plan")),
    Case("option of the wrong type", "usage", [*EVAL[:3], "--image-size", "big", "--plan", "fp32"], 2, ("--image-size", "integer")),
    Case("image size past the bound", "usage", [*EVAL[:3], "--image-size", "100000", "--plan", "fp32"], 2, ("--image-size", "1024")),
    Case("zero threads", "usage", [*EVAL, "--threads", "0", "--plan", "fp32"], 2, ("--threads",)),
    Case("input shape not numbers", "usage", [*MEASURE, "{tmp}/m.onnx", "--input-shape", "abc"], 2, ("--input-shape", "comma")),
    Case("unknown option", "usage", ["evaluate", "--bogus"], 2, ("No such option",)),
    # -- devices ----------------------------------------------------------------------------
    Case("device name unknown", "devices", [*EVAL, "--plan", "fp32", "--device", "tpu-v9"], 2, ("unknown device", "x86-cpu")),
    Case("device file missing", "devices", [*EVAL, "--plan", "fp32", "--device", "{tmp}/d.yaml"], 2, ("does not exist",)),
    Case("device file not YAML", "devices", [*EVAL, "--plan", "fp32", "--device", "{tmp}/d.yaml"], 2, ("d.yaml", "not valid YAML", "line"), {"d.yaml": b"kind: [cpu\n"}),
    Case("device infinite power", "devices", [*EVAL, "--plan", "fp32", "--device", "{tmp}/d.yaml"], 2, ("tdp_w", "finite"), {"d.yaml": _device(tdp_w=float("inf"))}),
    Case("device boolean for a number", "devices", [*EVAL, "--plan", "fp32", "--device", "{tmp}/d.yaml"], 2, ("memory_gb", "true/false"), {"d.yaml": _device(memory_gb=True)}),
    Case("device repeats a key", "devices", [*EVAL, "--plan", "fp32", "--device", "{tmp}/d.yaml"], 2, ("'kind' appears twice",), {"d.yaml": _device() + "kind: gpu\n"}),
    Case("device file a list", "devices", [*EVAL, "--plan", "fp32", "--device", "{tmp}/d.yaml"], 2, ("mapping",), {"d.yaml": b"- cpu\n- gpu\n"}),
    Case("device spec incomplete", "devices", [*EVAL, "--plan", "fp32", "--device", "{tmp}/d.yaml"], 2, ("is invalid", "peak_tops"), {"d.yaml": b"kind: cpu\n"}),
    Case("device backend not installed", "devices", [*EVAL, "--plan", "fp32", "--device", "jetson-orin-nano"], 2, ("hadmc[tensorrt]",)),
    # -- weights ----------------------------------------------------------------------------
    Case("weights garbage", "weights", [*EVAL, "--plan", "fp32", "--weights", "{tmp}/w.pt"], 2, ("cannot read weights file", "state_dict"), {"w.pt": GARBAGE}),
    Case("weights a folder", "weights", [*EVAL, "--plan", "fp32", "--weights", "{tmp}/w.pt"], 2, ("is a folder",), {"w.pt": _folder}),
    Case("weights empty", "weights", [*EVAL, "--plan", "fp32", "--weights", "{tmp}/w.pt"], 2, ("is empty",), {"w.pt": b""}),
    Case("weights missing", "weights", [*EVAL, "--plan", "fp32", "--weights", "{tmp}/w.pt"], 2, ("does not exist",)),
    Case("weights hold objects", "weights", [*EVAL, "--plan", "fp32", "--weights", "{tmp}/w.pt"], 2, ("Python objects", "state_dict()"), {"w.pt": _pickled_module}, absent=("weights_only=False", "two options")),
    Case("weights of other classes", "weights", ["evaluate", "--model", "mobilenet_v3_small", "--image-size", "16", "--plan", "fp32", "--weights", "{tmp}/w.pt"], 2, ("do not fit", "classes"), {"w.pt": _other_classes}, absent=("cifar_stem", "num_classes")),
    Case("weights for the default model", "weights", ["evaluate", "--plan", "fp32", "--weights", "{tmp}/w.pt"], 2, ("cannot be combined", "--model"), {"w.pt": GARBAGE}),
    Case("safetensors garbage", "weights", [*EVAL, "--plan", "fp32", "--weights", "{tmp}/w.safetensors"], 2, ("cannot read weights file",), {"w.safetensors": GARBAGE}),
    # -- data -------------------------------------------------------------------------------
    Case("image folder missing", "data", [*EVAL, "--plan", "fp32", "--data", "imagefolder:{tmp}/none"], 2, ("image folder not found", "none")),
    Case("image folder is a file", "data", [*EVAL, "--plan", "fp32", "--data", "imagefolder:{tmp}/f"], 2, ("image folder not found",), {"f": b"x"}),
    Case("corrupt images", "data", [*EVAL, "--plan", "fp32", "--data", "imagefolder:{tmp}/imgs"], 2, ("image", ".png", "cannot be read"), {"imgs": _corrupt_images}),
    Case("CIFAR-10 files missing", "data", [*EVAL, "--plan", "fp32", "--data", "cifar10:{tmp}/c"], 2, ("CIFAR-10 files missing", "data_batch_1"), {"c": _folder}),
    Case("data spec unknown", "data", [*EVAL, "--plan", "fp32", "--data", "mnist"], 2, ("unknown data spec", "imagefolder:PATH")),
    Case("architecture unknown", "data", ["groups", "--model", "resnet1234"], 2, ("unknown architecture", "resnet18")),
    # -- targets ----------------------------------------------------------------------------
    Case("latency backend unknown", "targets", [*MEASURE, "{tmp}/m.onnx", "--target", "ort-fpga"], 2, ("unknown latency probe", "ort-cpu", "remote://host:port")),
    Case("remote address malformed", "targets", [*MEASURE, "{tmp}/m.onnx", "--target", "remote://edge-box"], 2, ("remote://HOST:PORT",)),
    Case("remote probe down", "targets", [*MEASURE, "{tmp}/m.onnx", "--target", "remote://127.0.0.1:{port}"], 2, ("unreachable", "hadmc probe serve")),
    Case("model file missing", "targets", [*MEASURE, "{tmp}/none.onnx"], 2, ("model file", "does not exist")),
    Case("model not ONNX", "targets", [*MEASURE, "{tmp}/bad.onnx"], 2, ("not a valid ONNX model",), {"bad.onnx": ONNX_BAD}),
    Case("token file for a local target", "targets", [*MEASURE, "{tmp}/m.onnx", "--token-file", "{tmp}/m.onnx"], 2, ("remote://",)),
    Case("energy probe unknown", "targets", [*EVAL, "--plan", "fp32", "--energy", "thermometer"], 2, ("unknown energy probe", "rapl")),
    Case("serve open without token", "targets", ["probe", "serve", "--host", "0.0.0.0"], 2, ("refusing to bind", "--token-file")),
    Case("serve with a short token", "targets", ["probe", "serve", "--token-file", "{tmp}/t"], 2, ("too short",), {"t": b"short\n"}),
    # -- output -----------------------------------------------------------------------------
    Case("save onto a file", "output", [*EVAL, "--plan", "fp32", "--save", "{tmp}/artifact.onnx"], 2, ("is a file",)),
    Case("save would replace an artifact", "output", [*EVAL, "--plan", "int8", "--save", "{tmp}/out"], 2, ("int8.onnx", "--overwrite"), {"out": _folder, "out/int8.onnx": b"yesterday"}),
    Case("two plans one file name", "output", [*EVAL, "--plan", "int8", "--plan", "{tmp}/int8.json", "--save", "{tmp}/out2"], 2, ("overwrite each other", "int8.onnx"), {"int8.json": b"{}"}),
    Case("save under a file", "output", [*EVAL, "--plan", "fp32", "--save", "{tmp}/artifact.onnx/sub"], 2, ("output folder",)),
    # -- run configs (`hadmc compress --config`, and the API) --------------------------------
    Case("config missing", "configs", [*COMPRESS, "{tmp}/none.yaml"], 2, ("config file", "does not exist")),
    Case("config empty", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("is empty",), {"c.yaml": b""}),
    Case("config binary", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("binary",), {"c.yaml": GARBAGE}),
    Case("config a folder", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("is a folder",), {"c.yaml": _folder}),
    Case("config repeats a key", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("'model' appears twice",), {"c.yaml": b"model: resnet18\nmodel: vgg11_bn\n"}),
    Case("config infinite duration", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("config.latency.min_seconds", "finite"), {"c.yaml": b"latency: {min_seconds: .inf}\n"}),
    Case("config NaN duration", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("config.energy.window_s", "finite"), {"c.yaml": b"energy: {window_s: .nan}\n"}),
    Case("config boolean for a count", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("config.latency.warmup_runs", "true/false"), {"c.yaml": b"latency: {warmup_runs: true}\n"}),
    Case("config image size past the bound", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("config.image_size", "1024"), {"c.yaml": b"image_size: 100000\n"}),
    Case("config unknown key", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("config.modle", "extra"), {"c.yaml": b"modle: resnet18\n"}),
    Case("config YAML aliases", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("aliases",), {"c.yaml": b"a: &x [1]\nb: *x\n"}),
    Case("config weights a folder", "configs", [*COMPRESS, "{tmp}/c.yaml"], 2, ("config.weights", "is a folder"), {"c.yaml": b"weights: w\n", "w": _folder}),
    Case("config JSON nested (API)", "configs", _config("c.json"), "ConfigError", ("nests deeper",), {"c.json": _nested(50).encode()}),
    Case("zero workers", "configs", ["compress", "--workers", "0"], 2, ("--workers",)),
    Case("executor unknown", "configs", ["compress", "--executor", "slurm"], 2, ("config.execution.executor", "ray")),
    Case("Ray address without the ray executor", "configs", ["compress", "--address", "auto"], 2, ("address names a Ray cluster", "executor: ray")),
    Case("deployed model missing", "configs", ["compress", "--deployed-model", "{tmp}/none.onnx"], 2, ("config.deployed_model", "does not exist")),
    # -- updates of deployed models (`hadmc delta`, `hadmc apply-delta`, `hadmc probe push`) ------
    Case("delta of a file that is not ONNX", "updates", ["delta", "{tmp}/bad.onnx", "{tmp}/m.onnx", "-o", "{tmp}/p"], 2, ("bad.onnx", "not an ONNX model"), {"bad.onnx": ONNX_BAD, "m.onnx": _tiny_onnx_file}),
    Case("patch is garbage", "updates", ["apply-delta", "{tmp}/m.onnx", "{tmp}/p.patch", "-o", "{tmp}/n.onnx"], 2, ("p.patch", "not a patch"), {"m.onnx": _tiny_onnx_file, "p.patch": GARBAGE}),
    Case("patch of another base", "updates", ["apply-delta", "{tmp}/m.onnx", "{tmp}/p.patch", "-o", "{tmp}/n.onnx"], 2, ("was made against", "apply it to the model it was made from"), {"m.onnx": _tiny_onnx_file, "p.patch": _patch_of_other_models}),
    Case("patch file missing", "updates", ["apply-delta", "{tmp}/m.onnx", "{tmp}/none.patch", "-o", "{tmp}/n.onnx"], 2, ("patch file", "does not exist"), {"m.onnx": _tiny_onnx_file}),
    Case("push with a base that is not a hash", "updates", ["probe", "push", "remote://127.0.0.1:{port}", "{tmp}/m.onnx", "--base", "v1"], 2, ("--base", "64 hex digits"), {"m.onnx": _tiny_onnx_file}),
    Case("push to a probe that is down", "updates", ["probe", "push", "remote://127.0.0.1:{port}", "{tmp}/m.onnx"], 2, ("unreachable", "hadmc probe serve"), {"m.onnx": _tiny_onnx_file}),
    # -- the probe server -------------------------------------------------------------------
    Case("server: external data in a Constant", "server", ("POST", "/measure", "constant_node"), 400, ("external data",), absent=("TOPSECRET", "secret.bin")),
    Case("server: external data in an If branch", "server", ("POST", "/measure", "if_branch"), 400, ("external data",), absent=("TOPSECRET", "secret.bin")),
    Case("server: external data in a sparse initializer", "server", ("POST", "/measure", "sparse_initializer"), 400, ("external data",), absent=("TOPSECRET",)),
    Case("server: absurd warm-up", "server", ("POST", "/measure?warmup_runs=1000000000", "model"), 400, ("warmup_runs",)),
    Case("server: NaN seconds", "server", ("POST", "/measure?min_seconds=nan", "model"), 400, ("min_seconds", "finite")),
    Case("server: wrong token", "server", ("GET", "/device", "wrong-token"), 401, ("bearer token",)),
    Case("server: oversized upload", "server", ("POST", "/measure", "oversized"), 413, ("limit",)),
    Case("server: model id not a hash", "server", ("GET", "/models/..etc.passwd", None), 400, ("SHA-256",)),
    Case("server: not ONNX", "server", ("POST", "/measure", "garbage"), 400, ("not a valid ONNX model",)),
    Case("server: tiny delta blocks", "server", ("POST", "/models/{sha}/delta", "tiny-delta"), 400, ("block",)),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _make_files(tmp: Path, files: dict) -> None:
    for name, content in files.items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if callable(content):
            content(path)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)


@pytest.fixture(scope="module")
def server_client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from hadmc.hal.probe_server import create_app

    app = create_app(token=TOKEN, store_dir=tmp_path_factory.mktemp("catalogue-store"), max_bytes=1 << 20, timeout_s=30)
    with TestClient(app) as client:
        yield client


def _server_request(client, tmp: Path, method: str, path: str, body_kind: str | None):
    model = matmul_model(16)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    client.put(f"/models/{sha256_hex(model)}", content=model, headers=auth)
    (tmp / "secret.bin").write_bytes(b"TOPSECRET" * 8)
    bodies = {
        "model": model,
        "garbage": GARBAGE,
        "oversized": b"\x00" * (2 << 20),
        "tiny-delta": json.dumps(dict(make_delta(matmul_model(16, seed=1), initializer_manifest(model, block=4096)), block=16)).encode(),
        **external_data_models("secret.bin"),
    }
    if body_kind == "wrong-token":
        return client.request(method, path, headers={"Authorization": "Bearer not-the-token-at-all"})
    return client.request(method, path.format(sha=sha256_hex(model)), content=bodies.get(body_kind), headers=auth)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.area}: {c.id}" for c in CASES])
def test_bad_input_gets_one_clear_message(case, tmp_path, capsys, monkeypatch, server_client):
    monkeypatch.delenv("HADMC_PROBE_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)
    _make_files(tmp_path, case.files)
    if case.area in ("targets", "usage"):
        (tmp_path / "m.onnx").write_bytes(_tiny_onnx())
    (tmp_path / "artifact.onnx").write_bytes(b"an artifact saved earlier")
    before = _snapshot(tmp_path)
    if callable(case.run):
        with pytest.raises(Exception) as info:
            case.run(tmp_path)
        assert type(info.value).__name__ == case.expect
        message = str(info.value)
    elif isinstance(case.run, tuple):
        resp = _server_request(server_client, tmp_path, *case.run)
        assert resp.status_code == case.expect, resp.text
        message = resp.json()["detail"]
        before = _snapshot(tmp_path)  # the request helper planted the secret file
    else:
        argv = [a.replace("{tmp}", str(tmp_path)).replace("{port}", str(_free_port())) for a in case.run]
        code = main(argv)
        out = capsys.readouterr()
        message = out.out + out.err
        assert code == case.expect, message
        assert "\x1b[" not in message  # no raw ANSI codes when not on a terminal
    assert "Traceback" not in message
    for word in case.words:
        assert word.lower() in message.lower(), f"{word!r} not in: {message}"
    for word in case.absent:
        assert word.lower() not in message.lower(), f"{word!r} in: {message}"
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing existing was touched
    assert not [k for k in after if k not in before and not k.startswith(".hypothesis")], "a file was written"


def _tiny_onnx() -> bytes:
    import torch

    buf = io.BytesIO()
    torch.onnx.export(torch.nn.Linear(4, 2).eval(), torch.randn(1, 4), buf, dynamo=False)
    return buf.getvalue()


def test_the_catalogue_covers_every_area_with_at_least_40_cases(capsys):
    areas = {c.area for c in CASES}
    assert areas == {"plans", "usage", "devices", "weights", "data", "targets", "output", "configs", "updates", "server"}
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    with capsys.disabled():
        print(f"\nbad-input catalogue: {len(CASES)} cases across {len(areas)} areas")
