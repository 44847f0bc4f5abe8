"""Relative latency in alternating blocks: the statistics and the timing loop, checked on
runners that report their own (synthetic) latency, so no figure here depends on this
machine's speed or load."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hal_models import matmul_model

from hadmc.errors import ProbeError
from hadmc.hal import MeasurementCache, RelativeLatency, cached_probe, get_latency_probe, measure_latency_and_energy
from hadmc.hal.interleave import median_interval, relative_spread, time_interleaved

FAST = {"warmup_runs": 2, "warmup_s": 0.0, "min_iterations": 10, "min_seconds": 0.0}


class Clock:
    """Self-timed runners on a shared clock whose load factor drifts with every call."""

    def __init__(self, load=lambda t: 1.0, jitter: float = 0.0, seed: int = 0):
        self.calls = 0
        self.load = load
        self.rng = np.random.default_rng(seed)
        self.jitter = jitter
        self.order: list[str] = []

    def runner(self, name: str, ms: float):
        def run() -> float:
            self.calls += 1
            self.order.append(name)
            noise = 1.0 + self.jitter * self.rng.standard_normal()
            return ms * self.load(self.calls) * max(noise, 0.05)

        return run


def test_median_interval_is_the_binomial_order_statistic_interval():
    values = list(range(1, 101))
    med, lo, hi = median_interval(values)
    assert med == 50.5
    # n = 100: 50 -/+ 1.96 * sqrt(100) / 2 = 40.2 .. 59.8 -> the 40th and 60th order statistics
    assert (lo, hi) == (40.0, 60.0)
    assert relative_spread([2.0] * 12) == 0.0


def test_identical_conditions_give_the_exact_ratio_with_no_spread():
    clock = Clock()
    out = time_interleaved(clock.runner("ref", 10.0), clock.runner("cand", 9.0), self_timed=True, **FAST)
    assert out.pair_ratios and all(r == pytest.approx(0.9) for r in out.pair_ratios)
    assert relative_spread(out.pair_ratios) == 0.0 and out.rounds == 1
    assert len(out.pair_ratios) >= 10 and len(out.pair_ratios) % 2 == 0
    assert min(len(out.reference_ms), len(out.candidate_ms)) >= 10


def test_blocks_alternate_in_abba_order_so_a_drift_cancels():
    clock = Clock()
    out = time_interleaved(clock.runner("ref", 10.0), clock.runner("cand", 10.0), self_timed=True, block_s=0.02, **FAST)
    ref_runs, cand_runs = out.block_runs
    timed = clock.order[-(ref_runs + cand_runs) * len(out.pair_ratios) :]
    blocks = [timed[i] for i in range(0, len(timed), ref_runs)]  # equal block lengths here
    assert blocks[:4] == ["ref", "cand", "cand", "ref"]


def test_a_load_that_changes_by_50_percent_does_not_move_the_ratio():
    # the machine gets busier and quieter (a competing process) while both are timed
    load = lambda t: 1.0 + 0.5 * math.sin(t / 200.0)  # noqa: E731
    clock = Clock(load=load, jitter=0.02)
    out = time_interleaved(clock.runner("ref", 10.0), clock.runner("cand", 9.0), self_timed=True, **FAST)
    med, lo, hi = median_interval(out.pair_ratios)
    assert med == pytest.approx(0.9, rel=0.01)
    assert lo <= 0.9 <= hi
    # two medians taken one after the other on the same drifting machine: far off
    seq = Clock(load=load, jitter=0.02)
    n = len(out.reference_ms)
    ref, cand = seq.runner("ref", 10.0), seq.runner("cand", 9.0)
    separate = np.median([cand() for _ in range(n)]) / np.median([ref() for _ in range(n)])
    assert abs(separate - 0.9) > 0.05


def test_a_spread_above_the_bound_is_remeasured_and_then_flagged_noisy():
    clock = Clock(jitter=0.5, seed=1)
    out = time_interleaved(clock.runner("ref", 10.0), clock.runner("cand", 9.0), self_timed=True, max_spread=0.001, max_rounds=3, **FAST)
    assert out.rounds == 3 and relative_spread(out.pair_ratios) > 0.001
    calm = time_interleaved(Clock().runner("ref", 10.0), Clock().runner("cand", 9.0), self_timed=True, max_spread=0.001, max_rounds=3, **FAST)
    assert calm.rounds == 1


def test_measure_relative_records_both_artifacts_the_ratio_its_interval_and_the_host(fast_timing):
    probe = get_latency_probe("ort-cpu", **fast_timing)
    big, small = matmul_model(64), matmul_model(8)
    rel = probe.measure_relative(small, big)
    assert isinstance(rel, RelativeLatency) and rel.provenance == "measured"
    assert rel.ratio_low <= rel.ratio <= rel.ratio_high and rel.spread >= 0
    assert rel.noisy == (rel.spread > rel.max_spread) and rel.rounds >= 1
    assert rel.pairs == len(rel.pair_ratios) >= 10
    for part, model in ((rel.candidate, small), (rel.reference, big)):
        assert part.iterations >= fast_timing["min_iterations"]
        assert part.host["cpu_model"] and part.host["kind"] == "cpu"
        assert len(part.load_avg) == 3 and part.cpu_s is not None and part.cpu_s >= 0
    assert rel.candidate.onnx_sha256 != rel.reference.onnx_sha256
    assert rel.candidate.settings["relative"]["max_spread"] == 0.02


def test_one_call_measures_latency_against_a_reference_then_energy(fast_timing):
    probe = get_latency_probe("ort-cpu", **fast_timing)
    m = measure_latency_and_energy(probe, matmul_model(8), probe.energy_probe("estimated"), reference=matmul_model(32), relative_options={"max_rounds": 1})
    assert m.relative is not None and m.latency is m.relative.candidate
    assert m.energy is not None and m.energy.detail["latency_ms"] == m.latency.median_ms


def test_a_comparison_is_cached_like_a_measurement(tmp_path, fast_timing):
    probe = cached_probe(get_latency_probe("ort-cpu", **fast_timing), MeasurementCache(tmp_path / "run.db"))
    first = probe.measure_relative(matmul_model(8), matmul_model(16), max_rounds=1)
    again = probe.measure_relative(matmul_model(8), matmul_model(16), max_rounds=1)
    assert first.provenance == "measured" and again.provenance == "cached"
    assert again.ratio == first.ratio and again.candidate.provenance == "cached"
    other = probe.measure_relative(matmul_model(8), matmul_model(16), max_rounds=2)
    assert other.provenance == "measured"  # other options, other key


def test_unknown_relative_options_and_the_torch_probe_are_refused(fast_timing):
    with pytest.raises(ProbeError, match="max_spread"):
        get_latency_probe("ort-cpu", **fast_timing).measure_relative(matmul_model(8), matmul_model(8), spread=0.1)
    with pytest.raises(ProbeError, match="ONNX probe"):
        get_latency_probe("torch").measure_relative(None, None)
