"""CompressionPlan: what to do to each layer group, plus the global recovery settings.

A plan is plain data (pydantic, JSON). `default` applies to every layer group the plan
does not name in `groups`; `resolve(names)` spells the decision out for every group so
that two plans that do the same thing have the same canonical JSON and key.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from .errors import PlanError
from .files import write_atomic, parse_json_strict, read_user_text
from .validation import StrictModel

Precision = Literal["fp32", "fp16", "int8"]
Fusion = Literal["none", "conv_bn", "conv_bn_act"]
UpdateScope = Literal["head", "last_stage", "half", "full"]

PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
FUSIONS: tuple[str, ...] = ("none", "conv_bn", "conv_bn_act")
UPDATE_SCOPES: tuple[str, ...] = ("head", "last_stage", "half", "full")
#: Largest prune ratio a plan may ask for; a group always keeps some channels.
MAX_PRUNE_RATIO = 0.95
#: The default discrete grid of the search (0.0 .. 0.9 step 0.1).
PRUNE_GRID: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(10))


_Strict = StrictModel


class GroupDecision(_Strict):
    """Decision for one layer group."""

    prune_ratio: float = Field(0.0, ge=0.0, le=MAX_PRUNE_RATIO, description="fraction of output channels removed")
    precision: Precision = Field("fp32", description="numeric precision of the group's layers in the exported model")
    fusion: Fusion = Field("conv_bn_act", description="Conv-BN(-activation) folding before export")

    @field_validator("prune_ratio")
    @classmethod
    def _round(cls, v: float) -> float:
        return round(float(v), 4)


class DistillConfig(_Strict):
    """Knowledge distillation from the original model during recovery."""

    temperature: float = Field(4.0, ge=1.0, le=20.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="weight of the KD term; 1-alpha weights cross-entropy")

    @field_validator("temperature", "alpha")
    @classmethod
    def _round(cls, v: float) -> float:
        return round(float(v), 4)


class UpdateConfig(_Strict):
    """Which parameters recovery fine-tuning trains, and for how long."""

    scope: UpdateScope = Field("full")
    budget: int = Field(1, ge=0, le=100, description="recovery epochs over the training split (0 = none)")


class CompressionPlan(_Strict):
    """A complete compression plan."""

    default: GroupDecision = Field(default_factory=GroupDecision)
    groups: dict[str, GroupDecision] = Field(default_factory=dict)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    update: UpdateConfig = Field(default_factory=UpdateConfig)

    # -- construction -------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        prune_ratio: float = 0.0,
        precision: Precision = "fp32",
        fusion: Fusion = "conv_bn_act",
        *,
        temperature: float = 4.0,
        alpha: float = 0.7,
        scope: UpdateScope = "full",
        budget: int = 1,
    ) -> CompressionPlan:
        """The same decision for every group (the baselines users try by hand)."""
        return cls.parse(
            {
                "default": {"prune_ratio": prune_ratio, "precision": precision, "fusion": fusion},
                "distill": {"temperature": temperature, "alpha": alpha},
                "update": {"scope": scope, "budget": budget},
            }
        )

    @classmethod
    def parse(cls, data: dict | str | bytes) -> CompressionPlan:
        """Validate a dict or JSON text; errors name the field path and the allowed values."""
        return validate(cls, data, PlanError, "plan")

    @classmethod
    def load(cls, path: str | Path) -> CompressionPlan:
        """Read a JSON plan file; any problem with the file or its content names the file."""
        p = Path(path)
        data = parse_json_strict(read_user_text(p, "plan file", PlanError), f"plan file {p}", PlanError)
        try:
            return cls.parse(data)
        except PlanError as exc:
            raise PlanError(f"plan file {p}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Write the plan as JSON, atomically (a reader never sees half a plan)."""
        return write_atomic(path, json.dumps(self.model_dump(mode="json"), indent=1) + "\n", PlanError)

    # -- use ---------------------------------------------------------------------------
    def decision_for(self, group_name: str) -> GroupDecision:
        return self.groups.get(group_name, self.default)

    def with_precision(self, group_names: Sequence[str], precision: Precision) -> CompressionPlan:
        """A copy with the named groups in `precision`, their other decisions kept. A group the
        plan does not name gets the default's decision spelled out, so apply this to a plan
        resolved against the model (`hadmc.pipeline.resolve_plan`), where the default prune
        ratio has already been dropped from groups that cannot be pruned."""
        if precision not in PRECISIONS:
            raise PlanError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        groups = {**self.groups, **{n: self.decision_for(n).model_copy(update={"precision": precision}) for n in group_names}}
        return self.model_copy(update={"groups": groups})

    def resolve(self, group_names: Sequence[str]) -> CompressionPlan:
        """Spell out a decision for every group; unknown group names are an error."""
        unknown = sorted(set(self.groups) - set(group_names))
        if unknown:
            shown = ", ".join(list(group_names)[:8]) + (" ..." if len(group_names) > 8 else "")
            raise PlanError(f"plan names layer groups the model does not have: {unknown}; the model's groups are: {shown}")
        # Every group is now explicit, so `default` is reset: equal decisions give equal keys.
        return self.model_copy(update={"groups": {n: self.decision_for(n) for n in group_names}, "default": GroupDecision()})

    def canonical_json(self) -> str:
        """Sorted keys, no whitespace: equal plans give equal text."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def key(self) -> str:
        """Stable SHA-256 of the canonical JSON (used by caches and the run store)."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def precisions(self) -> set[str]:
        return {self.default.precision, *(d.precision for d in self.groups.values())}


def validate(model: type[BaseModel], data: dict | str | bytes, error: type[Exception], root: str):
    """`model` validated from a dict or JSON text; a failure raises `error` naming each field."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise error(f"{root} is not UTF-8 JSON text") from None
    if isinstance(data, str):
        data = parse_json_strict(data, root, error)  # repeated keys and NaN are refused here
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise error(format_validation_error(exc, root)) from None


def format_validation_error(exc: ValidationError, root: str) -> str:
    """One readable line per problem: `plan.default.precision: ... (allowed: fp32, fp16, int8)`."""
    lines = []
    for err in exc.errors():
        path = ".".join([root, *(str(p) for p in err["loc"])])
        msg = err["msg"]
        ctx = err.get("ctx") or {}
        if "expected" in ctx and str(ctx["expected"]) not in msg:
            msg += f" (allowed: {ctx['expected']})"
        given = err.get("input")
        if not isinstance(given, (dict, list)):
            msg += f"; got {given!r}"
        lines.append(f"{path}: {msg}")
    return "invalid " + root + ":\n  " + "\n  ".join(lines)
