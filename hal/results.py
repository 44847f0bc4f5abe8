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
