"""The exact packer: optimal where the optimum is known, never worse than FFD, honest status."""

from __future__ import annotations

import math
import time
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packer_oracles import optimal_bins, perfect_instance

import packers
from packers import ilp
from packers.colgen import lp_bound

FAST = {"time_limit_s": 5.0, "num_workers": 1}


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(2, 40), data=st.data())
def test_optimal_on_small_instances(capacity, data):
    lengths = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=10))
    p = packers.make_packer("ilp", **FAST).pack(lengths, capacity)
    assert p.num_bins == optimal_bins(lengths, capacity)
    assert p.meta["status"] == "optimal" and p.lower_bound == p.num_bins


@pytest.mark.parametrize("seed", range(4))
def test_beats_ffd_on_perfect_fills(seed):
    """Lengths that fill 15 bins exactly, chosen so that FFD needs 16."""
    lengths = perfect_instance(np.random.default_rng(seed), 15, 100, max_parts=4)
    assert packers.make_packer("ffd").pack(lengths, 100).num_bins == 16
    p = packers.make_packer("ilp", **FAST).pack(lengths, 100)
    assert p.num_bins == 15 and p.meta["status"] == "optimal"
    assert p.meta["ffd_bins"] == 16 and p.meta["l2_bound"] == 15


def test_timeout_is_feasible_not_an_error():
    lengths = perfect_instance(np.random.default_rng(0), 15, 100, max_parts=4)
    p = packers.make_packer("ilp", time_limit_s=1e-4).pack(lengths, 100)
    assert p.meta["status"] == "feasible"
    assert p.num_bins <= p.meta["ffd_bins"] and p.lower_bound < p.num_bins


def test_skips_the_solver_when_ffd_meets_the_bound():
    p = packers.make_packer("ilp").pack([6, 4, 6, 4, 5, 5], 10)
    assert p.num_bins == 3 and p.meta["status"] == "optimal" and p.meta["proof"] == "ffd = l2"
    assert "lp_bound" not in p.meta


def test_max_cells_skips_the_models():
    lengths = perfect_instance(np.random.default_rng(0), 15, 100, max_parts=4)
    p = packers.make_packer("ilp", max_cells=1).pack(lengths, 100)
    assert p.meta["status"] == "feasible" and "skipped" in p.meta
    assert p.bins == packers.make_packer("ffd").pack(lengths, 100).bins


@settings(max_examples=30, deadline=None)
@given(capacity=st.integers(10, 200), data=st.data())
def test_never_more_bins_than_ffd(capacity, data):
    lengths = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=40))
    p = packers.make_packer("ilp", time_limit_s=0.3, num_workers=1).pack(lengths, capacity)
    assert p.num_bins <= packers.make_packer("ffd").pack(lengths, capacity).num_bins


@pytest.mark.parametrize(
    "params",
    [{"time_limit_s": 0}, {"time_limit_s": -1}, {"time_limit_s": math.nan}, {"time_limit_s": "5"},
     {"num_workers": 0}, {"num_workers": 1.5}, {"max_cells": 0}, {"nonsense": 1}],
)
def test_bad_hyperparameters(params):
    with pytest.raises(ValueError):
        packers.make_packer("ilp", **params)


def _problem(lengths, capacity):
    arr = np.array(lengths)
    sizes, type_of = np.unique(arr, return_inverse=True)
    return arr, sizes, type_of, np.bincount(type_of)


def _check_take(take, sizes, counts, capacity):
    np.testing.assert_array_equal(take.sum(axis=1), counts)
    assert (sizes @ take <= capacity).all() and take.any(axis=0).all()


def test_item_model_finds_or_refutes_a_bin_count():
    lengths, capacity = [5, 5, 4, 3, 3, 2, 2, 1], 10  # 25 tokens, OPT = 3
    arr, sizes, type_of, counts = _problem(lengths, capacity)
    packer = packers.make_packer("ilp", num_workers=1)
    take, infeasible = ilp._item_model(arr, type_of, sizes.size, capacity, 3, time.perf_counter() + 5.0, packer)
    _check_take(take, sizes, counts, capacity)
    assert not infeasible
    _, sizes2, type2, _ = _problem([6, 6, 6], 10)
    take, infeasible = ilp._item_model(np.array([6, 6, 6]), type2, sizes2.size, 10, 2, time.perf_counter() + 5.0, packer)
    assert take is None and infeasible


def test_lp_heuristics_and_pattern_model_give_valid_packings():
    lengths = perfect_instance(np.random.default_rng(2), 15, 100, max_parts=4)
    _, sizes, type_of, counts = _problem(lengths, 100)
    lp = lp_bound(sizes, counts, 100, np.diag(np.minimum(counts, 100 // sizes)))
    packer = packers.make_packer("ilp", num_workers=1)
    for take in (
        ilp._residual_rounding(lp.patterns, lp.usage, sizes, counts, 100),
        ilp._dive(lp.patterns, lp.usage, sizes, counts, 100, 5.0),
        ilp._pattern_model(lp.patterns, counts, lp.bound, 20, time.perf_counter() + 5.0, packer),
    ):
        _check_take(take, sizes, counts, 100)
    bins = ilp._bins_from_counts(take, type_of)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))


def test_importing_packers_does_not_import_ortools():
    code = "import sys, packers; packers.make_packer('ffd').pack([3, 4], 5); print('ortools' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
