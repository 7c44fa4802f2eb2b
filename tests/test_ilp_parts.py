"""The `ilp` packer's parts: the minimum-slack fill, the arc-flow model, the LP speed-ups.

Every exactness claim is checked against brute force on small instances: a wrong
infeasibility proof or a wrong lower bound fails these tests.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packer_oracles import optimal_bins

import packers
from packers import ilp
from packers.arcflow import arc_graph, solve_arcflow
from packers.bounds import l1
from packers.colgen import PatternLP, lp_bound
from packers.completion import min_slack_fill, randomized_fill

# 256 real MMLU prompt lengths (a batch of the packer benchmark), capacity = the longest:
# FFD needs 18 rows, L2 = 17, and the slack at 17 rows is 6 tokens in all.
MMLU_256 = [
    10, 229, 83, 11, 95, 103, 24, 100, 30, 31, 248, 44, 24, 26, 38, 1130, 239, 18, 13, 85, 176, 411,
    17, 17, 31, 74, 76, 108, 13, 11, 245, 17, 40, 34, 44, 41, 16, 10, 45, 287, 9, 7, 185, 65, 9, 261,
    83, 14, 47, 17, 19, 18, 55, 339, 38, 21, 17, 18, 20, 481, 36, 42, 10, 52, 13, 20, 17, 17, 138, 86,
    18, 22, 9, 12, 14, 10, 211, 15, 18, 86, 85, 23, 18, 11, 33, 23, 14, 198, 45, 31, 24, 118, 14, 448,
    16, 20, 18, 18, 29, 15, 26, 15, 40, 683, 60, 84, 19, 28, 17, 50, 13, 29, 21, 19, 12, 271, 102, 490,
    30, 24, 45, 17, 22, 29, 52, 85, 20, 15, 71, 83, 28, 178, 8, 95, 15, 284, 208, 11, 17, 52, 19, 13,
    10, 17, 93, 19, 30, 83, 252, 154, 15, 20, 85, 25, 266, 86, 10, 22, 44, 10, 173, 22, 13, 19, 14, 38,
    90, 14, 30, 13, 31, 18, 211, 29, 25, 66, 89, 205, 23, 17, 12, 9, 10, 11, 43, 143, 100, 138, 15, 12,
    30, 408, 18, 391, 16, 18, 19, 333, 21, 14, 17, 19, 91, 9, 30, 9, 26, 42, 174, 4, 22, 34, 82, 297,
    551, 17, 22, 14, 12, 28, 43, 44, 29, 116, 89, 9, 32, 25, 18, 108, 24, 10, 20, 20, 55, 51, 20, 11,
    83, 21, 75, 13, 102, 18, 16, 490, 100, 22, 10, 53, 12, 25, 35, 90, 43, 166,
]


def _types(lengths):
    sizes, type_of = np.unique(np.asarray(lengths), return_inverse=True)
    return sizes, np.bincount(type_of)


def _check(take, sizes, counts, capacity):
    np.testing.assert_array_equal(take.sum(axis=1), counts)
    assert (sizes @ take <= capacity).all()


def _triplets(k, rng, capacity=1000):
    """Falkenauer-style: k rows each filled exactly by three prompts (as in the benchmark)."""
    items = []
    for _ in range(k):
        a = int(rng.integers(380, 491))
        b = int(rng.integers(250, min(a, capacity - a - 250) + 1))
        items += [a, b, capacity - a - b]
    return rng.permutation(np.array(items))


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(1, 300), data=st.data())
def test_fill_packs_every_prompt_within_capacity(capacity, data):
    lengths = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=60))
    sizes, counts = _types(lengths)
    take = min_slack_fill(sizes, counts, capacity)
    _check(take, sizes, counts, capacity)
    assert take.any(axis=0).all()
    rows = data.draw(st.integers(l1(lengths, capacity), len(lengths)))
    rng = random.Random(data.draw(st.integers(0, 9)))
    noisy = min_slack_fill(sizes, counts, capacity, max_rows=rows, rng=rng, noise=0.3, slack_share=0.3)
    if noisy is not None:  # within the waste budget of `rows` rows, so never more rows
        _check(noisy, sizes, counts, capacity)
        assert noisy.shape[1] <= rows


def test_fill_beats_ffd_on_a_near_perfect_mix():
    lengths, capacity = [18, 10, 8, 8, 7, 4, 4], 21  # FFD: 4 rows; optimum 3
    sizes, counts = _types(lengths)
    assert packers.make_packer("ffd").pack(lengths, capacity).num_bins == 4
    take = min_slack_fill(sizes, counts, capacity)
    _check(take, sizes, counts, capacity)
    assert take.shape[1] == 3 == optimal_bins(lengths, capacity)


def test_fill_meets_l2_on_a_real_batch():
    sizes, counts = _types(MMLU_256)
    assert packers.make_packer("ffd").pack(MMLU_256, 1130).num_bins == 18
    take = min_slack_fill(sizes, counts, 1130)
    _check(take, sizes, counts, 1130)
    assert take.shape[1] == 17


def test_randomized_fill_gives_up_on_an_impossible_row_count():
    sizes, counts = _types([6, 6, 6])
    assert randomized_fill(sizes, counts, 10, 2, time_s=0.05) is None
    sizes, counts = _types([5, 5, 4, 3, 3, 2, 2, 1])
    take = randomized_fill(sizes, counts, 10, 3, time_s=1.0)
    _check(take, sizes, counts, 10)
    assert take.shape[1] == 3


@settings(max_examples=60, deadline=None)
@given(capacity=st.integers(2, 40), data=st.data())
def test_arcflow_is_exact(capacity, data):
    """Infeasible exactly below the optimum; at the optimum, a valid packing."""
    lengths = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=9))
    sizes, counts = _types(lengths)
    opt = optimal_bins(lengths, capacity)
    for rows in range(l1(lengths, capacity), opt + 1):
        take, infeasible = solve_arcflow(arc_graph(sizes, counts, capacity, rows), sizes, counts, rows, 5.0, 1)
        if rows < opt:
            assert take is None and infeasible
        else:
            _check(take, sizes, counts, capacity)
            assert take.shape[1] <= rows and not infeasible


def test_arcflow_graph_reductions():
    rng = np.random.default_rng(0)
    lengths = _triplets(20, rng)
    sizes, counts = _types(lengths)
    graph = arc_graph(sizes, counts, 1000, 20)  # no waste allowed: rows end at 1000 only
    assert graph.budget == 0 and graph.ends.tolist() == [1000]
    assert (graph.heads == graph.tails + sizes[graph.types]).all() and graph.heads.max() <= 1000
    take, _ = solve_arcflow(graph, sizes, counts, 20, 5.0, 1)
    _check(take, sizes, counts, 1000)
    assert take.shape[1] == 20 and (sizes @ take == 1000).all()
    assert arc_graph(sizes, counts, 1000, 20, max_arcs=10) is None
    with pytest.raises(ValueError):
        arc_graph(sizes, counts, 1000, 19)  # below the volume bound


@settings(max_examples=40, deadline=None)
@given(capacity=st.integers(2, 40), data=st.data())
def test_lp_bound_never_exceeds_the_optimum(capacity, data):
    lengths = data.draw(st.lists(st.integers(1, capacity), min_size=1, max_size=9))
    sizes, counts = _types(lengths)
    start = np.diag(np.minimum(counts, capacity // sizes))
    opt = optimal_bins(lengths, capacity)
    settled = PatternLP(sizes, capacity, counts, start).run(5.0, stop_when_settled=True)
    assert settled.settled and settled.bound <= opt
    full = lp_bound(sizes, counts, capacity, start, time_limit_s=5.0)
    plain = PatternLP(sizes, capacity, counts, start, swaps=False).run(5.0, smoothing=0.0)
    assert full.converged and plain.converged and full.bound <= opt
    assert full.lp_value == pytest.approx(plain.lp_value, abs=1e-6)  # the speed-ups keep the LP
    assert full.bound == math.ceil(plain.lp_value - 1e-6)


def test_lp_without_swaps_uses_patterns_only():
    rng = np.random.default_rng(1)
    lengths = rng.integers(20, 400, 80)
    sizes, counts = _types(lengths)
    master = PatternLP(sizes, 1000, counts, np.diag(np.minimum(counts, 1000 // sizes)))
    master.run(5.0)
    master.set_swaps(False)
    lp = master.run(5.0)
    assert lp.converged
    covered = lp.patterns.T @ lp.usage  # the patterns alone cover every demand
    assert (covered >= counts - 1e-6).all()


class _FailsOnce:
    """A GLOP stand-in whose first Solve() ends abnormally (as GLOP sometimes does)."""

    def __init__(self, solver):
        self._solver, self._failed = solver, False

    def Solve(self):  # pywraplp's name
        if not self._failed:
            self._failed = True
            return 4  # MPSOLVER_ABNORMAL
        return self._solver.Solve()

    def __getattr__(self, name):
        return getattr(self._solver, name)


def test_lp_rebuilds_after_an_abnormal_solve():
    sizes, counts = _types(MMLU_256)
    start = np.diag(np.minimum(counts, 1130 // sizes))
    master = PatternLP(sizes, 1130, counts, start)
    master.solver = _FailsOnce(master.solver)
    lp = master.run(10.0)
    assert lp.converged and lp.bound == 17 and lp.iterations > 1


def test_ilp_proves_the_real_batch_at_once():
    p = packers.make_packer("ilp", time_limit_s=10.0, num_workers=1).pack(MMLU_256, 1130)
    assert p.num_bins == 17 and p.meta["status"] == "optimal"
    assert p.meta["ffd_bins"] == 18 and p.meta["proof"] == "min-slack fill = l2"
    assert "lp_bound" not in p.meta  # no LP needed


@pytest.mark.parametrize("seed", range(3))
def test_ilp_proves_exact_triplets(seed):
    lengths = _triplets(40, np.random.default_rng(seed))
    p = packers.make_packer("ilp", time_limit_s=10.0, num_workers=1).pack(lengths, 1000)
    assert p.num_bins == 40 and p.meta["status"] == "optimal" and p.meta["ffd_bins"] > 40
    assert sorted(i for row in p.bins for i in row) == list(range(len(lengths)))


@pytest.mark.parametrize(("max_arcs", "label"), [(ilp.MAX_ARCS, "arc-flow"), (0, "item model")])
def test_exact_step_proves_a_row_count_infeasible(monkeypatch, max_arcs, label):
    """With the fills and the LP off, only the exact step can prove FFD's 3 rows optimal."""
    monkeypatch.setattr(ilp, "MAX_DP_CELLS", 0)
    monkeypatch.setattr(ilp, "MAX_ARCS", max_arcs)
    lengths = [11, 7, 7, 3, 3]  # 31 tokens in rows of 16: L2 = 2, optimum 3 = FFD
    p = packers.make_packer("ilp", time_limit_s=10.0, num_workers=1).pack(lengths, 16)
    assert p.meta["l2_bound"] == 2 and optimal_bins(lengths, 16) == 3
    assert p.num_bins == 3 and p.meta["status"] == "optimal"
    assert p.meta["proof"] == f"ffd = {label}: 2 rows infeasible"
