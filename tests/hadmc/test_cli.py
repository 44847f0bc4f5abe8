"""The CLI: one clear message and a non-zero exit for bad input, never a traceback."""

import json
import subprocess
import sys

import pytest


def hadmc(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "hadmc.cli", *args], capture_output=True, text=True, timeout=timeout)


def test_version_and_help():
    from hadmc import __version__

    out = hadmc("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    helptext = hadmc("--help").stdout
    for command in ("evaluate", "pretrain", "groups", "probe"):
        assert command in helptext


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "resnet1234"], "unknown architecture"),
        (["--model", "resnet18", "--weights", "WEIGHTS"], "cannot read"),
        (["--model", "resnet18", "--data", "imagefolder:/nonexistent/folder"], "/nonexistent/folder"),
        (["--model", "resnet18", "--data", "cifar10:/nonexistent/cifar"], "/nonexistent/cifar"),
        (["--plan", "no-such-plan"], "shipped plans"),
    ],
)
def test_bad_input_gives_one_clear_error(tmp_path, args, message):
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"this is not a checkpoint")
    args = [str(bad) if a == "WEIGHTS" else a for a in args]
    if "--plan" not in args:
        args += ["--plan", "fp32"]
    out = hadmc("evaluate", *args)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert message.lower() in (out.stderr + out.stdout).lower()


def test_invalid_plan_file_names_the_field(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"default": {"precision": "int3"}}))
    out = hadmc("evaluate", "--model", "resnet18", "--plan", str(plan))
    assert out.returncode == 2
    assert "plan.default.precision" in out.stderr and "Traceback" not in out.stderr


def test_evaluate_json_compares_original_and_plan_with_measured_figures(tmp_path):
    out = hadmc("evaluate", "--model", "resnet18", "--image-size", "16", "--plan", "int8", "--energy", "estimated", "--json", "--save", str(tmp_path))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    base, int8 = report["original"], report["plans"]["int8"]
    assert int8["latency_ratio"] > 0 and int8["host_mismatch"] == []  # --device local describes this host
    for ev in (base, int8):
        assert ev["host"]["cpu_model"] and len(ev["load_avg"]) == 3
        assert ev["error"] is None
        assert ev["latency_ms"] > 0 and ev["provenance"]["latency_ms"] in ("measured", "cached")
        assert ev["provenance"]["energy_mj"] == "estimated"
        assert 0.0 <= ev["accuracy"] <= 1.0
    assert int8["model_bytes"] < 0.5 * base["model_bytes"]
    assert int8["macs"] == base["macs"]  # quantization alone removes no work
    saved = tmp_path / "int8.onnx"
    assert saved.stat().st_size == int8["model_bytes"]  # the measured artifact is the one saved


def test_error_text_with_brackets_reaches_the_user_intact():
    # rich markup would swallow "[tensorrt]" in the install hint
    out = hadmc("evaluate", "--model", "resnet18", "--device", "jetson-orin-nano", "--plan", "fp32")
    assert out.returncode == 2 and "hadmc[tensorrt]" in out.stderr


def test_groups_lists_the_names_a_plan_may_use():
    out = hadmc("groups", "--model", "resnet18", "--json")
    assert out.returncode == 0, out.stderr
    groups = json.loads(out.stdout)
    assert len(groups) == 13 and groups[0]["name"] == "conv1" and groups[0]["kind"] == "stem"
    assert groups[-1]["name"] == "fc" and groups[-1]["prunable"] is False


def test_evaluate_flags_a_device_spec_that_does_not_describe_the_measuring_host(tmp_path):
    spec = tmp_path / "imaginary.yaml"
    spec.write_text(
        "kind: cpu\npeak_tops: {fp32: 0.9, int8: 1.8}\nmemory_bandwidth_gbs: 50\nmemory_gb: 32\ntdp_w: 65\nidle_w: 10\n"
        "precisions: [fp32, int8]\nhost: {cpu_model: Imaginary CPU 9000, cores: 64}\n"
    )
    out = hadmc("evaluate", "--model", "resnet18", "--image-size", "16", "--plan", "int8", "--energy", "none", "--device", str(spec))
    assert out.returncode == 0, out.stderr
    assert "\u00a7" in out.stdout and "does not describe" in out.stdout and "Imaginary CPU 9000" in out.stdout
    assert "load average" in out.stdout


def test_an_internal_error_is_one_line_without_a_traceback_unless_verbose(monkeypatch, capsys):
    import hadmc.cli as cli

    def broken(spec):
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "load_plan", broken)
    assert cli.main(["evaluate", "--plan", "fp32"]) == 70
    err = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in err and "--verbose" in err and "Traceback" not in err
    assert cli.main(["--verbose", "evaluate", "--plan", "fp32"]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_usage_errors_are_caught_whichever_click_typer_ships():
    import typer

    from hadmc.cli import _usage_errors

    names = {f"{cls.__module__}.{cls.__name__}" for cls in _usage_errors()}
    assert any(issubclass(typer.BadParameter, cls) for cls in _usage_errors())
    assert "click.exceptions.ClickException" in names  # click's own, for typer versions that use it
