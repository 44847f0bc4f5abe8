"""Observation encoder: a fixed-size vector whatever the model's depth.

Layout (lengths; every entry finite and clipped to [-OBS_BOUND, OBS_BOUND], most in [0, 1]):

1. current group: ``LayerGroup.features()`` (``GROUP_FEATURE_DIM``); zeros on the final step
2. whole model: ``model_features(groups)`` (``MODEL_FEATURE_DIM``)
3. device: ``DeviceSpec.state_features()`` (``hal.FEATURE_DIM``)
4. measured baseline (``BASELINE_DIM`` = 6): log10(1 + latency ms) / 4, energy known,
   log10(1 + energy mJ) / 4, log10(model bytes) / 10, accuracy, log10(MACs) / 11
5. compression state (``STATE_DIM`` = 15): FLOPs share decided so far; FLOPs-weighted mean
   prune ratio of the decided groups; FLOPs-weighted precision histogram (3) and fusion
   histogram (3) of the decisions so far; predicted fraction of MACs removed, of bytes
   removed, and of latency removed (by measured latency shares where the profiler gave them,
   else FLOPs shares); fraction of steps left; the previous group's prune ratio; one-hot of
   the step type (group, final).

The predictions in (5) are first-order estimates from group shares (a group's MACs scale with
its kept output channels times the kept input channels of the group feeding it; bytes also
with the precision's width); they are state features, never reported figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from hadmc.evaluation import Evaluation
from hadmc.groups import GROUP_FEATURE_DIM, MODEL_FEATURE_DIM, LayerGroup, model_features
from hadmc.hal.device import FEATURE_DIM as DEVICE_FEATURE_DIM
from hadmc.plan import FUSIONS, PRECISIONS, GroupDecision

BASELINE_DIM = 6
#: Names of the compression-state entries, in order (the last STATE_DIM of the observation).
STATE_FIELDS: tuple[str, ...] = (
    "decided_flops_share", "mean_prune_ratio",
    "share_fp32", "share_fp16", "share_int8",
    "share_fusion_none", "share_fusion_conv_bn", "share_fusion_conv_bn_act",
    "predicted_macs_reduction", "predicted_bytes_reduction", "predicted_latency_reduction",
    "steps_left", "previous_prune_ratio", "step_is_group", "step_is_final",
)  # fmt: skip
STATE_DIM = len(STATE_FIELDS)
OBS_DIM = GROUP_FEATURE_DIM + MODEL_FEATURE_DIM + DEVICE_FEATURE_DIM + BASELINE_DIM + STATE_DIM
OBS_BOUND = 10.0
_BYTES_PER_PARAM = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}


def baseline_features(baseline: Evaluation) -> np.ndarray:
    def log(x: float | None, scale: float) -> float:
        return math.log10(1.0 + max(float(x), 0.0)) / scale if x is not None else 0.0

    return np.array(
        [
            log(baseline.latency_ms, 4.0),
            float(baseline.energy_mj is not None),
            log(baseline.energy_mj, 4.0),
            log(baseline.model_bytes, 10.0),
            float(baseline.accuracy or 0.0),
            log(baseline.macs, 11.0),
        ],
        dtype=np.float32,
    )


def predicted_reduction(groups: Sequence[LayerGroup], decisions: Sequence[GroupDecision]) -> tuple[float, float, float]:
    """(MACs, bytes, latency) fractions removed, predicted from group shares.

    Groups without a decision yet count as unchanged.
    """
    kept_macs = kept_bytes = kept_lat = 0.0
    prev_keep, prev_out = 1.0, None
    for i, g in enumerate(groups):
        d = decisions[i] if i < len(decisions) else None
        keep_out = 1.0 - (d.prune_ratio if d else 0.0)
        # The input channels shrink with the group feeding this one when their widths match.
        keep_in = prev_keep if (prev_out == g.in_channels and g.kind != "depthwise") else 1.0
        width = _BYTES_PER_PARAM[d.precision] / 4.0 if d else 1.0
        share_lat = g.cost_share
        kept_macs += g.flops_share * keep_out * keep_in
        kept_bytes += g.params_share * keep_out * keep_in * width
        kept_lat += share_lat * keep_out * keep_in
        prev_keep, prev_out = keep_out, g.out_channels
    total_lat = sum(g.cost_share for g in groups) or 1.0
    total_macs = sum(g.flops_share for g in groups) or 1.0
    total_bytes = sum(g.params_share for g in groups) or 1.0
    return (
        1.0 - kept_macs / total_macs,
        1.0 - kept_bytes / total_bytes,
        1.0 - kept_lat / total_lat,
    )


class ObservationEncoder:
    """Builds the observation vector of each step of an episode.

    :param groups: the model's layer groups, in order
    :param device: the target DeviceSpec (anything with ``state_features()``)
    :param baseline: the measured evaluation of the uncompressed model
    """

    dim = OBS_DIM

    def __init__(self, groups: Sequence[LayerGroup], device, baseline: Evaluation) -> None:
        self.groups = list(groups)
        self._static = np.concatenate(
            [
                np.asarray(model_features(self.groups), dtype=np.float32),
                np.asarray(device.state_features(), dtype=np.float32),
                baseline_features(baseline),
            ]
        )
        self._group_feats = [np.asarray(g.features(), dtype=np.float32) for g in self.groups]

    def encode(self, step: int, decisions: Sequence[GroupDecision]) -> np.ndarray:
        """Observation before acting at `step` (0..len(groups)), given the decisions so far."""
        n = len(self.groups)
        is_final = step >= n
        group = np.zeros(GROUP_FEATURE_DIM, dtype=np.float32) if is_final else self._group_feats[step]
        decided = self.groups[: len(decisions)]
        w = np.array([g.flops_share for g in decided], dtype=np.float64)
        wsum = w.sum()
        prec = np.zeros(len(PRECISIONS))
        fus = np.zeros(len(FUSIONS))
        mean_ratio = 0.0
        if len(decided) and wsum > 0:
            for wi, d in zip(w / wsum, decisions):
                prec[PRECISIONS.index(d.precision)] += wi
                fus[FUSIONS.index(d.fusion)] += wi
                mean_ratio += wi * d.prune_ratio
        macs_red, bytes_red, lat_red = predicted_reduction(self.groups, decisions)
        state = np.array(
            [
                min(wsum, 1.0),
                mean_ratio,
                *prec,
                *fus,
                macs_red,
                bytes_red,
                lat_red,
                (n + 1 - step) / (n + 1),
                decisions[-1].prune_ratio if decisions else 0.0,
                0.0 if is_final else 1.0,
                1.0 if is_final else 0.0,
            ],
            dtype=np.float32,
        )
        obs = np.concatenate([group, self._static, state]).astype(np.float32)
        return np.clip(np.nan_to_num(obs, nan=0.0, posinf=OBS_BOUND, neginf=-OBS_BOUND), -OBS_BOUND, OBS_BOUND)


__all__ = ["BASELINE_DIM", "OBS_BOUND", "OBS_DIM", "STATE_DIM", "STATE_FIELDS", "ObservationEncoder", "baseline_features", "predicted_reduction"]
