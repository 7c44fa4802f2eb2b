"""Exact packing (`ilp`): FFD, fast fills, a Gilmore-Gomory LP bound, then OR-Tools CP-SAT.

Steps, each skipped once the packing in hand meets the lower bound (that is the proof):
1. FFD gives the first packing; L2 (Martello-Toth) the first lower bound.
2. The minimum-slack fill (`packers.completion`): rows one at a time, each filled as full
   as a subset-sum DP allows. Milliseconds; on real batches where FFD = L2 + 1 it most
   often packs into L2 rows (a proof at once).
3. Column generation on the pattern LP (`packers.colgen`) raises the bound to
   ceil(LP), which proves FFD optimal on many real batches where FFD = L2 + 1 (bin
   packing almost always has OPT = ceil(LP)). Where it does not, the bound is usually
   OPT and a packing with `bound` rows is looked for, in this order: rounding the LP down
   (the rest packed by FFD or the fill); the arc-flow model (`packers.arcflow`) for a short
   while when its graph is small (exact triplet-like mixes); the fill restarted with noise
   (`randomized_fill`); finishing the LP when it had not settled (the bound may still
   rise); *diving* (fix the patterns the LP uses whole, re-solve the LP on what is left,
   repeat).
4. CP-SAT on the *pattern* model: how many rows use each pattern generated in step 3
   (a small integer program).
5. An exact model for exactly `bound` rows, with the time left: the arc-flow model
   (CP-SAT) when its graph has at most MAX_ARCS arcs, else the *item* model, one boolean
   per (prompt, row), prompts longest first, prompt i only in rows 0..i (symmetry
   breaking). A packing found is optimal; infeasibility raises the bound by one, and the
   step repeats.
The answer never has more rows than FFD. `meta["status"]` is "optimal" when the rows
meet the proven bound and "feasible" otherwise (a timeout is not an error); meta["proof"]
says which step found the packing and which gave the bound ("<found by> = <bound>"),
and meta has the bounds met on the way.

An n x n assignment MIP (one binary per prompt and bin, the paper's code) is far slower
and proves less. OR-Tools is imported only when steps 3-5 run.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from packers.arcflow import ArcGraph, arc_graph, solve_arcflow
from packers.base import BasePacker, bins_from_assignment
from packers.bounds import lower_bound
from packers.colgen import PatternLP
from packers.completion import min_slack_fill, randomized_fill
from packers.decreasing import first_fit_decreasing
from packers.registry import register

__all__ = ["ILPPacker"]

MAX_DP_CELLS = 50_000_000  # skip the fills and the LP above distinct lengths x capacity of this
# Diving runs, in order: (column-generation rounds per step, rebuild the LP each step, share of
# the time left). A quick rough dive first (often enough), then dives over other columns.
DIVES = ((3, False, 0.25), (40, True, 0.5), (20, False, 0.8))
FILL_SHARE = 0.15  # share of the time left for the randomized fill, after LP rounding, before diving
LP_SHARE = 0.5  # share of the time left to finish the LP (when not settled) before diving
QUICK_ARCFLOW_SHARE = 0.1  # share of the time left for a first arc-flow try, right after LP rounding
MAX_ARCS = 100_000  # build no arc-flow graph with more arcs than this (before its reduction)


@register("ilp")
@dataclass(frozen=True)
class ILPPacker(BasePacker):
    """Fewest rows, proven optimal when the work fits in the time limit.

    time_limit_s: total budget in seconds (> 0) for steps 2-5; a timeout returns the best
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
        ffd_take = np.zeros((sizes.size, upper), dtype=np.int64)  # [t, b]: prompts of type t in bin b
        np.add.at(ffd_take, (type_of[order], bin_of), 1)
        best = ffd_take

        deadline = start + self.time_limit_s  # model building stops here too, not just the solves

        def left_s() -> float:
            return deadline - time.perf_counter()

        graphs: dict[int, ArcGraph | None] = {}

        def exact(rows: int, time_s: float, quick: bool = False) -> tuple[str, np.ndarray | None, bool] | None:
            """Is there a packing into `rows` rows? The arc-flow model where its graph is small
            enough, else (not `quick`) the item model; None when neither runs or time runs out."""
            if rows not in graphs:
                graphs[rows] = arc_graph(sizes, counts, capacity, rows, MAX_ARCS, deadline)
            graph = graphs[rows]
            if graph is not None:
                found, infeasible = solve_arcflow(
                    graph, sizes, counts, rows, time_s, self.num_workers, deadline
                )
                label = "arc-flow"
            elif not quick and lengths.size * rows <= self.max_cells:
                found, infeasible = _item_model(lengths, type_of, sizes.size, capacity, rows, deadline, self)
                label = "item model"
            else:
                return None
            return (label, found, infeasible) if found is not None or infeasible else None

        found_by, bound_by = "ffd", "l2"
        small_dp = sizes.size * capacity <= MAX_DP_CELLS  # the fill and the LP pricing are O(types x capacity)
        if small_dp:
            found = min_slack_fill(sizes, counts, capacity, deadline=start + 0.1 * self.time_limit_s)
            if found is not None and _num_bins(found) < _num_bins(best):
                best, found_by = found, "min-slack fill"
        patterns = best.T
        if _num_bins(best) > bound and small_dp and left_s() > 0:
            lp_s = 0.3 * self.time_limit_s - (time.perf_counter() - start)
            master = PatternLP(sizes, capacity, counts, np.vstack([ffd_take.T, best.T]))
            lp = master.run(lp_s, stop_at=_num_bins(best), stop_when_settled=True)
            if lp.bound > bound:
                bound, bound_by = lp.bound, "lp bound"
            if _num_bins(best) > bound:
                # The heuristics round an LP solution over patterns alone: forbid the swap
                # columns and re-solve (warm, the same columns, more while not settled).
                master.set_swaps(False)
                more = master.run(max(lp_s - lp.time_s, 0.05 * self.time_limit_s), stop_at=_num_bins(best),
                                  stop_when_settled=True)
                lp = replace(more, iterations=lp.iterations + more.iterations)
                if lp.bound > bound:
                    bound, bound_by = lp.bound, "lp bound"
                found = _residual_rounding(lp.patterns, lp.usage, sizes, counts, capacity)
                if _num_bins(found) < _num_bins(best):
                    best, found_by = found, "lp rounding"
            if _num_bins(best) > bound and left_s() > 0:
                step = exact(bound, QUICK_ARCFLOW_SHARE * left_s(), quick=True)
                if step is not None:
                    best, bound, found_by, bound_by = _apply(step, best, bound, found_by, bound_by)
            if _num_bins(best) > bound and left_s() > 0:
                found = randomized_fill(sizes, counts, capacity, bound, FILL_SHARE * left_s())
                if found is not None:
                    best, found_by = found, "randomized fill"
            if _num_bins(best) > bound and not lp.settled and left_s() > 0:  # more LP: the bound may rise
                master.set_swaps(True)
                more = master.run(LP_SHARE * left_s(), stop_at=_num_bins(best), stop_when_settled=True)
                if more.bound > bound:
                    bound, bound_by = more.bound, "lp bound"
                lp = replace(lp, bound=more.bound, lp_value=more.lp_value, converged=more.converged,
                             settled=more.settled, iterations=lp.iterations + more.iterations)
            for rounds, rebuild, share in DIVES:  # on the LP solution over patterns alone (above)
                if _num_bins(best) > bound and left_s() > 0:
                    found = _dive(lp.patterns, lp.usage, sizes, counts, capacity, share * left_s(), rounds, rebuild)
                    if _num_bins(found) < _num_bins(best):
                        best, found_by = found, "lp diving"
            patterns = np.array(master.patterns)  # every column generated, for the pattern model
            meta.update(lp_bound=lp.bound, lp_value=lp.lp_value, lp_converged=lp.converged, lp_iterations=lp.iterations)
        if _num_bins(best) > bound and left_s() > 0:
            pattern_deadline = time.perf_counter() + 0.5 * left_s()
            found = _pattern_model(patterns, counts, bound, _num_bins(best) - 1, pattern_deadline, self)
            if found is not None:
                best, found_by = found, "pattern model"
        while _num_bins(best) > bound and left_s() > 0:
            step = exact(bound, left_s())
            if step is None:
                break  # out of time, or no exact model small enough
            best, bound, found_by, bound_by = _apply(step, best, bound, found_by, bound_by)
        rows = _num_bins(best)
        meta.update(lower_bound=bound, status="optimal" if rows == bound else "feasible")
        if rows == bound:
            meta["proof"] = f"{found_by} = {bound_by}"
        if rows == upper:
            return ffd_bins, meta  # no improvement: keep FFD's packing (and its order)
        return _bins_from_counts(best, type_of), meta


def _apply(
    step: tuple[str, np.ndarray | None, bool], best: np.ndarray, bound: int, found_by: str, bound_by: str
) -> tuple[np.ndarray, int, str, str]:
    """Fold an exact model's answer at `bound` rows into (best, bound, found_by, bound_by)."""
    label, found, _ = step
    if found is not None:
        return found, bound, label, bound_by
    return best, bound + 1, found_by, f"{label}: {bound} rows infeasible"


def _num_bins(take: np.ndarray) -> int:
    return int(take.any(axis=0).sum())


def _expired(deadline: float) -> bool:
    return time.perf_counter() > deadline


def _configure(solver: Any, deadline: float, packer: ILPPacker) -> None:
    params = solver.parameters
    params.num_workers = packer.num_workers
    params.max_time_in_seconds = max(deadline - time.perf_counter(), 0.01)


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
    """Round the LP down (floor of each pattern's rows), pack the prompts left uncovered
    (FFD or the minimum-slack fill, whichever needs fewer rows)."""
    take = _drop_surplus(np.repeat(patterns, np.floor(usage + 1e-9).astype(np.int64), axis=0).T, counts)
    left = counts - take.sum(axis=1)
    return np.hstack([take, _pack_rest(sizes, left, capacity)]) if left.any() else take


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
    pack whatever is left at the end as `_residual_rounding` does."""
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
            master = PatternLP(sizes, capacity, left, pool, swaps=False)
        else:
            master.set_demand(left)  # same columns, warm start
        lp = master.run(budget, max_iterations=rounds, stop_when_settled=True)  # a rough LP is enough
        patterns, usage = lp.patterns, lp.usage
    take = np.array(rows, dtype=np.int64).T if rows else np.zeros((sizes.size, 0), dtype=np.int64)
    return np.hstack([take, _pack_rest(sizes, left, capacity)]) if left.any() else take


def _pack_rest(sizes: np.ndarray, left: np.ndarray, capacity: int) -> np.ndarray:
    """The fewer rows of FFD and the minimum-slack fill for the prompts `left` of each length."""
    rest = np.repeat(sizes, left)
    order, bin_of = first_fit_decreasing(rest, capacity)
    take = np.zeros((sizes.size, int(bin_of.max()) + 1), dtype=np.int64)
    np.add.at(take, (np.searchsorted(sizes, rest[order]), bin_of), 1)
    if sizes.size * capacity <= MAX_DP_CELLS:
        filled = min_slack_fill(sizes, left, capacity)
        if filled is not None and _num_bins(filled) < _num_bins(take):
            return filled
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
    patterns: np.ndarray, counts: np.ndarray, lo: int, hi: int, deadline: float, packer: ILPPacker
) -> np.ndarray | None:
    """Rows per pattern covering every demand with lo..hi rows; a take matrix or None
    (also when `time.perf_counter()` passes `deadline` while the model is built)."""
    from ortools.sat.python import cp_model

    if hi < lo:
        return None
    model = cp_model.CpModel()
    uses = [model.new_int_var(0, hi, f"use_{p}") for p in range(len(patterns))]
    for t in range(counts.size):
        if _expired(deadline):
            return None
        model.add(sum(int(patterns[p, t]) * uses[p] for p in np.flatnonzero(patterns[:, t]).tolist()) >= int(counts[t]))
    model.add(sum(uses) >= lo)
    model.add(sum(uses) <= hi)
    model.minimize(sum(uses))
    solver = cp_model.CpSolver()
    _configure(solver, deadline, packer)
    if _expired(deadline) or solver.solve(model) not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    reps = np.array([solver.value(u) for u in uses], dtype=np.int64)
    return _drop_surplus(np.repeat(patterns, reps, axis=0).T, counts)  # (types, rows)


def _item_model(
    lengths: np.ndarray,
    type_of: np.ndarray,
    num_types: int,
    capacity: int,
    num_bins: int,
    deadline: float,
    packer: ILPPacker,
) -> tuple[np.ndarray | None, bool]:
    """Is there a packing into exactly `num_bins` bins? One boolean per (prompt, bin).

    Prompts sorted longest first; prompt i may only use bins 0..i (the classic symmetry
    breaking: any packing can be renumbered so). Returns (take matrix or None, proven
    infeasible); (None, False) as soon as `time.perf_counter()` passes `deadline`, model
    building included.
    """
    from ortools.sat.python import cp_model

    order = np.argsort(-lengths, kind="stable")
    sizes = lengths[order].tolist()
    model = cp_model.CpModel()
    x = []
    for i in range(len(sizes)):
        if not i & 63 and _expired(deadline):
            return None, False
        x.append([model.new_bool_var(f"x_{i}_{b}") for b in range(min(i + 1, num_bins))])
        model.add_exactly_one(x[-1])
    for b in range(num_bins):
        if not b & 7 and _expired(deadline):
            return None, False
        model.add(sum(sizes[i] * x[i][b] for i in range(b, len(sizes))) <= capacity)
    if _expired(deadline):
        return None, False
    solver = cp_model.CpSolver()
    _configure(solver, deadline, packer)
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
