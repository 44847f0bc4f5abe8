"""What a measurement returns: latency and energy results, plain data shared by every probe."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class LatencyResult(BaseModel):
    """Latency of one artifact on one device, with the raw samples behind the summary."""

    model_config = ConfigDict(extra="forbid")

    median_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cov: float = Field(description="std / mean of the timed samples")
    iterations: int
    threads: int | None
    batch: int
    input_shape: list[int]
    backend: str
    device_id: str
    provenance: Literal["measured", "cached"] = "measured"
    samples_ms: list[float] = Field(default_factory=list)
    settings: dict[str, Any] = Field(default_factory=dict)
    onnx_sha256: str = ""
    wall_s: float = Field(0.0, description="seconds the whole measurement took (session, warm-up, timing)")
    cpu_s: float | None = Field(None, description="CPU seconds this process used meanwhile; against wall_s it shows how much of a core the measurement got")
    load_avg: list[float] = Field(default_factory=list, description="the host's 1, 5 and 15 minute load averages when the measurement ended")
    host: dict[str, Any] = Field(default_factory=dict, description="the machine measured on (a HostInfo: CPU model and ISA, or GPU, driver and clocks)")
    meta: dict[str, Any] = Field(default_factory=dict, description="clocks, temperature, versions where known")


class EnergyResult(BaseModel):
    """Energy per inference and how it was obtained."""

    model_config = ConfigDict(extra="forbid")

    mj_per_inference: float = Field(ge=0)
    provenance: Literal["measured", "estimated", "cached"]
    method: str = Field(description="nvml-counter, nvml-power, rapl, jetson-ina, estimated-tdp")
    window_s: float = 0.0
    iterations: int = 0
    avg_power_w: float | None = None
    detail: dict[str, Any] = Field(default_factory=dict)


class RelativeLatency(BaseModel):
    """A candidate's latency relative to a reference artifact, timed in alternating blocks on
    the same device (see ``hal.interleave``): comparisons that survive a busy machine.

    :param ratio: median over block pairs of candidate block median / reference block median
        (below 1: the candidate is faster)
    :param ratio_low: lower end of the ratio's distribution-free ~95% interval
    :param ratio_high: upper end of that interval
    :param spread: half-width of the interval relative to the ratio
    :param max_spread: the spread asked for; re-measured while above it
    :param noisy: the spread stayed above ``max_spread`` after ``rounds`` rounds
    :param pairs: block pairs measured
    :param rounds: rounds measured (1 + re-measurements)
    :param block_runs: (reference, candidate) runs per block
    :param pair_ratios: the ratio of every block pair, in order
    :param candidate: the candidate's latency from all its timed runs
    :param reference: the reference's latency from all its timed runs
    """

    model_config = ConfigDict(extra="forbid")

    ratio: float
    ratio_low: float
    ratio_high: float
    spread: float
    max_spread: float
    noisy: bool
    pairs: int
    rounds: int
    block_runs: list[int]
    pair_ratios: list[float] = Field(default_factory=list)
    candidate: LatencyResult
    reference: LatencyResult
    provenance: Literal["measured", "cached"] = "measured"
