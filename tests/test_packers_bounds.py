"""Lower bounds: L1 <= L2 <= OPT, L2's textbook cases, and the column-generation LP bound."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packer_oracles import optimal_bins, perfect_instance

from packers import bounds
from packers.colgen import best_patterns, lp_bound


@st.composite
def small_instances(draw):
    capacity = draw(st.integers(1, 40))
    lengths = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=9))
    return lengths, capacity


@settings(max_examples=150, deadline=None)
@given(case=small_instances())
def test_l1_le_l2_le_opt(case):
    lengths, capacity = case
    l1, l2 = bounds.l1(lengths, capacity), bounds.l2(lengths, capacity)
    assert l1 == -(-sum(lengths) // capacity)
    assert l1 <= l2 <= optimal_bins(lengths, capacity)
    assert bounds.lower_bound(lengths, capacity) == max(l1, l2)


@pytest.mark.parametrize(
    ("lengths", "capacity", "expected_l1", "expected_l2"),
    [
        ([6, 6, 6], 10, 2, 3),  # three items over C/2: one bin each
        ([7, 7, 3, 3, 3, 3], 10, 3, 3),
        ([51] * 10 + [49] * 10, 100, 10, 10),
        ([60, 60, 60, 30, 30, 30, 30], 100, 3, 3),  # OPT = 4: L2 counts room, not fit
        ([5], 5, 1, 1),
    ],
)
def test_l2_textbook_cases(lengths, capacity, expected_l1, expected_l2):
    assert bounds.l1(lengths, capacity) == expected_l1
    assert bounds.l2(lengths, capacity) == expected_l2


def test_bounds_reject_bad_input():
    with pytest.raises(ValueError, match="prompt 1"):
        bounds.l2([3, 11], 10)
    with pytest.raises(ValueError, match="capacity"):
        bounds.l1([3], 0)


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 30), min_size=1, max_size=5, unique=True),
    limits=st.lists(st.integers(0, 4), min_size=5, max_size=5),
    values=st.lists(st.floats(0, 3), min_size=5, max_size=5),
    capacity=st.integers(1, 60),
)
def test_best_pattern_is_the_knapsack_optimum(sizes, limits, values, capacity):
    t = len(sizes)
    sizes_a, limits_a, values_a = np.array(sizes), np.array(limits[:t]), np.array(values[:t])
    value, pattern = best_patterns(sizes_a, limits_a, values_a, capacity)[0]
    assert (pattern >= 0).all() and (pattern <= limits_a).all() and sizes_a @ pattern <= capacity
    grids = np.stack(np.meshgrid(*[np.arange(u + 1) for u in limits_a], indexing="ij"), -1).reshape(-1, t)
    fits = grids[grids @ sizes_a <= capacity]
    assert value == pytest.approx(float((fits @ values_a).max()), abs=1e-7)


@settings(max_examples=60, deadline=None)
@given(case=small_instances())
def test_lp_bound_between_l1_and_opt(case):
    lengths, capacity = case
    sizes, type_of = np.unique(lengths, return_inverse=True)
    counts = np.bincount(type_of)
    singles = np.diag(np.minimum(counts, capacity // sizes))  # one type per pattern: covers all
    lp = lp_bound(sizes, counts, capacity, singles, time_limit_s=5)
    assert lp.converged
    assert bounds.l1(lengths, capacity) <= lp.bound <= optimal_bins(lengths, capacity)
    assert lp.lp_value >= lp.bound - 1 + 1e-9
    assert lp.patterns.shape[1] == sizes.size and ((lp.patterns @ sizes) <= capacity).all()


@pytest.mark.parametrize(
    ("lengths", "capacity", "opt"),
    [([4] * 7, 10, 4), ([60, 60, 60, 30, 30, 30, 30], 100, 4)],  # L2 = 3 in both
)
def test_lp_bound_beats_l2_on_known_cases(lengths, capacity, opt):
    sizes, type_of = np.unique(lengths, return_inverse=True)
    counts = np.bincount(type_of)
    assert bounds.l2(lengths, capacity) == opt - 1
    assert lp_bound(sizes, counts, capacity, np.diag(np.minimum(counts, capacity // sizes))).bound == opt


def test_lp_bound_is_tight_on_perfect_fills():
    rng = np.random.default_rng(0)
    lengths = perfect_instance(rng, 12, 100, max_parts=3)
    sizes, type_of = np.unique(lengths, return_inverse=True)
    counts = np.bincount(type_of)
    lp = lp_bound(sizes, counts, 100, np.diag(np.minimum(counts, 100 // sizes)))
    assert lp.bound == 12
