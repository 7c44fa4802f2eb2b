"""Exact packing (`ilp`): FFD, a Gilmore-Gomory LP bound, then OR-Tools CP-SAT.

Steps, each skipped once the packing in hand meets the lower bound (that is the proof):
1. FFD gives the first packing; L2 (Martello-Toth) the first lower bound.
2. Column generation on the pattern LP (`packers.colgen`) raises the bound to
   ceil(LP), which proves FFD optimal on many real batches where FFD = L2 + 1; where it
   does not, rounding the LP down (FFD on the rest) and *diving* (fix the patterns the LP
   uses whole, re-solve the LP on what is left, repeat) usually find a packing with
   ceil(LP) rows: bin packing almost always has OPT = ceil(LP).
3. CP-SAT on the *pattern* model: how many rows use each pattern generated in step 2
   (a small integer program).
4. CP-SAT on the *item* model for exactly `bound` rows: one boolean per (prompt, row),
   prompts longest first, prompt i only in rows 0..i (symmetry breaking). A packing
   found is optimal; infeasibility raises the bound by one, and the step repeats.
The answer never has more rows than FFD. `meta["status"]` is "optimal" when the rows
meet the proven bound and "feasible" otherwise (a timeout is not an error); meta also
says which step gave the proof and the bounds met on the way.

An n x n assignment MIP (one binary per prompt and bin, the paper's code) is far slower
and proves less. OR-Tools is imported only when steps 2-4 run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from packers.base import BasePacker, bins_from_assignment
from packers.bounds import lower_bound
from packers.colgen import PatternLP, lp_bound
from packers.decreasing import first_fit_decreasing
from packers.registry import register

__all__ = ["ILPPacker"]

MAX_DP_CELLS = 50_000_000  # skip the LP bound above distinct lengths x capacity of this
# Diving runs, in order: (column-generation rounds per step, rebuild the LP each step, share of
# the time left). A quick rough dive first (often enough), then dives over other columns.
DIVES = ((3, False, 0.25), (40, True, 0.5), (20, False, 0.8))


@register("ilp")
@dataclass(frozen=True)
class ILPPacker(BasePacker):
    """Fewest rows, proven optimal when the work fits in the time limit.

    time_limit_s: total budget in seconds (> 0) for steps 2-4; a timeout returns the best
        packing found (never worse than FFD) with status "feasible".
    num_workers: CP-SAT search workers (>= 1). With one worker, runs are repeatable unless
        the time limit cuts a search; with several, the row count is repeatable whenever it
        is proven optimal, the packing itself may differ from run to run.
    max_cells: skip the model steps (FFD's packing, status "feasible", meta["skipped"])
        when distinct lengths x FFD bins exceeds this, so huge inputs build no huge model.
    """

    time_limit_s: float = 5.0
    num_workers: int = 2
    max_cells: int = 200_000

    def __post_init__(self) -> None:
        limit = self.time_limit_s
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not math.isfinite(limit) or limit <= 0:
            raise ValueError(f"time_limit_s must be a positive number of seconds, got {limit!r}")
        for name in ("num_workers", "max_cells"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        start = time.perf_counter()
        order, bin_of = first_fit_decreasing(lengths, capacity)
        upper = int(bin_of.max()) + 1
        bound = lower_bound(lengths, capacity)
        meta: dict[str, Any] = {"ffd_bins": upper, "l2_bound": bound}
        ffd_bins = bins_from_assignment(order, bin_of)
        if upper == bound:
            return ffd_bins, {**meta, "lower_bound": bound, "status": "optimal", "proof": "ffd = l2"}
        sizes, type_of = np.unique(lengths, return_inverse=True)
        if sizes.size * upper > self.max_cells:
            skipped = f"model too large: {sizes.size} lengths x {upper} bins > max_cells={self.max_cells}"
            return ffd_bins, {**meta, "lower_bound": bound, "status": "feasible", "skipped": skipped}
        counts = np.bincount(type_of)
        best = np.zeros((sizes.size, upper), dtype=np.int64)  # best[t, b]: prompts of type t in bin b
        np.add.at(best, (type_of[order], bin_of), 1)

        def left_s() -> float:
            return self.time_limit_s - (time.perf_counter() - start)

        found_by = "ffd"
        patterns = best.T
        if sizes.size * capacity <= MAX_DP_CELLS:  # the pricing DP is O(types x capacity)
            lp = lp_bound(sizes, counts, capacity, best.T, time_limit_s=0.3 * self.time_limit_s, stop_at=upper)
            bound, patterns = max(bound, lp.bound), lp.patterns
            heuristics = [("lp rounding", _residual_rounding, 0, False, 1.0)]
            heuristics += [("lp diving", _dive, *dive) for dive in DIVES]
            for label, heuristic, rounds, rebuild, share in heuristics:
                if _num_bins(best) > bound and left_s() > 0:
                    found = heuristic(lp.patterns, lp.usage, sizes, counts, capacity, share * left_s(), rounds, rebuild)
                    if _num_bins(found) < _num_bins(best):
                        best, found_by = found, label
            if _num_bins(best) > bound and not lp.converged and left_s() > 0:  # more LP: the bound may rise
                lp = lp_bound(sizes, counts, capacity, lp.patterns, time_limit_s=0.5 * left_s(), stop_at=_num_bins(best))
                bound, patterns = max(bound, lp.bound), lp.patterns
            meta.update(lp_bound=lp.bound, lp_value=lp.lp_value, lp_converged=lp.converged, lp_iterations=lp.iterations)
        proof = f"{found_by} = lp bound"
        if _num_bins(best) > bound and left_s() > 0:
            found = _pattern_model(patterns, counts, bound, _num_bins(best) - 1, 0.5 * left_s(), self)
            if found is not None:
                best, proof = found, "pattern model = lp bound"
        while _num_bins(best) > bound and left_s() > 0 and lengths.size * bound <= self.max_cells:
            found, infeasible = _item_model(lengths, type_of, sizes.size, capacity, bound, left_s(), self)
            if found is not None:
                best, proof = found, "item model = bound"
            elif infeasible:
                bound, proof = bound + 1, f"item model: {bound} bins infeasible"
            else:
                break  # out of time
        rows = _num_bins(best)
        meta.update(lower_bound=bound, status="optimal" if rows == bound else "feasible")
        if rows == bound:
            meta["proof"] = proof
        if rows == upper:
            return ffd_bins, meta  # no improvement: keep FFD's packing (and its order)
        return _bins_from_counts(best, type_of), meta


def _num_bins(take: np.ndarray) -> int:
    return int(take.any(axis=0).sum())


def _configure(solver: Any, time_s: float, packer: ILPPacker) -> None:
    params = solver.parameters
    params.num_workers = packer.num_workers
    params.max_time_in_seconds = max(time_s, 0.01)


def _residual_rounding(
    patterns: np.ndarray,
    usage: np.ndarray,
    sizes: np.ndarray,
    counts: np.ndarray,
    capacity: int,
    time_s: float = 0.0,
    rounds: int = 0,
    rebuild: bool = False,
) -> np.ndarray:
    """Round the LP down (floor of each pattern's rows), FFD the prompts left uncovered."""
    take = _drop_surplus(np.repeat(patterns, np.floor(usage + 1e-9).astype(np.int64), axis=0).T, counts)
    left = counts - take.sum(axis=1)
    if left.any():
        rest = np.repeat(sizes, left)
        order, bin_of = first_fit_decreasing(rest, capacity)
        extra = np.zeros((sizes.size, int(bin_of.max()) + 1), dtype=np.int64)
        np.add.at(extra, (np.searchsorted(sizes, rest[order]), bin_of), 1)
        take = np.hstack([take, extra])
    return take


def _dive(
    patterns: np.ndarray,
    usage: np.ndarray,
    sizes: np.ndarray,
    counts: np.ndarray,
    capacity: int,
    time_s: float,
    rounds: int = 20,
    rebuild: bool = False,
) -> np.ndarray:
    """Diving: fix the rows the LP uses whole (or its most used pattern once), lower the
    demands by what they cover, re-solve the LP (at most `rounds` column-generation rounds;
    the same master warm, or with `rebuild` a new one over the cut-down patterns), repeat;
    FFD whatever is left at the end."""
    start = time.perf_counter()
    rows: list[np.ndarray] = []
    left = counts.copy()
    master = None
    while left.any() and time.perf_counter() - start < time_s:
        whole = np.floor(usage + 1e-9).astype(np.int64)
        if not whole.any():
            whole = np.zeros_like(whole)
            whole[int(np.argmax(usage))] = 1
        for p in np.flatnonzero(whole).tolist():
            for _ in range(int(whole[p])):
                row = np.minimum(patterns[p], left)
                if row.any():
                    rows.append(row)
                    left = left - row
        budget = time_s - (time.perf_counter() - start)
        if not left.any() or budget <= 0:
            break
        if master is None or rebuild:
            # Restart from every pattern so far cut down to what is left (plus one single-length
            # pattern per length, always feasible): other columns, so another dive.
            pool = np.vstack([np.minimum(patterns, left), np.diag(np.minimum(left, capacity // sizes))])
            pool = np.unique(pool[pool.any(axis=1)], axis=0)
            master = PatternLP(sizes, capacity, left, pool)
        else:
            master.set_demand(left)  # same columns, warm start
        lp = master.run(budget, max_iterations=rounds)
        patterns, usage = lp.patterns, lp.usage
    take = np.array(rows, dtype=np.int64).T if rows else np.zeros((sizes.size, 0), dtype=np.int64)
    if left.any():
        rest = np.repeat(sizes, left)
        order, bin_of = first_fit_decreasing(rest, capacity)
        extra = np.zeros((sizes.size, int(bin_of.max()) + 1), dtype=np.int64)
        np.add.at(extra, (np.searchsorted(sizes, rest[order]), bin_of), 1)
        take = np.hstack([take, extra])
    return take


def _drop_surplus(take: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Remove prompts beyond each type's count, from the last rows first; drop empty rows."""
    take = take.copy()
    for t in range(counts.size):
        excess = int(take[t].sum()) - int(counts[t])
        for b in np.flatnonzero(take[t])[::-1].tolist():
            if excess <= 0:
                break
            cut = min(excess, int(take[t, b]))
            take[t, b] -= cut
            excess -= cut
    return take[:, take.any(axis=0)]


def _pattern_model(
    patterns: np.ndarray, counts: np.ndarray, lo: int, hi: int, time_s: float, packer: ILPPacker
) -> np.ndarray | None:
    """Rows per pattern covering every demand with lo..hi rows; a take matrix or None."""
    from ortools.sat.python import cp_model

    if hi < lo:
        return None
    model = cp_model.CpModel()
    uses = [model.new_int_var(0, hi, f"use_{p}") for p in range(len(patterns))]
    for t in range(counts.size):
        model.add(sum(int(patterns[p, t]) * uses[p] for p in np.flatnonzero(patterns[:, t]).tolist()) >= int(counts[t]))
    model.add(sum(uses) >= lo)
    model.add(sum(uses) <= hi)
    model.minimize(sum(uses))
    solver = cp_model.CpSolver()
    _configure(solver, time_s, packer)
    if solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    reps = np.array([solver.value(u) for u in uses], dtype=np.int64)
    return _drop_surplus(np.repeat(patterns, reps, axis=0).T, counts)  # (types, rows)


def _item_model(
    lengths: np.ndarray, type_of: np.ndarray, num_types: int, capacity: int, num_bins: int, time_s: float, packer: ILPPacker
) -> tuple[np.ndarray | None, bool]:
    """Is there a packing into exactly `num_bins` bins? One boolean per (prompt, bin).

    Prompts sorted longest first; prompt i may only use bins 0..i (the classic symmetry
    breaking: any packing can be renumbered so). Returns (take matrix or None, proven infeasible).
    """
    from ortools.sat.python import cp_model

    order = np.argsort(-lengths, kind="stable")
    sizes = lengths[order].tolist()
    model = cp_model.CpModel()
    x = [[model.new_bool_var(f"x_{i}_{b}") for b in range(min(i + 1, num_bins))] for i in range(len(sizes))]
    for row in x:
        model.add_exactly_one(row)
    for b in range(num_bins):
        model.add(sum(sizes[i] * x[i][b] for i in range(b, len(sizes))) <= capacity)
    solver = cp_model.CpSolver()
    _configure(solver, time_s, packer)
    code = solver.solve(model)
    if code == cp_model.INFEASIBLE:
        return None, True
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, False
    take = np.zeros((num_types, num_bins), dtype=np.int64)
    for i, row in enumerate(x):
        b = next(b for b, var in enumerate(row) if solver.boolean_value(var))
        take[type_of[order[i]], b] += 1
    return take, False


def _bins_from_counts(take: np.ndarray, type_of: np.ndarray) -> list[list[int]]:
    """Turn counts per (type, bin) into bins of prompt indices, longest first, by index within a type."""
    order = np.argsort(type_of, kind="stable")  # prompts grouped by type, by index inside
    nxt = np.concatenate(([0], np.cumsum(np.bincount(type_of))))[:-1]
    bins: list[list[int]] = []
    for b in np.flatnonzero(take.any(axis=0)).tolist():
        members: list[int] = []
        for t in np.flatnonzero(take[:, b])[::-1].tolist():
            k = int(take[t, b])
            members.extend(order[nxt[t] : nxt[t] + k].tolist())
            nxt[t] += k
        bins.append(members)
    return bins
