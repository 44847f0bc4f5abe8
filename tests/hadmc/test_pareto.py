"""Pareto archive: dominance, missing objectives, exact hypervolume on hand-computed fronts."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hadmc.pareto import ParetoArchive, dominates, hypervolume, non_dominated


def test_dominates_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates(np.array([1.0, 2.0]), np.array([1.0, 3.0]))
    assert not dominates(np.array([1.0, 3.0]), np.array([1.0, 3.0]))
    assert not dominates(np.array([0.0, 4.0]), np.array([1.0, 3.0]))


def test_non_dominated_mask_keeps_the_front():
    pts = np.array([[1, 5], [2, 3], [3, 4], [4, 1], [2, 3]], dtype=float)
    assert non_dominated(pts).tolist() == [True, True, False, True, True]


def test_hypervolume_2d_hand_computed_staircase():
    # Points (1,3), (2,2), (3,1) against (4,4): slabs 3*1 + 2*1 + 1*1 = 6.
    pts = np.array([[1, 3], [2, 2], [3, 1]], dtype=float)
    assert hypervolume(pts, np.array([4.0, 4.0])) == pytest.approx(6.0)
    # A dominated point and a point outside the reference change nothing.
    more = np.vstack([pts, [[3, 3], [5, 0]]])
    assert hypervolume(more, np.array([4.0, 4.0])) == pytest.approx(6.0)


def test_hypervolume_3d_hand_computed_front():
    # Two boxes against (3,3,3): (1,2,2) -> 2*1*1 = 2; (2,1,1) -> 1*2*2 = 4;
    # overlap [2,3]x[2,3]x[2,3] = 1; union 5.
    pts = np.array([[1, 2, 2], [2, 1, 1]], dtype=float)
    assert hypervolume(pts, np.array([3.0, 3.0, 3.0])) == pytest.approx(5.0)
    # A single point is its box.
    assert hypervolume(np.array([[0.5, 1.0, 2.0]]), np.array([1.0, 2.0, 3.0])) == pytest.approx(0.5)


def test_hypervolume_3d_of_three_points_matches_inclusion_exclusion():
    ref = np.array([4.0, 4.0, 4.0])
    pts = np.array([[1, 3, 2], [3, 1, 3], [2, 2, 1]], dtype=float)

    def box(p):
        return float(np.prod(ref - p))

    expected = 0.0
    for k in range(1, 4):
        for combo in itertools.combinations(pts, k):
            expected += (-1) ** (k + 1) * box(np.max(combo, axis=0))
    assert hypervolume(pts, ref) == pytest.approx(expected)


def test_hypervolume_4d_matches_monte_carlo_free_inclusion_exclusion():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, size=(5, 4))
    ref = np.ones(4)
    expected = 0.0
    for k in range(1, 6):
        for combo in itertools.combinations(pts, k):
            expected += (-1) ** (k + 1) * float(np.prod(ref - np.max(combo, axis=0)))
    assert hypervolume(pts, ref) == pytest.approx(expected)


def test_archive_keeps_only_non_dominated_evaluations_and_maximises_accuracy():
    a = ParetoArchive(reference={"accuracy": 0.0, "latency_ms": 10.0, "model_bytes": 1000.0})
    assert a.add("p1", {"accuracy": 0.9, "latency_ms": 5.0, "model_bytes": 500})
    assert a.add("p2", {"accuracy": 0.8, "latency_ms": 2.0, "model_bytes": 500})
    assert not a.add("p3", {"accuracy": 0.7, "latency_ms": 6.0, "model_bytes": 600})  # dominated by p1
    assert a.add("p4", {"accuracy": 0.95, "latency_ms": 4.0, "model_bytes": 400})  # dominates p1
    assert sorted(a.keys()) == ["p2", "p4"]
    # Energy is missing everywhere: it is ignored, the volume is 3-d in natural units.
    # -acc in [-.95,0], lat, bytes: p4 box .95*6*600 = 3420, p2 box .8*8*500 = 3200,
    # overlap .8*6*500 = 2400 -> 4220.
    assert a.hypervolume() == pytest.approx(4220.0)


def test_archive_missing_objective_counts_as_worst():
    a = ParetoArchive(reference={"accuracy": 0.0, "latency_ms": 10.0, "energy_mj": 5.0})
    assert a.add("no-energy", {"accuracy": 0.9, "latency_ms": 5.0})
    # Same accuracy and latency with a measured energy dominates the one without.
    assert a.add("with-energy", {"accuracy": 0.9, "latency_ms": 5.0, "energy_mj": 1.0})
    assert a.keys() == ["with-energy"]
    assert a.hypervolume() == pytest.approx(0.9 * 5.0 * 4.0)


def test_archive_scale_makes_the_volume_dimensionless():
    a = ParetoArchive(reference={"accuracy": 0.0, "latency_ms": 10.0}, scale={"latency_ms": 10.0})
    a.add("p", {"accuracy": 0.5, "latency_ms": 5.0})
    assert a.hypervolume() == pytest.approx(0.5 * 0.5)


def test_archive_without_reference_has_no_hypervolume():
    a = ParetoArchive()
    a.add("p", {"accuracy": 0.5, "latency_ms": 5.0})
    assert a.hypervolume() is None


points_2d = st.lists(
    st.tuples(st.floats(0, 1, allow_nan=False), st.floats(0, 1, allow_nan=False)), min_size=1, max_size=12
)
points_3d = st.lists(
    st.tuples(*(st.floats(0, 1, allow_nan=False) for _ in range(3))), min_size=1, max_size=8
)


@settings(max_examples=60, deadline=None)
@given(points_3d, st.tuples(*(st.floats(0, 1, allow_nan=False) for _ in range(3))))
def test_hypervolume_never_decreases_when_a_point_is_added(pts, extra):
    ref = np.full(3, 1.0)
    base = hypervolume(np.array(pts), ref)
    assert hypervolume(np.array([*pts, extra]), ref) >= base - 1e-12


@settings(max_examples=60, deadline=None)
@given(points_2d, st.floats(0, 1), st.floats(0, 1))
def test_dominated_point_does_not_change_hypervolume(pts, dx, dy):
    ref = np.full(2, 1.5)
    arr = np.array(pts)
    worse = arr[0] + np.array([dx, dy])
    assert hypervolume(np.vstack([arr, worse]), ref) == pytest.approx(hypervolume(arr, ref), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(points_2d)
def test_archive_hypervolume_equals_batch_hypervolume(pts):
    a = ParetoArchive(reference={"accuracy": 0.0, "latency_ms": 1.0})
    for i, (acc, lat) in enumerate(pts):
        a.add(f"k{i}", {"accuracy": acc, "latency_ms": lat})
    batch = hypervolume(np.array([[-acc, lat] for acc, lat in pts]), np.array([0.0, 1.0]))
    assert a.hypervolume() == pytest.approx(batch, abs=1e-12)
