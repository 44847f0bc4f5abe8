"""Relative latency that survives a busy machine: a candidate timed against a reference in
alternating blocks.

Two medians taken minutes apart on a shared machine differ by whatever the other processes
did in between (10 repeated medians of one ResNet-18 varied by 12-34% with a competing
process on the same two cores). Timing the two artifacts in short alternating blocks, in
ABBA order so a linear drift cancels, exposes both to the same conditions; the ratio of each
pair of block medians is then a comparison made under one load, and the median of those
ratios, with a distribution-free confidence interval, is the figure. While the interval is
wider than asked, more rounds are measured, up to a limit; past it the figure is flagged
noisy rather than passed off as precise.

Pure timing and statistics: no runtime is imported here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: two-sided normal quantile of the ~95% interval of the median
_Z95 = 1.959964


@dataclass
class Interleaved:
    """Raw outcome of an interleaved timing.

    :param reference_ms: every timed run of the reference
    :param candidate_ms: every timed run of the candidate
    :param pair_ratios: candidate block median / reference block median, per block pair
    :param block_runs: (reference, candidate) runs per block
    :param rounds: rounds measured (the first plus re-measurements while too noisy)
    :param cpu_s: (reference, candidate) process CPU seconds spent in their blocks
    :param wall_s: (reference, candidate) wall seconds spent in their blocks
    """

    reference_ms: list[float] = field(default_factory=list)
    candidate_ms: list[float] = field(default_factory=list)
    pair_ratios: list[float] = field(default_factory=list)
    block_runs: tuple[int, int] = (1, 1)
    rounds: int = 0
    cpu_s: list[float] = field(default_factory=lambda: [0.0, 0.0])
    wall_s: list[float] = field(default_factory=lambda: [0.0, 0.0])


def median_interval(values: list[float] | np.ndarray) -> tuple[float, float, float]:
    """(median, low, high): the median and its distribution-free ~95% confidence interval from
    order statistics (the binomial interval of the median, normal approximation)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0:
        raise ValueError("no values")
    half = _Z95 * math.sqrt(n) / 2.0
    lo = max(int(math.floor(n / 2.0 - half)), 1)
    hi = min(int(math.ceil(n / 2.0 + half)), n)
    return float(np.median(x)), float(x[lo - 1]), float(x[hi - 1])


def relative_spread(values: list[float] | np.ndarray) -> float:
    """Half-width of the median's ~95% interval, relative to the median."""
    med, lo, hi = median_interval(values)
    return (hi - lo) / (2.0 * med) if med > 0 else math.inf


def _timed(run_once: Callable[[], Any], self_timed: bool) -> float:
    t0 = time.perf_counter_ns()
    own = run_once()
    t1 = time.perf_counter_ns()
    return float(own) if self_timed else (t1 - t0) / 1e6


def time_interleaved(
    run_reference: Callable[[], Any],
    run_candidate: Callable[[], Any],
    *,
    warmup_runs: int = 10,
    warmup_s: float = 0.2,
    min_iterations: int = 100,
    min_seconds: float = 1.0,
    max_seconds: float = 60.0,
    self_timed: bool = False,
    block_s: float = 0.05,
    min_pairs: int = 10,
    max_spread: float = 0.02,
    max_rounds: int = 4,
) -> Interleaved:
    """Time two runners in alternating blocks (see the module docstring).

    :param run_reference: one inference of the reference (blocks until done)
    :param run_candidate: one inference of the candidate
    :param warmup_runs: untimed runs of each before timing
    :param warmup_s: minimum seconds of the (alternating) warm-up
    :param min_iterations: timed runs of each artifact in the first round, at least
    :param min_seconds: timed seconds of each artifact in the first round, at least
    :param max_seconds: cap on the timed seconds of all rounds together (per artifact)
    :param self_timed: the runners return their own latency in ms (device events)
    :param block_s: target length of one block; runs per block follow from the warm-up
    :param min_pairs: block pairs in the first round, at least
    :param max_spread: re-measure while the ratio's relative half-interval is above this
    :param max_rounds: rounds at most (each as long as the first)
    """
    out = Interleaved()
    runners = (run_reference, run_candidate)
    # warm-up, alternating, timing the last runs to size the blocks
    last = [0.0, 0.0]
    start, done = time.perf_counter(), 0
    while done < max(warmup_runs, 1) or time.perf_counter() - start < warmup_s:
        for k in (0, 1):
            last[k] = _timed(runners[k], self_timed)
        done += 1
    runs = tuple(min(max(1, math.ceil(block_s * 1000.0 / max(ms, 1e-6))), 10_000) for ms in last)
    out.block_runs = (runs[0], runs[1])
    samples = (out.reference_ms, out.candidate_ms)

    def block(k: int) -> float:
        c0, w0 = time.process_time(), time.perf_counter()
        times = [_timed(runners[k], self_timed) for _ in range(runs[k])]
        out.cpu_s[k] += time.process_time() - c0
        out.wall_s[k] += time.perf_counter() - w0
        samples[k].extend(times)
        return float(np.median(times))

    def pair(i: int) -> None:
        order = (0, 1) if i % 2 == 0 else (1, 0)  # ABBA: a linear drift cancels over two pairs
        med = {k: block(k) for k in order}
        out.pair_ratios.append(med[1] / med[0] if med[0] > 0 else math.inf)

    # first round: enough pairs, runs and seconds of each artifact
    timed = time.perf_counter()
    while True:
        pair(len(out.pair_ratios))
        first = len(out.pair_ratios)
        enough = (
            first >= min_pairs
            and first % 2 == 0
            and min(len(out.reference_ms), len(out.candidate_ms)) >= min_iterations
            and min(out.wall_s) >= min_seconds
        )
        if enough or (max(out.wall_s) >= max_seconds and first >= 2 and first % 2 == 0):
            break
    out.rounds = 1
    round_wall = time.perf_counter() - timed
    while out.rounds < max_rounds and relative_spread(out.pair_ratios) > max_spread:
        if max(out.wall_s) + round_wall / 2 > max_seconds:
            break
        for _ in range(first):
            pair(len(out.pair_ratios))
        out.rounds += 1
    return out
