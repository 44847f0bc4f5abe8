"""Action space of the compression MDP, its per-step masks, and decoding into plan decisions.

The space is a `gymnasium.spaces.Dict` with one entry per agent head:

- ``pruning``: Discrete over the prune grid levels (group steps)
- ``quantization``: Discrete over the offered precisions (group steps)
- ``fusion``: Discrete over the fusion options (group steps)
- ``distillation``: Box(2) = (temperature in [1, 20], alpha in [0, 1]) (final step)
- ``update``: one Discrete over scope x budget, index = scope_index * n_budgets + budget_index
  (final step). One head rather than two keeps the policy's update factor a single
  categorical, and every (scope, budget) pair is a valid combination.

Every step receives a full Dict action; the heads that are inactive at that step are ignored.
``info["action_mask"]`` says which heads act (``heads``) and, per discrete head, which options
are valid; ``reasons`` says why a head is masked whatever the step (the fusion head on a
backend that re-fuses Conv-BN-activation at load time, where no option changes the artifact). Inactive discrete heads show only their first option as valid, so a mask row is
never all false. An action that picks a masked option is projected onto a valid one (largest
valid prune level not above the request; fp32 for an unsupported precision) and the
correction is reported in ``info["action_corrected"]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from hadmc.config import SearchSpace
from hadmc.plan import DistillConfig, GroupDecision, UpdateConfig

HEADS: tuple[str, ...] = ("pruning", "quantization", "distillation", "fusion", "update")
#: Backends whose runtime re-fuses Conv-BN(-ReLU) when it loads a model: every fusion option
#: gives the same deployed kernels there (measured on ONNX Runtime and TensorRT), so the fusion
#: head is masked on them and no search budget goes to it.
REFUSING_BACKENDS: frozenset[str] = frozenset({"ort-cpu", "ort-cuda", "ort-trt", "tensorrt"})
#: The fusion decision used where the head is masked (what those runtimes do anyway).
RUNTIME_FUSION = "conv_bn_act"
GROUP_HEADS: tuple[str, ...] = ("pruning", "quantization", "fusion")
FINAL_HEADS: tuple[str, ...] = ("distillation", "update")
TEMPERATURE_RANGE = (1.0, 20.0)
ALPHA_RANGE = (0.0, 1.0)


@dataclass(frozen=True)
class ActionLayout:
    """The options of every head (from the run's `SearchSpace`) and the device's precisions."""

    prune_grid: tuple[float, ...]
    precisions: tuple[str, ...]
    fusions: tuple[str, ...]
    update_scopes: tuple[str, ...]
    update_budgets: tuple[int, ...]
    device_precisions: frozenset[str]
    #: why a head is masked whatever the step (e.g. fusion on a backend that re-fuses)
    reasons: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_search(cls, search: SearchSpace, device_precisions: Sequence[str], backend: str | None = None) -> ActionLayout:
        reasons = ()
        if backend in REFUSING_BACKENDS:
            reasons = (("fusion", f"{backend} re-fuses Conv-BN-activation when it loads a model: every fusion option deploys the same kernels"),)
        return cls(
            prune_grid=tuple(search.prune_grid),
            precisions=tuple(search.precisions),
            fusions=tuple(search.fusions),
            update_scopes=tuple(search.update_scopes),
            update_budgets=tuple(search.update_budgets),
            device_precisions=frozenset(device_precisions) | {"fp32"},
            reasons=reasons,
        )

    @property
    def fusion_fixed(self) -> str | None:
        """The fusion every group gets when the head is masked (None: the head decides)."""
        if not any(h == "fusion" for h, _ in self.reasons):
            return None
        return RUNTIME_FUSION if RUNTIME_FUSION in self.fusions else self.fusions[0]

    def fusion_options(self) -> tuple[str, ...]:
        """The fusion decisions a plan may take on this backend."""
        fixed = self.fusion_fixed
        return self.fusions if fixed is None else (fixed,)

    def precision_options(self) -> tuple[str, ...]:
        """The offered precisions the device runs."""
        return tuple(p for p in self.precisions if p in self.device_precisions)

    def space(self) -> spaces.Dict:
        return spaces.Dict(
            {
                "pruning": spaces.Discrete(len(self.prune_grid)),
                "quantization": spaces.Discrete(len(self.precisions)),
                "distillation": spaces.Box(
                    low=np.array([TEMPERATURE_RANGE[0], ALPHA_RANGE[0]], dtype=np.float32),
                    high=np.array([TEMPERATURE_RANGE[1], ALPHA_RANGE[1]], dtype=np.float32),
                    dtype=np.float32,
                ),
                "fusion": spaces.Discrete(len(self.fusions)),
                "update": spaces.Discrete(len(self.update_scopes) * len(self.update_budgets)),
            }
        )

    # -- masks --------------------------------------------------------------------------
    def group_mask(self, prune_valid: np.ndarray) -> dict:
        """Mask of a group step; `prune_valid` is the group's valid prune levels."""
        fixed = self.fusion_fixed
        fusion = np.ones(len(self.fusions), dtype=bool) if fixed is None else _only(len(self.fusions), self.fusions.index(fixed))
        return {
            "heads": {h: h in GROUP_HEADS and not (h == "fusion" and fixed is not None) for h in HEADS},
            "pruning": np.array(prune_valid, dtype=bool),  # a copy: infos must not share arrays
            "quantization": np.array([p in self.device_precisions for p in self.precisions], dtype=bool),
            "fusion": fusion,
            "update": _first_only(len(self.update_scopes) * len(self.update_budgets)),
            "reasons": dict(self.reasons),
        }

    def final_mask(self) -> dict:
        return {
            "heads": {h: h in FINAL_HEADS for h in HEADS},
            "pruning": _first_only(len(self.prune_grid)),
            "quantization": _first_only(len(self.precisions)),
            "fusion": _first_only(len(self.fusions)),
            "update": np.ones(len(self.update_scopes) * len(self.update_budgets), dtype=bool),
            "reasons": dict(self.reasons),
        }

    # -- decoding -----------------------------------------------------------------------
    def decode_group(self, action: dict, mask: dict) -> tuple[GroupDecision, list[str]]:
        """The group decision of a step's action, projected onto the valid options."""
        corrected = []
        level = int(np.clip(int(np.asarray(action["pruning"])), 0, len(self.prune_grid) - 1))
        valid = mask["pruning"]
        if not valid[level]:
            below = np.flatnonzero(valid[: level + 1])
            level = int(below[-1]) if below.size else int(np.flatnonzero(valid)[0])
            corrected.append("pruning")
        q = int(np.clip(int(np.asarray(action["quantization"])), 0, len(self.precisions) - 1))
        if not mask["quantization"][q]:
            q = self.precisions.index("fp32")
            corrected.append("quantization")
        f = int(np.clip(int(np.asarray(action["fusion"])), 0, len(self.fusions) - 1))
        fusion = self.fusion_fixed or self.fusions[f]
        decision = GroupDecision(prune_ratio=self.prune_grid[level], precision=self.precisions[q], fusion=fusion)
        return decision, corrected

    def decode_final(self, action: dict) -> tuple[DistillConfig, UpdateConfig]:
        t, a = np.asarray(action["distillation"], dtype=np.float64).reshape(-1)[:2]
        t = float(np.clip(np.nan_to_num(t, nan=TEMPERATURE_RANGE[0]), *TEMPERATURE_RANGE))
        a = float(np.clip(np.nan_to_num(a, nan=ALPHA_RANGE[0]), *ALPHA_RANGE))
        u = int(np.clip(int(np.asarray(action["update"])), 0, len(self.update_scopes) * len(self.update_budgets) - 1))
        scope, budget = divmod(u, len(self.update_budgets))
        return (
            DistillConfig(temperature=t, alpha=a),
            UpdateConfig(scope=self.update_scopes[scope], budget=self.update_budgets[budget]),
        )

    def update_index(self, scope: str, budget: int) -> int:
        """Inverse of the update decoding (for replaying a plan as actions)."""
        return self.update_scopes.index(scope) * len(self.update_budgets) + self.update_budgets.index(budget)


def _only(n: int, i: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[i] = True
    return m


def _first_only(n: int) -> np.ndarray:
    return _only(n, 0)


__all__ = ["ActionLayout", "FINAL_HEADS", "GROUP_HEADS", "HEADS", "REFUSING_BACKENDS", "RUNTIME_FUSION"]
