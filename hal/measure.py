"""Measure an artifact: latency, then energy, in one call.

Every caller that wants both figures (the evaluator, ``hadmc probe measure``, the probe
server, the benchmarks) calls ``measure_latency_and_energy``, so the order, the lazily opened
energy session and the timing of each part are written once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .energy import EnergyProbe
from .latency import LatencyProbe
from .results import EnergyResult, LatencyResult, RelativeLatency


@dataclass(frozen=True)
class Measurement:
    """What one call measured.

    :param latency: the latency result (``measured`` or ``cached``); with a reference, the
        candidate's result of the interleaved measurement
    :param energy: energy per inference, or None when no energy probe was given
    :param relative: latency relative to the reference (ratio and spread), or None
    :param latency_s: seconds spent on latency (zero-ish for a cache hit)
    :param energy_s: seconds spent on energy
    """

    latency: LatencyResult
    energy: EnergyResult | None = None
    relative: RelativeLatency | None = None
    latency_s: float = 0.0
    energy_s: float = 0.0


def lazy_runner(probe: LatencyProbe, model: Any, input_shape: tuple[int, ...] | None = None) -> Callable[[], None]:
    """One inference of ``model`` per call; the session opens on the first call only, so an
    energy probe that estimates from the latency result never pays for one."""
    prepared: Callable[[], None] | None = None

    def run_once() -> None:
        nonlocal prepared
        if prepared is None:
            prepared = probe.prepare(model, input_shape)
        prepared()

    return run_once


def measure_latency_and_energy(
    latency_probe: LatencyProbe,
    model: Any,
    energy_probe: EnergyProbe | None = None,
    *,
    input_shape: tuple[int, ...] | None = None,
    reference: Any = None,
    relative_options: dict[str, Any] | None = None,
    measured: Measurement | None = None,
) -> Measurement:
    """Latency of ``model`` on ``latency_probe``, then (when ``energy_probe`` is given) its
    energy per inference from back-to-back runs in the same runtime and settings.

    :param latency_probe: a latency probe, or one wrapped by ``cached_probe``
    :param model: ONNX bytes or path (an ``nn.Module`` for the torch probe)
    :param energy_probe: an energy probe (``latency_probe.energy_probe()`` picks the one that
        measures where the latency is measured), or None for latency only
    :param input_shape: shape of the first input; read from the graph if None
    :param reference: an artifact to time ``model`` against in alternating blocks (e.g. the
        uncompressed model): the result then carries the ratio and its spread, which survive
        a busy machine where two separate medians do not
    :param relative_options: options of ``measure_relative`` (``max_spread``, ``max_rounds``...)
    :param measured: latency already measured on an artifact of the same graph (e.g. before
        recovery changed only its weights): reused, so only energy is measured here
    """
    t0 = time.perf_counter()
    relative = None
    if measured is not None:
        latency, relative = measured.latency, measured.relative
    elif reference is not None:
        relative = latency_probe.measure_relative(model, reference, input_shape, **(relative_options or {}))
        latency = relative.candidate
    else:
        latency = latency_probe.measure(model, input_shape)
    t1 = time.perf_counter()
    energy = None
    if energy_probe is not None:
        energy = energy_probe.measure(lazy_runner(latency_probe, model, input_shape), latency)
    latency_s = measured.latency_s if measured is not None else t1 - t0
    return Measurement(latency, energy, relative, latency_s=latency_s, energy_s=time.perf_counter() - t1)
