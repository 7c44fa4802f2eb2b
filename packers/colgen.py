"""The Gilmore-Gomory LP bound on bins, by column generation (used by the `ilp` packer).

The pattern LP: choose how often to use each *pattern* (a multiset of lengths that fits
one row) so that every length's demand is covered, minimising the number of rows. Its
optimum, rounded up, is a far stronger lower bound than L2 (bin packing almost always has
OPT = ceil(LP), the "integer round-up property"), which is what lets `ilp` prove FFD
optimal at once on most real batches where FFD = L2 + 1.

The bound reported is Farley's: for duals pi >= 0 and v = the most any fitting pattern
earns at those duals (a bounded knapsack solved exactly by dynamic programming),
sum(demand * pi) / v <= LP <= OPT. It is valid at every iteration, so a time limit only
weakens it. The patterns found are returned too, so an integer program over them can
then look for a packing that meets the bound.

Two standard speed-ups keep the number of rounds down on wide capacities (thousands of
tokens, hundreds of distinct lengths):
- Dual-optimal inequalities (Ben Amor, Desrosiers and Valerio de Carvalho, 2006): a
  zero-cost "swap" column per pair of consecutive lengths lets a slot of the longer length
  hold a prompt of the shorter one. The LP optimum is unchanged (a pattern with a prompt
  swapped for a shorter one still fits), but the duals are kept ordered by length, which
  cuts the zig-zagging of the duals.
- Dual smoothing (Wentges, 1997): the pricing runs at a mix of the current duals and the
  duals that gave the best bound so far; when that finds no improving column for the
  current master ("mis-pricing"), the current duals are priced as well.
Where only the bound matters, column generation can stop once the bound equals
ceil(restricted master optimum): no further round can raise the integer bound then.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LPBound", "best_patterns", "lp_bound"]

_EPS = 1e-9


@dataclass(frozen=True)
class LPBound:
    """Result of `lp_bound`.

    bound: proven lower bound on rows (int, >= 1); lp_value: last restricted-master optimum
    (an upper estimate of the LP); patterns: (num_patterns, num_types) int array of every
    pattern generated; usage: the last master solution (rows per pattern, fractional);
    converged: True when no pattern with negative reduced cost is left
    (then ceil(lp_value) is the bound, up to float tolerance); settled: True when the bound
    equals ceil(lp_value), so more column generation cannot raise it (converged or not);
    iterations; time_s.
    """

    bound: int
    lp_value: float
    patterns: np.ndarray
    usage: np.ndarray
    converged: bool
    iterations: int
    time_s: float
    settled: bool = False


def best_patterns(
    sizes: np.ndarray, limits: np.ndarray, values: np.ndarray, capacity: int, k: int = 1
) -> list[tuple[float, np.ndarray]]:
    """Bounded knapsack: max values @ a subject to sizes @ a <= capacity, 0 <= a <= limits.

    Exact dynamic programming over 0..capacity with binary splitting of the limits:
    O(capacity x sum(log2 limits)) numpy work. Returns up to `k` distinct (value, a),
    best first: the optimum, then the best patterns of smaller total size (cheap extra
    columns for column generation).
    """
    pieces: list[tuple[int, int, float]] = []  # 0/1 items: (type, copies, value)
    for t in np.flatnonzero(values > _EPS).tolist():
        left, copies = int(limits[t]), 1
        while left > 0:
            c = min(copies, left)
            pieces.append((t, c, float(values[t]) * c))
            left -= c
            copies *= 2
    best = np.zeros(capacity + 1)
    chosen = np.zeros((len(pieces), capacity + 1), dtype=bool)
    for j, (t, c, v) in enumerate(pieces):
        w = int(sizes[t]) * c
        if w > capacity:
            continue
        cand = best[: capacity + 1 - w] + v
        take = cand > best[w:] + _EPS
        chosen[j, w:] = take
        best[w:] = np.where(take, cand, best[w:])
    # best[] is non-decreasing; the capacities where it steps up end distinct patterns.
    steps = np.flatnonzero(np.diff(best, prepend=0.0) > _EPS)
    out: list[tuple[float, np.ndarray]] = []
    for room in steps[np.argsort(-best[steps], kind="stable")][:k].tolist():
        pattern = np.zeros(sizes.size, dtype=np.int64)
        for j in range(len(pieces) - 1, -1, -1):
            if chosen[j, room]:
                t, c, _ = pieces[j]
                pattern[t] += c
                room -= int(sizes[t]) * c
        out.append((float(values @ pattern), pattern))
    if not out:
        out.append((0.0, np.zeros(sizes.size, dtype=np.int64)))
    return out


class PatternLP:
    """The restricted master LP over patterns, kept alive between calls.

    GLOP re-solves from its last basis after columns are added or demands change, so a
    diving heuristic can lower the demands step by step without rebuilding the LP.
    `bound` is the best bound found for the current demands, over all runs.
    swaps: include the swap columns (the dual-optimal inequalities); `set_swaps(False)`
    forbids them later, when a solution over patterns alone is wanted.
    """

    def __init__(
        self, sizes: np.ndarray, capacity: int, demand: np.ndarray, patterns: np.ndarray, swaps: bool = True
    ) -> None:
        from ortools.linear_solver import pywraplp

        self._pywraplp = pywraplp
        self.swaps = swaps
        self.sizes, self.capacity = sizes, capacity
        self._known: set[bytes] = set()
        self.patterns: list[np.ndarray] = []
        self.rows: list[Any] = []
        self.set_demand(demand)
        self._build()
        for pattern in np.asarray(patterns, dtype=np.int64):
            self.add_column(pattern)

    def _build(self) -> None:
        """A new GLOP model over the patterns and demands held (no basis kept)."""
        pywraplp = self._pywraplp
        self.solver = pywraplp.Solver.CreateSolver("GLOP")
        self.solver.SetSolverSpecificParametersAsString("use_dual_simplex: false")  # new columns keep primal feasibility
        self.rows = [self.solver.Constraint(0.0, self.solver.infinity()) for _ in range(self.sizes.size)]
        self.objective = self.solver.Objective()
        self.objective.SetMinimization()
        self._columns: list[Any] = []
        self._apply_demand()
        by_size = np.argsort(self.sizes, kind="stable").tolist()
        self._swaps: list[Any] = []
        for short, long in itertools.pairwise(by_size):  # dual-optimal inequality: pi[long] >= pi[short]
            swap = self.solver.NumVar(0.0, self.solver.infinity() if self.swaps else 0.0, "")
            self.rows[short].SetCoefficient(swap, 1.0)
            self.rows[long].SetCoefficient(swap, -1.0)
            self._swaps.append(swap)
        for pattern in self.patterns:
            self._add_var(pattern)

    def set_swaps(self, enabled: bool) -> None:
        """Allow or forbid the swap columns (forbidden: the solution uses patterns only)."""
        self.swaps = enabled
        for swap in self._swaps:
            swap.SetUb(self.solver.infinity() if enabled else 0.0)

    def _add_var(self, pattern: np.ndarray) -> None:
        var = self.solver.NumVar(0.0, self.solver.infinity(), "")
        self._columns.append(var)
        for t in np.flatnonzero(pattern).tolist():
            self.rows[t].SetCoefficient(var, float(pattern[t]))
        self.objective.SetCoefficient(var, 1.0)

    def _solve(self) -> bool:
        """Solve the master; on a numerical failure of the warm start, once more from scratch."""
        optimal = self._pywraplp.Solver.OPTIMAL
        if self.solver.Solve() == optimal:
            return True
        self._build()  # GLOP can end "abnormal" after many warm re-solves; a fresh model solves
        return self.solver.Solve() == optimal

    def set_demand(self, demand: np.ndarray) -> None:
        """Prompts of each length the patterns must cover (>= constraints)."""
        self.demand = np.asarray(demand, dtype=np.int64).copy()
        self.bound, self._center, self._best_farley = 1, None, -math.inf  # for these demands, over runs
        self._apply_demand()

    def _apply_demand(self) -> None:
        for row, d in zip(self.rows, self.demand.tolist()):
            row.SetLb(float(d))

    def add_column(self, pattern: np.ndarray) -> bool:
        """Add a pattern (False if it is already there)."""
        key = pattern.tobytes()
        if key in self._known:
            return False
        self._known.add(key)
        self.patterns.append(pattern)
        self._add_var(pattern)
        return True

    def run(
        self,
        time_limit_s: float,
        max_iterations: int = 500,
        stop_at: int | None = None,
        columns_per_iteration: int = 8,
        smoothing: float = 0.5,
        stop_when_settled: bool = False,
    ) -> LPBound:
        """Column generation from the current state; see `lp_bound` for the result.

        smoothing: weight of the best-bound duals in the pricing duals (0: plain Kelley);
        stop_when_settled: stop once the bound equals ceil(restricted optimum), when only
        the bound matters or a rough LP solution will do.
        """
        start = time.perf_counter()
        limits = np.minimum(self.demand, self.capacity // self.sizes)
        demand = self.demand.astype(float)
        lp_value, converged, solved, it = math.inf, False, False, 0

        def price(duals: np.ndarray) -> list[tuple[float, np.ndarray]]:
            priced = best_patterns(self.sizes, limits, duals, self.capacity, columns_per_iteration)
            farley = float(demand @ duals) / max(priced[0][0], 1.0)  # valid for any duals >= 0
            self.bound = max(self.bound, math.ceil(farley - 1e-6 * max(1.0, farley)))
            if farley > self._best_farley:  # the smoothing center: the duals with the best bound so far
                self._center, self._best_farley = duals, farley
            return priced

        for it in range(1, max_iterations + 1):
            solved = self._solve()
            if not solved:
                break
            lp_value = self.objective.Value()
            duals = np.maximum(np.array([row.dual_value() for row in self.rows]), 0.0)
            if self._center is None or smoothing <= 0:
                priced = price(duals)
            else:
                priced = price(smoothing * self._center + (1 - smoothing) * duals)
                if not any(float(duals @ pattern) > 1 + 1e-9 for _, pattern in priced):
                    priced = price(duals)  # mis-pricing: nothing improves the current master
            columns = [pattern for _, pattern in priced if float(duals @ pattern) > 1 + 1e-9]
            if not columns and priced[0][0] <= 1 + 1e-9:  # priced at `duals` itself: nothing left
                converged = True
                break
            settled = self.bound >= math.ceil(lp_value - 1e-6)
            if (stop_when_settled and settled) or (stop_at is not None and self.bound >= stop_at):
                break
            if time.perf_counter() - start > time_limit_s:
                break
            added = [self.add_column(pattern) for pattern in columns]
            if not any(added):
                break  # numerical stall: the pricing repeats patterns the master already has
        else:  # out of iterations right after adding columns: solve once more for a current solution
            solved = self._solve()
            lp_value = self.objective.Value() if solved else lp_value
        n = len(self.patterns)
        usage = np.array([var.solution_value() for var in self._columns]) if solved else np.zeros(n)
        settled = converged or self.bound >= math.ceil(lp_value - 1e-6)
        return LPBound(self.bound, lp_value, np.array(self.patterns), usage, converged, it, time.perf_counter() - start, settled)


def lp_bound(
    sizes: np.ndarray,
    counts: np.ndarray,
    capacity: int,
    initial_patterns: np.ndarray,
    time_limit_s: float = 2.0,
    max_iterations: int = 500,
    stop_at: int | None = None,
    columns_per_iteration: int = 8,
    stop_when_settled: bool = False,
) -> LPBound:
    """Column generation for the pattern LP over distinct `sizes` with demands `counts`.

    initial_patterns: (P, T) feasible patterns covering every type (e.g. the FFD bins).
    stop_at: stop as soon as the bound reaches this many rows (e.g. FFD's count: proven).
    stop_when_settled: stop once the integer bound cannot rise (by default the LP is solved
    to the end, so that lp_value is the LP optimum when converged).
    """
    master = PatternLP(sizes, capacity, counts, initial_patterns)
    return master.run(time_limit_s, max_iterations, stop_at, columns_per_iteration, stop_when_settled=stop_when_settled)
