from __future__ import annotations

import sqlite3
import time

import pytest
from hal_models import matmul_model

from hadmc.hal import EnergyResult, MeasurementCache, cached_probe, get_latency_probe
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
    p1 = get_latency_probe("ort-cpu", **fast_timing)
    r_a = p1.measure(a, cache=cache)
    assert p1.measure(b, cache=cache).provenance == "measured"
    assert p1.measure(a, input_shape=(4, 8), cache=cache).provenance == "measured"
    p2 = get_latency_probe("ort-cpu", threads=2, **fast_timing)
    assert p2.measure(a, cache=cache).provenance == "measured"
    assert cache.get(r_a.onnx_sha256, "some-other-device", r_a.settings) is None
    assert cache.get(r_a.onnx_sha256, r_a.device_id, r_a.settings).provenance == "cached"
    assert len(cache) == 4


def test_disabled_cache_never_hits(tmp_path, fast_timing):
    cache = MeasurementCache(tmp_path / "run.db", enabled=False)
    probe = get_latency_probe("ort-cpu", **fast_timing)
    data = matmul_model()
    assert probe.measure(data, cache=cache).provenance == "measured"
    assert probe.measure(data, cache=cache).provenance == "measured"


def test_cache_persists_across_instances_and_owns_only_hal_tables(tmp_path, fast_timing):
    db = tmp_path / "hadmc.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE evaluations (id INTEGER PRIMARY KEY)")
    data = matmul_model()
    get_latency_probe("ort-cpu", **fast_timing).measure(data, cache=MeasurementCache(db))
    again = get_latency_probe("ort-cpu", **fast_timing).measure(data, cache=MeasurementCache(db))
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
