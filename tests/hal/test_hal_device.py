from __future__ import annotations

import numpy as np
import pytest

from hadmc.errors import ConfigError
from hadmc.hal import FEATURE_DIM, DeviceSpec, detect_local, list_devices, load_device_spec
from hadmc.hal.device import cpu_spec_from_info, gpu_spec_from_info

BUNDLED = ["x86-cpu", "jetson-orin-nano", "jetson-agx-orin", "rtx-4090", "a100", "h100"]


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_device_specs_load_with_finite_fixed_length_features(name):
    spec = load_device_spec(name)
    assert spec.name == name
    feats = spec.state_features()
    assert feats.shape == (FEATURE_DIM,) and feats.dtype == np.float32
    assert np.all(np.isfinite(feats)) and feats.min() >= 0.0 and feats.max() <= 1.0
    assert set(spec.precisions) <= {"fp32", "fp16", "int8"}


def test_list_devices_names_bundled_specs_and_local():
    names = list_devices()
    assert set(BUNDLED) <= set(names) and "local" in names


def test_features_tell_devices_apart():
    h100, nano, cpu = (load_device_spec(n).state_features() for n in ("h100", "jetson-orin-nano", "x86-cpu"))
    assert not np.allclose(h100, nano) and not np.allclose(nano, cpu)
    assert h100[3] > nano[3] > cpu[3]  # log fp32 peak ordering


def test_device_id_is_stable_and_changes_when_a_figure_changes():
    a, b = load_device_spec("rtx-4090"), load_device_spec("rtx-4090")
    assert a.id == b.id and a.id.startswith("rtx-4090-")
    edited = a.model_copy(update={"tdp_w": 300.0})
    assert edited.id != a.id


def test_unknown_device_lists_valid_names():
    with pytest.raises(ConfigError, match="rtx-4090"):
        load_device_spec("rtx-9999")


def test_user_yaml_path_and_invalid_fields_give_config_errors(tmp_path):
    good = tmp_path / "my-board.yaml"
    good.write_text(
        "kind: edge-gpu\npeak_tops: {fp32: 1.0, int8: 8.0}\nmemory_bandwidth_gbs: 30\nmemory_gb: 4\n"
        "tdp_w: 10\nidle_w: 2\nprecisions: [fp32, int8]\nbackend: remote://board:8765\n"
    )
    spec = load_device_spec(good)
    assert spec.name == "my-board" and spec.backend == "remote://board:8765"
    assert load_device_spec("my-board", search_dir=tmp_path).id == spec.id
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: tpu\npeak_tops: {fp32: 1}\nmemory_bandwidth_gbs: 1\nmemory_gb: 1\ntdp_w: 1\nidle_w: 0\nprecisions: [fp32]\n")
    with pytest.raises(ConfigError, match="kind"):
        load_device_spec(bad)
    missing_peak = tmp_path / "nopeak.yaml"
    missing_peak.write_text("kind: cpu\npeak_tops: {fp32: 1}\nmemory_bandwidth_gbs: 1\nmemory_gb: 1\ntdp_w: 1\nidle_w: 0\nprecisions: [fp32, int8]\n")
    with pytest.raises(ConfigError, match="int8"):
        load_device_spec(missing_peak)
    with pytest.raises(ConfigError, match="does not exist"):
        load_device_spec(tmp_path / "absent.yaml")


def test_detect_local_describes_this_cpu():
    spec = detect_local("cpu")
    assert spec.kind == "cpu" and spec.backend == "ort-cpu"
    assert spec.host["cores"] >= 1 and spec.memory_gb > 0
    assert "peak_tops" in spec.estimated_fields  # the OS does not report peaks
    assert load_device_spec("local-cpu").id == spec.id  # stable within and across calls
    flags = set(open("/proc/cpuinfo").read().split()) if __import__("os").path.exists("/proc/cpuinfo") else set()
    assert spec.vnni == bool({"avx512_vnni", "avx_vnni"} & flags)


def test_cpu_spec_peaks_follow_isa_flags():
    plain = cpu_spec_from_info("x", {"avx2", "fma"}, 3000.0, 4, 16.0)
    vnni = cpu_spec_from_info("x", {"avx512f", "avx512_vnni"}, 3000.0, 4, 16.0)
    assert plain.peak_tops["fp32"] == pytest.approx(4 * 3.0 * 8 * 4 / 1000)
    assert vnni.peak_tops["fp32"] == pytest.approx(2 * plain.peak_tops["fp32"])
    assert vnni.vnni and vnni.peak_tops["int8"] == pytest.approx(4 * vnni.peak_tops["fp32"])
    assert not plain.vnni and plain.peak_tops["int8"] == pytest.approx(2 * plain.peak_tops["fp32"])


def test_gpu_spec_takes_peaks_from_a_matching_bundled_spec():
    spec = gpu_spec_from_info("NVIDIA H100 80GB HBM3", 85.0, 700.0, (9, 0), uuid="GPU-1")
    assert spec.peak_tops == load_device_spec("h100").peak_tops
    assert spec.tensor_cores and spec.host["uuid"] == "GPU-1"
    unknown = gpu_spec_from_info("NVIDIA Quadro Mystery", 8.0, 100.0, (6, 1))
    assert unknown.kind == "gpu" and "peak_tops" in unknown.estimated_fields and not unknown.tensor_cores


def test_device_spec_rejects_idle_above_tdp():
    with pytest.raises(ValueError, match="idle_w"):
        DeviceSpec(name="x", kind="cpu", peak_tops={"fp32": 1.0}, memory_bandwidth_gbs=1, memory_gb=1, tdp_w=5, idle_w=10, precisions=["fp32"])
