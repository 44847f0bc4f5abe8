from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
from hal_models import matmul_model

from hadmc.errors import ProbeError
from hadmc.hal import ENERGY_PROBES, EstimatedEnergyProbe, get_energy_probe, get_latency_probe, load_device_spec
from hadmc.hal.energy import (
    NVML_COUNTER_MODULUS,
    JetsonEnergyProbe,
    PowerSampler,
    RaplEnergyProbe,
    counter_delta,
    integrate_power,
    jetson_rails,
    rapl_package_domains,
)


def test_counter_delta_handles_wrap_around():
    assert counter_delta(100, 350, NVML_COUNTER_MODULUS) == 250
    assert counter_delta(NVML_COUNTER_MODULUS - 50, 70, NVML_COUNTER_MODULUS) == 120
    # RAPL wraps at max_energy_range_uj
    assert counter_delta(262_143_000_000, 1_000, 262_143_328_850) == 328_850 + 1_000


def test_integrate_power_of_a_recorded_series_is_exact_for_piecewise_linear_power():
    t = [0.0, 0.1, 0.2, 0.4, 1.0]
    p = [100.0, 100.0, 200.0, 200.0, 100.0]
    # 0.1*100 + 0.1*150 + 0.2*200 + 0.6*150 = 10 + 15 + 40 + 90
    assert integrate_power(t, p) == pytest.approx(155.0)
    assert integrate_power(np.linspace(0, 2, 41), np.full(41, 50.0)) == pytest.approx(100.0)
    with pytest.raises(ProbeError):
        integrate_power([0.0], [1.0])
    with pytest.raises(ProbeError):
        integrate_power([0.0, 0.0], [1.0, 1.0])


def test_power_sampler_samples_at_requested_rate_and_integrates_constant_power():
    with PowerSampler(lambda: 10.0, hz=50) as sampler:
        time.sleep(0.3)
    assert len(sampler.watts) >= 10
    span = sampler.times[-1] - sampler.times[0]
    assert sampler.energy_j() == pytest.approx(10.0 * span)


def test_estimated_energy_on_this_machine_says_estimated(fast_timing):
    probe = get_latency_probe("ort-cpu", spinning=False, **fast_timing)
    data = matmul_model()
    lat = probe.measure(data)
    energy = get_energy_probe("auto", probe.device)
    result = energy.measure(probe.prepare(data), lat)
    if isinstance(energy, EstimatedEnergyProbe):
        assert result.provenance == "estimated" and result.method == "estimated-tdp"
        assert "fallback_reason" in result.detail
        cores = probe.device.host["cores"]
        watts = probe.device.idle_w + min(1.0, 1 / cores) * (probe.device.tdp_w - probe.device.idle_w)
        assert result.mj_per_inference == pytest.approx(lat.median_ms * watts)
    else:
        assert result.provenance == "measured"


def test_estimated_energy_without_latency_times_the_callable():
    spec = load_device_spec("jetson-orin-nano")
    result = EstimatedEnergyProbe(spec, utilisation=0.5, window_s=0.1).measure(lambda: time.sleep(0.001))
    assert result.provenance == "estimated" and result.iterations >= 10
    watts = 4 + 0.5 * (15 - 4)
    assert result.avg_power_w == pytest.approx(watts)
    assert result.mj_per_inference == pytest.approx(result.detail["latency_ms"] * watts)


def test_rapl_reads_package_counters_and_wraps(tmp_path):
    pkg = tmp_path / "intel-rapl:0"
    (pkg / "intel-rapl:0:0").mkdir(parents=True)
    (pkg / "name").write_text("package-0\n")
    (pkg / "intel-rapl:0:0" / "name").write_text("core\n")
    (pkg / "max_energy_range_uj").write_text("1000000\n")
    (pkg / "energy_uj").write_text("999000\n")
    assert rapl_package_domains(tmp_path) == [pkg]
    probe = RaplEnergyProbe(load_device_spec("x86-cpu"), root=tmp_path, window_s=0.05, warmup_runs=0)
    calls = []

    def run_once():
        calls.append(1)
        if len(calls) == 1:  # the counter wraps while the window runs
            (pkg / "energy_uj").write_text("4000\n")

    result = probe.measure(run_once)
    assert result.provenance == "measured" and result.method == "rapl"
    assert result.mj_per_inference == pytest.approx(5.0 / len(calls))  # 5000 uJ over the window


def test_rapl_root_only_counter_gives_a_clear_message(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root can read any file")
    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "name").write_text("package-0\n")
    (pkg / "energy_uj").write_text("1\n")
    (pkg / "energy_uj").chmod(0o000)
    with pytest.raises(ProbeError, match="root"):
        RaplEnergyProbe(load_device_spec("x86-cpu"), root=tmp_path)


def test_jetson_rails_found_in_hwmon_and_iio_layouts(tmp_path):
    hw = tmp_path / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    hw.mkdir(parents=True)
    (hw / "in1_label").write_text("VDD_IN\n")
    (hw / "in1_input").write_text("5000\n")  # mV
    (hw / "curr1_input").write_text("1200\n")  # mA
    (hw / "in2_label").write_text("VDD_CPU_GPU_CV\n")
    (hw / "in2_input").write_text("5000\n")
    (hw / "curr2_input").write_text("400\n")
    iio = tmp_path / "ina3221x" / "7-0040" / "iio:device0"
    iio.mkdir(parents=True)
    (iio / "rail_name_0").write_text("POM_5V_GPU\n")
    (iio / "in_power0_input").write_text("2500\n")  # mW
    rails = jetson_rails(tmp_path)
    assert rails["VDD_IN"]() == pytest.approx(6.0)
    assert rails["VDD_CPU_GPU_CV"]() == pytest.approx(2.0)
    assert rails["POM_5V_GPU"]() == pytest.approx(2.5)
    probe = JetsonEnergyProbe(load_device_spec("jetson-orin-nano"), root=tmp_path, window_s=0.3, warmup_runs=0)
    assert probe.rail == "VDD_IN"
    result = probe.measure(lambda: time.sleep(0.002))
    assert result.provenance == "measured" and result.method == "jetson-ina"
    # constant 6 W: the figure depends on no timing (the sampler's span brackets the window)
    assert result.avg_power_w == pytest.approx(6.0, rel=1e-9)
    assert result.mj_per_inference == pytest.approx(6.0 * result.window_s * 1000 / result.iterations, rel=1e-9)


def test_auto_falls_back_to_estimate_with_reason_when_no_counter_exists():
    probe = get_energy_probe("auto", load_device_spec("jetson-orin-nano"))
    if not isinstance(probe, EstimatedEnergyProbe):
        pytest.skip("this machine has a measured energy source for this device kind")
    assert "jetson" in probe.reason


def test_unknown_energy_probe_lists_valid_ones():
    with pytest.raises(ProbeError, match="unknown energy probe 'thermometer'; valid: estimated, jetson, nvml, rapl, or auto"):
        get_energy_probe("thermometer", load_device_spec("x86-cpu"))
    assert ENERGY_PROBES.get("estimated") is EstimatedEnergyProbe


@pytest.mark.gpu
def test_nvml_counter_measures_gpu_energy_when_present(fast_timing):
    if importlib.util.find_spec("pynvml") is None:
        pytest.skip("nvidia-ml-py is not installed (pip install 'hadmc[gpu]')")
    import pynvml

    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        pytest.skip(f"no NVIDIA driver/GPU: {exc}")
    probe = get_energy_probe("nvml", load_device_spec("local-gpu"), window_s=2.0)
    result = probe.measure(lambda: time.sleep(0.001))
    assert result.provenance == "measured" and result.method in ("nvml-counter", "nvml-power")
    assert result.window_s >= 2.0 and result.avg_power_w > 0
