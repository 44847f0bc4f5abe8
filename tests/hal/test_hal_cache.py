from __future__ import annotations

import sqlite3
import time

import pytest
from hal_models import matmul_model

from hadmc.hal import EnergyProbe, EnergyResult, EstimatedEnergyProbe, MeasurementCache, cached_probe, get_latency_probe, measure_latency_and_energy
from hadmc.hal.cache import TABLE


def test_cache_hit_returns_cached_result_without_remeasuring(tmp_path, tiny_cnn_bytes, fast_timing):
    cache = MeasurementCache(tmp_path / "run.db")
    probe = cached_probe(get_latency_probe("ort-cpu", **fast_timing), cache)
    first = probe.measure(tiny_cnn_bytes)
    t0 = time.perf_counter()
    second = probe.measure(tiny_cnn_bytes)
    elapsed = time.perf_counter() - t0
    assert first.provenance == "measured"
    assert second.provenance == "cached"
    assert second.meta["cached_from"] == "measured"
    assert second.samples_ms == first.samples_ms and second.median_ms == first.median_ms
    # a re-measurement takes at least warm-up + min_seconds (0.1 s); a hit is a SQLite read
    assert elapsed < 0.05
    assert len(cache) == 1


def test_cache_key_separates_artifacts_devices_and_settings(tmp_path, fast_timing):
    cache = MeasurementCache(tmp_path / "run.db")
    a, b = matmul_model(8, seed=0), matmul_model(8, seed=1)
    p1 = cached_probe(get_latency_probe("ort-cpu", **fast_timing), cache)
    r_a = p1.measure(a)
    assert p1.measure(b).provenance == "measured"
    assert p1.measure(a, input_shape=(4, 8)).provenance == "measured"
    p2 = cached_probe(get_latency_probe("ort-cpu", threads=2, **fast_timing), cache)
    assert p2.measure(a).provenance == "measured"
    assert cache.get(r_a.onnx_sha256, "some-other-device", r_a.settings) is None
    assert cache.get(r_a.onnx_sha256, r_a.device_id, r_a.settings).provenance == "cached"
    assert len(cache) == 4


def test_disabled_cache_never_hits(tmp_path, fast_timing):
    cache = MeasurementCache(tmp_path / "run.db", enabled=False)
    probe = cached_probe(get_latency_probe("ort-cpu", **fast_timing), cache)
    data = matmul_model()
    assert probe.measure(data).provenance == "measured"
    assert probe.measure(data).provenance == "measured"


def test_cache_persists_across_instances_and_owns_only_hal_tables(tmp_path, fast_timing):
    db = tmp_path / "hadmc.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE evaluations (id INTEGER PRIMARY KEY)")
    data = matmul_model()
    cached_probe(get_latency_probe("ort-cpu", **fast_timing), MeasurementCache(db)).measure(data)
    again = cached_probe(get_latency_probe("ort-cpu", **fast_timing), db).measure(data)
    assert again.provenance == "cached"
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"evaluations", TABLE}
    assert TABLE.startswith("hal_")


def test_energy_results_round_trip_with_cached_provenance(tmp_path):
    cache = MeasurementCache(tmp_path / "run.db")
    e = EnergyResult(mj_per_inference=1.5, provenance="estimated", method="estimated-tdp")
    cache.put_energy("ab" * 32, "dev", {"energy": "estimated"}, e)
    hit = cache.get_energy("ab" * 32, "dev", {"energy": "estimated"})
    assert hit.provenance == "cached" and hit.detail["cached_from"] == "estimated"
    assert hit.mj_per_inference == pytest.approx(1.5)


def test_measured_energy_is_cached_by_artifact_and_estimates_are_not(tmp_path, fast_timing):
    class CountingEnergy(EnergyProbe):
        name = "counting"
        calls = 0

        def measure(self, run_once, latency=None):
            CountingEnergy.calls += 1
            return EnergyResult(mj_per_inference=2.0, provenance="measured", method="test")

    cache = MeasurementCache(tmp_path / "run.db")
    latency = cached_probe(get_latency_probe("ort-cpu", **fast_timing), cache)
    spec = latency.device
    data = matmul_model()
    first = measure_latency_and_energy(latency, data, cached_probe(CountingEnergy(spec), cache))
    again = measure_latency_and_energy(latency, data, cached_probe(CountingEnergy(spec), cache))
    assert CountingEnergy.calls == 1
    assert first.energy.provenance == "measured" and again.energy.provenance == "cached"
    assert again.latency.provenance == "cached"
    estimate = cached_probe(EstimatedEnergyProbe(spec), cache)
    assert measure_latency_and_energy(latency, data, estimate).energy.provenance == "estimated"
    assert measure_latency_and_energy(latency, data, estimate).energy.provenance == "estimated"


def test_probes_know_nothing_of_the_cache():
    import inspect

    from hadmc.hal import LatencyProbe, OrtCpuProbe, TorchEagerProbe
    from hadmc.hal.remote import RemoteProbe

    for cls in (LatencyProbe, OrtCpuProbe, TorchEagerProbe, RemoteProbe):
        assert "cache" not in inspect.signature(cls.measure).parameters
