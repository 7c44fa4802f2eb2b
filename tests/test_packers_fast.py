"""The fast heuristics equal the slow one-prompt-at-a-time definitions.

FFD / first-fit / next-fit / worst-fit / WFD must give exactly the reference bins; best-fit,
BFD and the histogram packer break ties between equal-room bins differently, which by
construction changes neither the bin count nor the multiset of loads, so those are compared.
The batched FFD/BFD paths and the one-at-a-time fallbacks are both forced and checked.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packer_oracles import loads_of, reference_fit

import packers
from packers import decreasing
from packers._structures import FreeSpaceTree, SortedInts
from packers.decreasing import best_fit_decreasing, first_fit_decreasing
from packers.histogram import pack_histogram
from packers.online import best_fit, first_fit

# name -> (reference rule, decreasing?, exact bins?)
REFERENCES = {
    "next-fit": ("next", False, True),
    "first-fit": ("first", False, True),
    "best-fit": ("best", False, False),
    "worst-fit": ("worst", False, True),
    "ffd": ("first", True, True),
    "bfd": ("best", True, False),
    "wfd": ("worst", True, True),
    "lpfhp": ("worst", True, False),
}


@contextmanager
def batched(on: bool):
    """Force the batched-by-length path (on) or the one-at-a-time path (off) of ffd/bfd."""
    saved = decreasing.MIN_RUN
    decreasing.MIN_RUN = 0 if on else 10**12
    try:
        yield
    finally:
        decreasing.MIN_RUN = saved


@st.composite
def instances(draw, max_prompts: int = 80):
    capacity = draw(st.integers(1, 120))
    palette = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=draw(st.sampled_from([2, 5, 200]))))
    lengths = draw(st.lists(st.sampled_from(palette), min_size=1, max_size=max_prompts))
    return lengths, capacity


CASES = [(name, True) for name in sorted(REFERENCES)] + [("ffd", False), ("bfd", False)]


@pytest.mark.parametrize(("name", "batch"), CASES, ids=[f"{n}-{'batched' if b else 'one-at-a-time'}" for n, b in CASES])
@settings(max_examples=60, deadline=None)
@given(case=instances())
def test_matches_reference(name, batch, case):
    lengths, capacity = case
    rule, dec, exact = REFERENCES[name]
    expected = reference_fit(lengths, capacity, rule, dec)
    with batched(batch):
        got = packers.make_packer(name).pack(lengths, capacity)
    if exact:
        assert [list(b) for b in got.bins] == expected
    else:
        assert got.num_bins == len(expected)
        assert loads_of(got.bins, lengths) == loads_of(expected, lengths)


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_equals_one_at_a_time_on_many_bins(seed):
    """Thousands of bins: the 64-ary tree has three levels; results must not change."""
    rng = np.random.default_rng(seed)
    capacity = 60
    lengths = np.clip(np.rint(rng.lognormal(2.5, 0.8, 120_000)), 1, capacity).astype(np.int64)
    order, fast = first_fit_decreasing(lengths, capacity)
    assert int(fast.max()) + 1 > 64 * 64
    np.testing.assert_array_equal(fast, first_fit(lengths, order, capacity))
    order_b, fast_b = best_fit_decreasing(lengths, capacity)
    np.testing.assert_array_equal(order_b, order)
    slow_b = best_fit(lengths, order, capacity)
    assert fast_b.max() == slow_b.max()
    loads = lambda bin_of: np.sort(np.bincount(bin_of, weights=lengths[order]))
    np.testing.assert_array_equal(loads(fast_b), loads(slow_b))


def test_huge_capacity_uses_the_one_at_a_time_path():
    rng = np.random.default_rng(3)
    capacity = 10**9
    lengths = rng.integers(1, capacity // 3, 2000)
    p = packers.make_packer("ffd").pack(lengths, capacity)
    expected = reference_fit(lengths.tolist(), capacity, "first", True)
    assert [list(b) for b in p.bins] == expected


class _TinyBlocks(SortedInts):
    LOAD = 2  # split blocks after 4 values, so a few dozen operations exercise every branch


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(st.tuples(st.booleans(), st.integers(0, 10**15), st.integers(-1, 10**15 + 5)), max_size=60),
    small=st.integers(0, 40),
)
def test_sorted_ints_matches_a_python_set(ops, small):
    # half of the values come from a small range so that adds and discards collide
    for cls in (SortedInts, _TinyBlocks):
        ours, ref = cls(), set()
        for add, value, query in ops:
            value = value if value % 2 else small + value % 7
            (ours.add if add else ours.discard)(value)
            (ref.add if add else ref.discard)(value)
            assert ours.successor(query) == min((v for v in ref if v >= query), default=-1)
            assert ours.predecessor(query) == max((v for v in ref if v <= query), default=-1)
        assert len(ours) == len(ref)


def test_free_space_tree_finds_leftmost_bins():
    rng = np.random.default_rng(0)
    tree = FreeSpaceTree(5000)
    free = rng.integers(0, 100, 5000)
    tree.update_range(0, free[:3000])
    tree.update(np.arange(3000, 5000), free[3000:])
    for s in (1, 50, 98, 99, 100):
        expected = np.flatnonzero(free >= s)[:17]
        np.testing.assert_array_equal(tree.leftmost(s, 17), expected)
    tree.update(np.array([3, 4000]), np.array([0, 0]))
    free[[3, 4000]] = 0
    np.testing.assert_array_equal(tree.leftmost(1, 10**6), np.flatnonzero(free >= 1))


def test_histogram_strategies_and_bad_histograms():
    strategies = pack_histogram([6, 4, 3], [3, 3, 2], 10)
    rows = sum(r for _, r in strategies)
    assert rows == 4  # 6+4 (x3) and 3+3
    assert sum(r * c for content, r in strategies for s, c in content if s == 4) == 3
    for sizes, counts in (([11], [1]), ([0], [1]), ([3], [0]), ([3, 3], [1, 1]), ([3], [1, 2])):
        with pytest.raises(ValueError):
            pack_histogram(sizes, counts, 10)
    with pytest.raises(ValueError):
        packers.make_packer("lpfhp", max_per_bin=0)


@settings(max_examples=60, deadline=None)
@given(case=instances(), cap=st.integers(1, 4))
def test_lpfhp_respects_max_per_bin(case, cap):
    lengths, capacity = case
    p = packers.make_packer("lpfhp", max_per_bin=cap).pack(lengths, capacity)
    assert max(len(b) for b in p.bins) <= cap
    assert p.num_bins >= -(-len(lengths) // cap)
