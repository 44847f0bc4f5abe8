"""Evaluation: the objective vector of one plan and everything needed to trust it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Provenance = Literal["measured", "estimated", "cached", "surrogate"]
#: Objectives and their direction. Accuracy is maximised; the others minimised.
OBJECTIVES: dict[str, Literal["max", "min"]] = {
    "accuracy": "max",
    "latency_ms": "min",
    "energy_mj": "min",
    "model_bytes": "min",
}


class Evaluation(BaseModel):
    """Result of applying and measuring one plan.

    `provenance` holds, per objective name, where its figure came from: `measured` on the
    target, `estimated` from a model of the device, `cached` from an earlier identical
    measurement, or `surrogate` (a test-only stand-in, never reported as a result).
    """

    model_config = ConfigDict(extra="forbid")

    plan_key: str
    plan: dict[str, Any]
    accuracy: float | None = Field(None, description="top-1 in [0, 1] of the exported artifact on the test split")
    latency_ms: float | None = Field(None, description="median latency per inference")
    latency_p90_ms: float | None = None
    latency_cov: float | None = None
    latency_iterations: int | None = None
    energy_mj: float | None = Field(None, description="energy per inference in millijoules")
    model_bytes: int | None = Field(None, description="size of the exported ONNX artifact")
    macs: int | None = None
    params: int | None = None
    provenance: dict[str, Provenance] = Field(default_factory=dict)
    device: str = ""
    probe: dict[str, Any] = Field(default_factory=dict)
    versions: dict[str, str] = Field(default_factory=dict)
    timings: dict[str, float] = Field(default_factory=dict, description="seconds per pipeline stage")
    wall_s: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def objectives(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in OBJECTIVES}
