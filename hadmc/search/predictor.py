"""Predictor of a plan's figures, refitted to the real evaluations of the run (for Dyna search).

Nothing it returns is ever a reported figure: predictions train the policy and rank its
proposals; only real evaluations reach the store and the front.

- latency: from per-group profiles. Every measured plan's ONNX Runtime node profile gives one
  training point per layer group (its milliseconds relative to the group's share of the
  original's latency), so twenty measured plans already give a few hundred points. The model
  is linear in a few physical terms of the group's decision (kept MACs, kept output and input
  channels, INT8 and its interaction with the kept MACs and inputs — the Q/DQ cost), pooled
  over groups with a ridge-shrunk correction per group; it predicts thousands of plans per
  second, which the policy's predicted episodes need. A plan's latency is the sum over its
  groups plus the time outside them, mapped to the measured median by a linear fit. Without
  profiles (a remote probe that does not profile) a Gaussian process of
  log(latency / original) over plan summaries is used instead.
- accuracy: a Gaussian process, in logit space with each accuracy's binomial noise (see
  `_AccuracyGP`), over a few plan summaries (MAC- and latency-share weighted
  prune ratios, the largest ratio, the INT8 share and INT8 in the first and last groups,
  recovery budget and scope, distillation
  temperature and weight); its posterior standard deviation is the uncertainty the search
  uses to explore.
- size: linear in the kept parameters per precision width (bytes are nearly exact this way).
- energy (only when it is measured): energy per millisecond, fitted linearly to latency.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hadmc.evaluation import Evaluation
from hadmc.groups import GROUP_KINDS, OTHER, LayerGroup
from hadmc.plan import CompressionPlan

log = logging.getLogger(__name__)

#: A group's share of the original's latency counts as at least this fraction of it in the
#: latency model: a group the original's profile gives (almost) no time (the classifier here)
#: would otherwise turn its few microseconds into ratios in the hundreds, and those rows would
#: swamp the pooled fit (seen: every plan's latency predicted 0.007 or 62 ms for 0.4-0.9 ms).
SHARE_FLOOR = 0.01
#: Predicted latencies stay within this factor of the measured range: a linear model far
#: outside the plans it was fitted on extrapolates with no physical limit.
EXTRAPOLATION = 2.0

#: The last columns of `PlanEncoding.summary`: recovery budget and scope, distillation
#: temperature and weight.
RECOVERY_COLUMNS = 4

_SCOPE_FRACTION = {"head": 0.0, "last_stage": 0.25, "half": 0.5, "full": 1.0}
_WIDTH = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}


@dataclass
class Prediction:
    """Predicted figures of plans (arrays over plans); `accuracy_std` is the model's uncertainty."""

    accuracy: np.ndarray
    accuracy_std: np.ndarray
    latency_ms: np.ndarray
    model_bytes: np.ndarray
    energy_mj: np.ndarray | None


class PlanEncoding:
    """Plans as arrays: per group the prune ratio and precision, plus the global recovery."""

    def __init__(self, groups: Sequence[LayerGroup]) -> None:
        self.groups = list(groups)
        self.names = [g.name for g in self.groups]
        G = len(self.groups)
        self.flops = np.array([g.flops_share for g in self.groups], dtype=float)
        self.lat_share = np.array([g.cost_share for g in self.groups], dtype=float)
        self.params = np.array([max(g.params, 0) for g in self.groups], dtype=float)
        # keep_in of group i follows group i-1 when their widths chain (as in the observation encoder)
        self.chained = np.zeros(G, dtype=bool)
        for i in range(1, G):
            g, prev = self.groups[i], self.groups[i - 1]
            self.chained[i] = prev.out_channels == g.in_channels and g.kind != "depthwise"
        static = []
        for g in self.groups:
            kind = [float(g.kind == k) for k in GROUP_KINDS]
            static.append([*kind, math.log2(max(g.in_channels, 1)) / 12, math.log2(max(g.out_channels, 1)) / 12,
                           g.kernel / 7, g.stride / 2, g.depth])  # fmt: skip
        self.static = np.array(static, dtype=float)

    def arrays(self, plans: Sequence[CompressionPlan]) -> dict[str, np.ndarray]:
        n, G = len(plans), len(self.groups)
        ratio = np.zeros((n, G))
        int8 = np.zeros((n, G))
        fp16 = np.zeros((n, G))
        budget = np.zeros(n)
        scope = np.zeros(n)
        temp = np.zeros(n)
        alpha = np.zeros(n)
        for i, p in enumerate(plans):
            for j, name in enumerate(self.names):
                d = p.decision_for(name)
                ratio[i, j] = d.prune_ratio
                int8[i, j] = d.precision == "int8"
                fp16[i, j] = d.precision == "fp16"
            budget[i], scope[i] = p.update.budget, _SCOPE_FRACTION[p.update.scope]
            temp[i], alpha[i] = p.distill.temperature, p.distill.alpha
        keep_out = 1.0 - ratio
        keep_in = np.ones_like(keep_out)
        keep_in[:, 1:] = np.where(self.chained[1:], keep_out[:, :-1], 1.0)
        return {"ratio": ratio, "keep_out": keep_out, "keep_in": keep_in, "mac": keep_out * keep_in, "int8": int8,
                "fp16": fp16, "budget": budget, "scope": scope, "temperature": temp, "alpha": alpha}  # fmt: skip

    def share_ms(self, base_ms: float) -> np.ndarray:
        """Each group's milliseconds in the original, at least `SHARE_FLOOR` of its latency."""
        return np.maximum(self.lat_share * base_ms, SHARE_FLOOR * base_ms)

    def summary(self, a: dict[str, np.ndarray]) -> np.ndarray:
        """Plan-level features of the accuracy model (one row per plan)."""
        w = self.flops / max(self.flops.sum(), 1e-12)
        lw = self.lat_share / max(self.lat_share.sum(), 1e-12)
        cols = [
            a["ratio"] @ w,
            a["ratio"] @ lw,
            a["ratio"].max(axis=1),
            -np.log(np.clip(a["mac"], 1e-3, 1.0)) @ w / 3.0,
            a["int8"] @ w,
            # The first and last groups (stem and classifier) carry a sliver of the MACs, so the
            # INT8 share cannot see them, yet they are the most sensitive to INT8: over 14
            # bench_search runs on the embedded default, mostly-INT8 plans pruned 60% or more with 3
            # recovery epochs read a median 98.33% (validation) with both ends fp32, 97.22% with both int8.
            a["int8"][:, 0],
            a["int8"][:, -1],
            a["budget"] / 3.0,
            a["scope"],
            np.log(a["temperature"]) / math.log(20.0),
            a["alpha"],
        ]
        return np.stack(cols, axis=1)

    def group_terms(self, a: dict[str, np.ndarray]) -> np.ndarray:
        """Physical terms of each group's decision for the latency model: (n, G, terms)."""
        mac, ko, ki, q, h = a["mac"], a["keep_out"], a["keep_in"], a["int8"], a["fp16"]
        return np.stack([np.ones_like(mac), mac, ko, ki, q, q * mac, q * ki, h, h * mac], axis=2)

    def plan_latency_features(self, a: dict[str, np.ndarray]) -> np.ndarray:
        lw = self.lat_share / max(self.lat_share.sum(), 1e-12)
        return np.concatenate([self.summary(a), (a["mac"] @ lw)[:, None], (a["int8"] @ lw)[:, None]], axis=1)

    def kept_bytes(self, a: dict[str, np.ndarray]) -> np.ndarray:
        """Parameter bytes kept per precision width: (n, 3) for fp32, fp16, int8."""
        kept = a["mac"] * self.params
        fp32 = 1.0 - a["int8"] - a["fp16"]
        return np.stack([(kept * fp32).sum(1) * 4.0, (kept * a["fp16"]).sum(1) * 2.0, (kept * a["int8"]).sum(1)], axis=1)


class PlanPredictor:
    """Fits the real evaluations of a run and predicts new plans (see module docstring).

    :param groups: the model's layer groups (with profiled latency shares where available)
    :param baseline: the original model's search evaluation
    :param seed: seed of the tree ensembles
    """

    def __init__(self, groups: Sequence[LayerGroup], baseline: Evaluation, seed: int = 0) -> None:
        self.enc = PlanEncoding(groups)
        self.baseline = baseline
        self.seed = seed
        self.n_fitted = 0
        self._acc = self._lat_plan = None
        self._lat_w: np.ndarray | None = None  # (G, terms) coefficients of the per-group latency model
        self._lat_map = (1.0, 0.0)
        self._lat_range: tuple[float, float] | None = None  # measured latencies (with the original's)
        self._other_ms = 0.0
        self._size = None
        self._energy_per_ms: float | None = None

    # -- fitting ------------------------------------------------------------------------
    def fit(self, plans: Sequence[CompressionPlan], evaluations: Sequence[Evaluation]) -> PlanPredictor:

        rows = [(p, e) for p, e in zip(plans, evaluations) if e.ok and e.latency_ms is not None]
        self.n_fitted = len(rows)
        if not rows:
            return self
        base_lat = float(self.baseline.latency_ms or 1.0)
        P = [p for p, _ in rows]
        a = self.enc.arrays(P)

        # accuracy: a GP on plan summaries (complete evaluations only), the original included
        acc_rows = [i for i, (_, e) in enumerate(rows) if e.complete and e.accuracy is not None]
        X = self.enc.summary(a)[acc_rows]
        y = np.array([rows[i][1].accuracy for i in acc_rows], dtype=float)
        n = np.array([rows[i][1].accuracy_samples or 0 for i in acc_rows], dtype=float)
        # the original: nothing pruned or quantized; its recovery columns (it has none) read as
        # the plans' mean, so they say nothing about it
        X0 = np.zeros((1, X.shape[1]))
        X0[0, -RECOVERY_COLUMNS:] = X[:, -RECOVERY_COLUMNS:].mean(axis=0) if len(X) else 0.0
        if self.baseline.accuracy is not None:
            X, y = np.vstack([X, X0]), np.append(y, self.baseline.accuracy)
            n = np.append(n, self.baseline.accuracy_samples or 0)
        if len(y) >= 2:
            self._acc = _AccuracyGP(X, y, n, self.seed)

        # latency: per-group profiles where the evaluations carry them
        prof = [i for i, (_, e) in enumerate(rows) if e.group_latency_ms]
        lat = np.array([e.latency_ms for _, e in rows], dtype=float)
        seen = np.append(lat, base_lat)
        self._lat_range = (float(seen.min()), float(seen.max()))
        if len(prof) >= 2:
            sub = {k: v[prof] for k, v in a.items()}
            share_ms = self.enc.share_ms(base_lat)
            Y = np.array([[rows[i][1].group_latency_ms.get(n, 0.0) for n in self.enc.names] for i in prof]) / share_ms
            self._lat_w = _pooled_ridge(self.enc.group_terms(sub), Y, weights=share_ms)
            self._other_ms = float(np.mean([rows[i][1].group_latency_ms.get(OTHER, 0.0) for i in prof]))
            profiled_sum = np.array([sum(rows[i][1].group_latency_ms.values()) for i in prof])
            A = np.stack([profiled_sum, np.ones_like(profiled_sum)], axis=1)
            coef, *_ = np.linalg.lstsq(A, lat[prof], rcond=None)
            self._lat_map = (float(coef[0]), float(coef[1])) if coef[0] > 0 else (float(np.mean(lat[prof] / profiled_sum)), 0.0)
        else:
            self._lat_w = None
            if len(rows) >= 2:
                self._lat_plan = _gp(self.enc.plan_latency_features(a), np.log(lat / base_lat), self.seed)

        # size: bytes ~ kept parameter bytes per precision, plus a constant
        sizes = [(i, e.model_bytes) for i, (_, e) in enumerate(rows) if e.model_bytes]
        if len(sizes) >= 2:
            K = self.enc.kept_bytes(a)[[i for i, _ in sizes]]
            A = np.concatenate([K, np.ones((len(K), 1))], axis=1)
            self._size, *_ = np.linalg.lstsq(A, np.array([b for _, b in sizes], dtype=float), rcond=None)

        # energy: only where it is measured
        en = [(e.energy_mj, e.latency_ms) for _, e in rows if e.energy_mj is not None and e.provenance.get("energy_mj") == "measured"]
        self._energy_per_ms = float(np.mean([x / y for x, y in en])) if en else None
        return self

    # -- prediction ---------------------------------------------------------------------
    def predict(self, plans: Sequence[CompressionPlan]) -> Prediction:
        a = self.enc.arrays(plans)
        n = len(plans)
        base = self.baseline
        base_lat = float(base.latency_ms or 1.0)
        if self._acc is not None:
            mu, sd = self._acc.predict(self.enc.summary(a), return_std=True)
        else:  # no data yet: the original's accuracy with a wide uncertainty
            mu, sd = np.full(n, base.accuracy or 0.0), np.full(n, 0.1)
        if self._lat_w is not None:
            rel = np.maximum(np.einsum("ngt,gt->ng", self.enc.group_terms(a), self._lat_w), 0.0)
            total = (rel * self.enc.share_ms(base_lat)).sum(axis=1) + self._other_ms
            lat = self._lat_map[0] * total + self._lat_map[1]
        elif self._lat_plan is not None:
            lat = base_lat * np.exp(self._lat_plan.predict(self.enc.plan_latency_features(a)))
        else:  # first-order: MACs kept by latency share
            lat = base_lat * (a["mac"] @ self.enc.lat_share / max(self.enc.lat_share.sum(), 1e-12))
        lat = np.clip(lat, self._lat_range[0] / EXTRAPOLATION, self._lat_range[1] * EXTRAPOLATION) if self._lat_range else np.maximum(lat, 1e-3 * base_lat)
        if self._size is not None:
            size = np.concatenate([self.enc.kept_bytes(a), np.ones((n, 1))], axis=1) @ self._size
        else:
            size = np.full(n, float(base.model_bytes or 0)) * (self.enc.kept_bytes(a).sum(1) / max(self.enc.params.sum() * 4.0, 1.0))
        size = np.maximum(size, 1.0)
        energy = lat * self._energy_per_ms if self._energy_per_ms is not None else None
        return Prediction(np.clip(mu, 0.0, 1.0), np.maximum(sd, 1e-6), lat, size, energy)

    def evaluation(self, plan: CompressionPlan, p: Prediction, i: int = 0) -> Evaluation:
        """A predicted Evaluation (provenance `predicted`: it never reaches the store)."""
        figures = {"accuracy": float(p.accuracy[i]), "latency_ms": float(p.latency_ms[i]), "model_bytes": int(p.model_bytes[i])}
        if p.energy_mj is not None:
            figures["energy_mj"] = float(p.energy_mj[i])
        return Evaluation(
            plan_key=plan.key(), plan=plan.model_dump(mode="json"), phase="search", split="val",
            provenance={k: "predicted" for k in figures}, notes=["predicted by the search's model, never a measurement"],
            **figures,
        )  # fmt: skip


def _gp(X: np.ndarray, y: np.ndarray, seed: int, alpha: np.ndarray | float = 1e-10, normalize_y: bool = True):
    """A Gaussian process with one length scale per feature and a noise term (sklearn);
    `alpha` adds known noise variances (in the units the GP fits: normalised if `normalize_y`)."""
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(1.0, (1e-3, 1e2)) * Matern(
        length_scale=np.full(X.shape[1], 0.5), length_scale_bounds=(0.05, 20.0), nu=2.5
    ) + WhiteKernel(1e-3, (1e-6, 1e-1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # hyperparameters at their bounds on tiny data sets
        gp = GaussianProcessRegressor(kernel, alpha=alpha, normalize_y=normalize_y, n_restarts_optimizer=1, random_state=seed)
        return gp.fit(X, y)


class _AccuracyGP:
    """A GP of accuracy in logit space, with each accuracy's binomial noise as known noise.

    An accuracy read on n images is k/n: near the top of the range one image is a point on
    the validation split of the embedded default (180 images), and a GP that interpolates
    such figures exactly wiggles between them and grows wild far from them (measured on the
    9 searches of bench_search at 6fadf79: fitted on each one's 64 plans, its accuracy ranked
    the other 512 with Spearman 0.53; in logit space with binomial noise, 0.64). The logit
    also spreads the top, where error rates of 0.6% and 1.7% differ threefold. The variance
    of logit(k/n) is about 1 / (n p (1 - p)), with p smoothed to (k + 0.5) / (n + 1); an
    accuracy without its image count gets only the learned noise term.
    """

    def __init__(self, X: np.ndarray, y: np.ndarray, samples: np.ndarray, seed: int) -> None:
        known = samples > 0
        m = np.where(known, samples, 1000.0)
        p = np.clip((y * m + 0.5) / (m + 1.0), 1e-4, 1.0 - 1e-4)
        t = np.log(p / (1.0 - p))
        self.mu, self.sd = float(t.mean()), float(t.std()) or 1.0
        var = np.where(known, 1.0 / (m * p * (1.0 - p)), 0.0) / self.sd**2
        self.gp = _gp(X, (t - self.mu) / self.sd, seed, alpha=var + 1e-10, normalize_y=False)

    def predict(self, X: np.ndarray, return_std: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy (the mean's sigmoid) and a standard deviation (half the sigmoid's spread
        over the mean +- one posterior standard deviation of the logit)."""
        m, s = self.gp.predict(X, return_std=True)
        m, s = m * self.sd + self.mu, s * self.sd
        sig = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
        return sig(m), (sig(m + s) - sig(m - s)) / 2.0


def _pooled_ridge(
    T: np.ndarray, Y: np.ndarray, pooled_alpha: float = 1e-6, group_alpha: float = 1.0, weights: np.ndarray | None = None
) -> np.ndarray:
    """Coefficients (G, terms): one pooled least-squares fit over every (plan, group) row, plus
    a per-group correction shrunk toward zero (ridge) so a group with few distinct decisions
    falls back on what the others show.

    :param T: (n, G, terms) terms of each group's decision
    :param Y: (n, G) each group's milliseconds relative to its share of the original's latency
    :param weights: (G,) weight of each group's rows in the pooled fit (its share in ms: the
        pooled fit then minimises errors in milliseconds, and a group that takes no time
        cannot pull the model the others share)
    """
    n, G, k = T.shape
    w = np.ones(G) if weights is None else np.asarray(weights, dtype=float) / float(np.mean(weights))
    X, y = (T * w[None, :, None]).reshape(n * G, k), (Y * w[None, :]).reshape(n * G)
    w0 = np.linalg.solve(X.T @ X + pooled_alpha * len(y) * np.eye(k), X.T @ y)
    W = np.empty((G, k))
    for g in range(G):
        Xg, rg = T[:, g, :], Y[:, g] - T[:, g, :] @ w0
        W[g] = w0 + np.linalg.solve(Xg.T @ Xg + group_alpha * max(n, 1) * np.eye(k), Xg.T @ rg)
    return W


__all__ = ["PlanEncoding", "PlanPredictor", "Prediction"]
