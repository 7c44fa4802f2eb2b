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
"""

from __future__ import annotations

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
    (then ceil(lp_value) is the bound, up to float tolerance); iterations; time_s.
    """

    bound: int
    lp_value: float
    patterns: np.ndarray
    usage: np.ndarray
    converged: bool
    iterations: int
    time_s: float


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
    """

    def __init__(self, sizes: np.ndarray, capacity: int, demand: np.ndarray, patterns: np.ndarray) -> None:
        from ortools.linear_solver import pywraplp

        self._pywraplp = pywraplp
        self.sizes, self.capacity = sizes, capacity
        self.solver = pywraplp.Solver.CreateSolver("GLOP")
        self.solver.SetSolverSpecificParametersAsString("use_dual_simplex: false")  # new columns keep primal feasibility
        self.rows = [self.solver.Constraint(0.0, self.solver.infinity()) for _ in range(sizes.size)]
        self.objective = self.solver.Objective()
        self.objective.SetMinimization()
        self._known: set[bytes] = set()
        self.patterns: list[np.ndarray] = []
        self._columns: list[Any] = []
        self.set_demand(demand)
        for pattern in np.asarray(patterns, dtype=np.int64):
            self.add_column(pattern)

    def set_demand(self, demand: np.ndarray) -> None:
        """Prompts of each length the patterns must cover (>= constraints)."""
        self.demand = np.asarray(demand, dtype=np.int64).copy()
        for row, d in zip(self.rows, self.demand.tolist()):
            row.SetLb(float(d))

    def add_column(self, pattern: np.ndarray) -> bool:
        """Add a pattern (False if it is already there)."""
        key = pattern.tobytes()
        if key in self._known:
            return False
        self._known.add(key)
        self.patterns.append(pattern)
        var = self.solver.NumVar(0.0, self.solver.infinity(), "")
        self._columns.append(var)
        for t in np.flatnonzero(pattern).tolist():
            self.rows[t].SetCoefficient(var, float(pattern[t]))
        self.objective.SetCoefficient(var, 1.0)
        return True

    def run(
        self, time_limit_s: float, max_iterations: int = 500, stop_at: int | None = None, columns_per_iteration: int = 8
    ) -> LPBound:
        """Column generation from the current state; see `lp_bound` for the result."""
        start = time.perf_counter()
        limits = np.minimum(self.demand, self.capacity // self.sizes)
        demand = self.demand.astype(float)
        bound, lp_value, converged, solved, it = 1, math.inf, False, False, 0
        for it in range(1, max_iterations + 1):
            solved = self.solver.Solve() == self._pywraplp.Solver.OPTIMAL
            if not solved:
                break
            lp_value = self.objective.Value()
            duals = np.maximum(np.array([row.dual_value() for row in self.rows]), 0.0)
            priced = best_patterns(self.sizes, limits, duals, self.capacity, columns_per_iteration)
            value = priced[0][0]
            farley = float(demand @ duals) / max(value, 1.0)
            bound = max(bound, math.ceil(farley - 1e-6 * max(1.0, farley)))
            if value <= 1 + 1e-9:
                converged = True
                break
            if (stop_at is not None and bound >= stop_at) or time.perf_counter() - start > time_limit_s:
                break
            added = [self.add_column(pattern) for v, pattern in priced if v > 1 + 1e-9]
            if not any(added):
                break  # numerical stall: the pricing repeats patterns the master already has
        else:  # out of iterations right after adding columns: solve once more for a current solution
            solved = self.solver.Solve() == self._pywraplp.Solver.OPTIMAL
            lp_value = self.objective.Value() if solved else lp_value
        n = len(self.patterns)
        usage = np.array([var.solution_value() for var in self._columns]) if solved else np.zeros(n)
        return LPBound(bound, lp_value, np.array(self.patterns), usage, converged, it, time.perf_counter() - start)


def lp_bound(
    sizes: np.ndarray,
    counts: np.ndarray,
    capacity: int,
    initial_patterns: np.ndarray,
    time_limit_s: float = 2.0,
    max_iterations: int = 500,
    stop_at: int | None = None,
    columns_per_iteration: int = 8,
) -> LPBound:
    """Column generation for the pattern LP over distinct `sizes` with demands `counts`.

    initial_patterns: (P, T) feasible patterns covering every type (e.g. the FFD bins).
    stop_at: stop as soon as the bound reaches this many rows (e.g. FFD's count: proven).
    """
    master = PatternLP(sizes, capacity, counts, initial_patterns)
    return master.run(time_limit_s, max_iterations, stop_at, columns_per_iteration)
