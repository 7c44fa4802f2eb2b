"""The conformance suite: every registered packer honours the `Packer` contract.

Parametrised over `packers.PACKERS` (plus a few non-default hyperparameters), so a new
packer is covered the moment it registers. Property-based where the property is general.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from packer_oracles import optimal_bins, perfect_instance

import packers
from packers import bounds

# Hyperparameters used in the suite: keep the exact packer's budget small; one CP-SAT
# worker makes its runs repeatable (several workers: only the proven row count is).
PARAMS = {"ilp": {"time_limit_s": 1.0, "num_workers": 1}}
CONFIGS = [(name, PARAMS.get(name, {})) for name in sorted(packers.PACKERS)]
CONFIGS += [("lpfhp", {"max_per_bin": 2}), ("ilp", {"time_limit_s": 1.0, "num_workers": 2})]
IDS = [name + "".join(f"-{k}={v}" for k, v in params.items()) for name, params in CONFIGS]
MAX_PROMPTS = {"ilp": 16}  # exact packer: keep generated instances small

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def instances(draw, max_prompts: int = 60, max_capacity: int = 300):
    capacity = draw(st.integers(1, max_capacity))
    if draw(st.booleans()):  # few distinct lengths: exercises the batched code paths
        palette = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=4))
        lengths = draw(st.lists(st.sampled_from(palette), min_size=1, max_size=max_prompts))
    else:
        lengths = draw(st.lists(st.integers(1, capacity), min_size=1, max_size=max_prompts))
    return lengths, capacity


def check_packing(p: packers.Packing, name: str, lengths: list[int], capacity: int) -> None:
    n = len(lengths)
    assert p.packer == name
    assert p.lengths == tuple(lengths)
    assert p.capacity == capacity
    flat = sorted(i for b in p.bins for i in b)
    assert flat == list(range(n)), "every prompt exactly once"
    assert all(len(b) > 0 for b in p.bins)
    loads = [sum(lengths[i] for i in b) for b in p.bins]
    assert list(p.loads) == loads
    assert max(loads) <= capacity
    assert {"lower_bound", "status", "solve_time_s"} <= set(p.meta)
    assert p.meta["status"] in ("optimal", "feasible", "heuristic")
    assert p.meta["solve_time_s"] >= 0
    assert bounds.l1(lengths, capacity) <= p.lower_bound <= p.num_bins
    if p.meta["status"] == "optimal":
        assert p.num_bins == p.lower_bound, "'optimal' must be certified by the bound"
    assert p.padded_tokens == p.num_bins * max(loads) - sum(lengths)
    assert 0 < p.efficiency <= 1


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
class TestContract:
    @SETTINGS
    @given(data=st.data())
    def test_valid_packing_never_below_bounds(self, name, params, data):
        lengths, capacity = data.draw(instances(MAX_PROMPTS.get(name, 60)))
        p = packers.make_packer(name, **params).pack(lengths, capacity)
        check_packing(p, name, lengths, capacity)
        assert p.num_bins >= bounds.l2(lengths, capacity)

    @SETTINGS
    @given(data=st.data())
    def test_deterministic_and_inputs_untouched(self, name, params, data):
        lengths, capacity = data.draw(instances(MAX_PROMPTS.get(name, 60)))
        as_list = list(lengths)
        as_array = np.array(lengths, dtype=np.int32)
        array_copy = as_array.copy()
        packer = packers.make_packer(name, **params)
        first = packer.pack(as_list, capacity)
        second = packer.pack(as_array, capacity)
        third = packers.make_packer(name, **params).pack(tuple(lengths), capacity)
        assert as_list == lengths
        np.testing.assert_array_equal(as_array, array_copy)
        if name != "ilp" or params["num_workers"] == 1:
            assert first.bins == second.bins == third.bins
        else:  # wall-clock solver: the row count is still reproducible when proven optimal
            if first.meta["status"] == "optimal" and second.meta["status"] == "optimal":
                assert first.num_bins == second.num_bins

    @SETTINGS
    @given(data=st.data())
    def test_never_below_optimum(self, name, params, data):
        lengths, capacity = data.draw(instances(max_prompts=9, max_capacity=40))
        p = packers.make_packer(name, **params).pack(lengths, capacity)
        assert p.num_bins >= optimal_bins(lengths, capacity)

    def test_accepts_numpy_and_integral_floats(self, name, params):
        lengths = [5, 3, 7, 2, 2, 9]
        expected = packers.make_packer(name, **params).pack(lengths, 10).bins
        for variant in (np.array(lengths, dtype=np.int64), np.array(lengths, dtype=np.float64), [float(x) for x in lengths]):
            assert packers.make_packer(name, **params).pack(variant, np.int64(10)).bins == expected

    def test_single_prompt_and_full_rows(self, name, params):
        p = packers.make_packer(name, **params).pack([10], 10)
        assert p.bins == ((0,),) and p.efficiency == 1.0
        q = packers.make_packer(name, **params).pack([10] * 5, 10)
        assert q.num_bins == 5

    @pytest.mark.parametrize(
        ("lengths", "capacity", "needles"),
        [
            ([], 10, ["empty"]),
            ([3, -1], 10, ["prompt 1", "-1"]),
            ([3, 4, 0], 10, ["prompt 2", "0"]),
            ([3, 2.5], 10, ["prompt 1", "2.5"]),
            ([3, math.nan], 10, ["prompt 1", "nan"]),
            ([3, math.inf], 10, ["prompt 1", "inf"]),
            ([3, 11, 12], 10, ["prompt 1", "11", "capacity 10"]),
            ([True, 2], 10, ["prompt 0"]),
            ([3, "4"], 10, ["prompt 1", "'4'"]),
            ("abc", 10, ["integers"]),
            ([[1, 2], [3, 4]], 10, ["flat"]),
            ([3], 0, ["capacity", "0"]),
            ([3], -4, ["capacity", "-4"]),
            ([3], 4.5, ["capacity", "4.5"]),
            ([3], "10", ["capacity", "'10'"]),
            ([3], math.nan, ["capacity", "nan"]),
        ],
    )
    def test_bad_input_names_index_and_value(self, name, params, lengths, capacity, needles):
        with pytest.raises(ValueError) as info:
            packers.make_packer(name, **params).pack(lengths, capacity)
        for needle in needles:
            assert needle in str(info.value)


@pytest.mark.parametrize("name", ["ffd", "bfd"])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_ffd_bfd_within_11_9_opt_plus_6_9(name, data):
    """Dosa's tight bound, on instances whose optimum is known (exhaustive or perfect fill)."""
    if data.draw(st.booleans()):
        lengths, capacity = data.draw(instances(max_prompts=9, max_capacity=40))
        opt = optimal_bins(lengths, capacity)
    else:
        seed = data.draw(st.integers(0, 2**32 - 1))
        opt = data.draw(st.integers(1, 30))
        capacity = data.draw(st.integers(8, 200))
        lengths = perfect_instance(np.random.default_rng(seed), opt, capacity, max_parts=4)
    p = packers.make_packer(name).pack(lengths, capacity)
    assert p.num_bins <= 11 / 9 * opt + 6 / 9


def test_required_names_are_registered():
    required = {"next-fit", "first-fit", "best-fit", "worst-fit", "ffd", "bfd", "wfd", "pad", "ilp"}
    assert required <= set(packers.PACKERS)


def test_pad_and_sorted_are_one_prompt_per_row():
    lengths = [4, 9, 1, 9, 3]
    assert packers.make_packer("pad").pack(lengths, 9).bins == ((0,), (1,), (2,), (3,), (4,))
    assert packers.make_packer("sorted").pack(lengths, 9).bins == ((1,), (3,), (0,), (4,), (2,))
