"""Where a figure was measured: the host's identity, and whether a device spec describes it."""

from __future__ import annotations

from hal_models import matmul_model

from hadmc.hal import HostInfo, describe_host, detect_local, get_latency_probe, load_device_spec, spec_mismatches

EPYC_2C = HostInfo(cpu_model="AMD EPYC 7B13", cpu_cores=2, cpu_mhz=2600, isa=["avx2", "avx512f", "avx512_vnni", "fma"])
DESKTOP_8C = HostInfo(cpu_model="Intel Core i7-9700", cpu_cores=8, cpu_mhz=3500, isa=["avx2", "fma"])
H100 = HostInfo(kind="gpu", cpu_model="AMD EPYC", cpu_cores=16, gpu_name="NVIDIA H100 80GB HBM3", gpu_uuid="GPU-1", gpu_driver="560.35")


def test_this_machine_is_described_with_its_cpu_model_and_isa():
    host = describe_host()
    assert host.kind == "cpu" and host.source == "local" and host.cpu_cores >= 1 and host.cpu_model
    assert all(f.startswith(("avx", "amx", "fma", "sse4", "f16c", "asimd", "sve", "neon", "i8mm", "bf16")) for f in host.isa)
    assert host.cpu_model in host.summary()


def test_the_detected_spec_describes_this_machine_and_a_changed_model_does_not():
    local = detect_local("cpu")
    assert spec_mismatches(local, describe_host()) == []
    other = local.model_copy(update={"host": {**local.host, "cpu_model": "Imaginary CPU 9000"}})
    assert "Imaginary CPU 9000" in spec_mismatches(other, describe_host())[0]


def test_the_generic_avx2_desktop_spec_describes_a_desktop_but_not_a_two_core_vnni_server():
    spec = load_device_spec("x86-cpu")
    assert spec_mismatches(spec, DESKTOP_8C) == []
    reasons = spec_mismatches(spec, EPYC_2C)
    assert any("VNNI" in r for r in reasons) and any("peak fp32" in r for r in reasons)


def test_gpu_specs_must_name_the_measuring_gpu():
    assert spec_mismatches(load_device_spec("h100"), H100) == []
    assert "does not name this GPU" in spec_mismatches(load_device_spec("rtx-4090"), H100)[0]
    assert "describes a GPU" in spec_mismatches(load_device_spec("h100"), EPYC_2C)[0]
    assert "describes a CPU" in spec_mismatches(load_device_spec("x86-cpu"), H100)[0]


def test_every_measured_figure_records_its_host_load_and_cpu_time(fast_timing):
    r = get_latency_probe("ort-cpu", **fast_timing).measure(matmul_model())
    assert HostInfo.model_validate(r.host) == describe_host()
    assert len(r.load_avg) == 3 and r.cpu_s is not None and 0 <= r.cpu_s
