"""Arc-flow model of bin packing (Valerio de Carvalho, 1999), solved with CP-SAT (used by `ilp`).

A row is a path from node 0 to a node u <= capacity in the graph whose nodes are partial
sums and whose arcs (u, u + s) place one prompt of length s. The model asks whether
`num_rows` units of flow leave node 0 and the arcs of each length carry exactly as many
prompts as there are: feasible means a packing into `num_rows` rows (read off by splitting
the flow into paths), infeasible is a proof that none exists.

The graph is kept small:
- lengths are placed in decreasing order along a path, so an arc of length s leaves only
  partial sums made of longer prompts (and fewer than its count of length-s prompts);
- a row may waste at most `budget` = num_rows x capacity - sum(lengths) tokens (the whole
  waste allowed), so a path must end at a node >= capacity - budget, and every node or arc
  from which no such end can be reached is dropped.
Both are exact: every packing into `num_rows` rows is a flow in the reduced graph. Near-
perfect fills with few prompts per row (e.g. exact triplets, where the budget is 0) give
graphs of a few thousand arcs that CP-SAT settles in a fraction of a second, where the
one-boolean-per-(prompt, row) model does not. Many short prompts and a large capacity give
large graphs; `max_arcs` bounds the work (None is returned, nothing is built further).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["ArcGraph", "arc_graph", "solve_arcflow"]


@dataclass(frozen=True)
class ArcGraph:
    """tails, heads, types: one entry per arc (head = tail + sizes[type]); ends: the nodes
    where a row may end; budget: the total waste allowed."""

    tails: np.ndarray
    heads: np.ndarray
    types: np.ndarray
    ends: np.ndarray
    budget: int

    @property
    def num_arcs(self) -> int:
        return int(self.tails.size)


def _expired(deadline: float | None) -> bool:
    return deadline is not None and time.perf_counter() > deadline


def arc_graph(
    sizes: np.ndarray,
    counts: np.ndarray,
    capacity: int,
    num_rows: int,
    max_arcs: int | None = None,
    deadline: float | None = None,
) -> ArcGraph | None:
    """The reduced arc-flow graph for packing `counts[t]` prompts of length `sizes[t]` into
    `num_rows` rows (at least the volume bound); None when the graph exceeds `max_arcs`
    arcs before reduction, or when `time.perf_counter()` passes `deadline` while building."""
    sizes_l = [int(s) for s in sizes]
    counts_l = [int(c) for c in counts]
    budget = num_rows * capacity - sum(s * c for s, c in zip(sizes_l, counts_l))
    if budget < 0:
        raise ValueError(f"{num_rows} rows of {capacity} cannot hold {capacity * num_rows - budget} tokens")
    reach = {0}  # partial sums of longer prompts (placed so far, by decreasing length)
    arcs: set[tuple[int, int]] = set()  # (tail, type)
    for t in sorted(range(len(sizes_l)), key=lambda t: -sizes_l[t]):
        s, c = sizes_l[t], counts_l[t]
        if c == 0:
            continue
        new: set[int] = set()
        for i, u in enumerate(reach):
            if not i & 1023 and _expired(deadline):
                return None
            v = u
            for _ in range(min(c, (capacity - u) // s)):
                arcs.add((v, t))
                v += s
                new.add(v)
        reach |= new
        if max_arcs is not None and len(arcs) > max_arcs:
            return None
    # Keep the nodes from which a row can end with at most `budget` waste.
    floor = capacity - budget
    out: dict[int, list[int]] = {}
    for u, t in arcs:
        out.setdefault(u, []).append(u + sizes_l[t])
    good: set[int] = set()
    for u in sorted(reach, reverse=True):
        if u >= floor or any(v in good for v in out.get(u, ())):
            good.add(u)
    kept = sorted((u, t) for u, t in arcs if u in good and u + sizes_l[t] in good)
    tails = np.array([u for u, _ in kept], dtype=np.int64)
    types = np.array([t for _, t in kept], dtype=np.int64)
    heads = tails + np.array(sizes_l, dtype=np.int64)[types] if kept else tails.copy()
    ends = np.array(sorted(u for u in good if u >= floor), dtype=np.int64)
    return ArcGraph(tails, heads, types, ends, budget)


def solve_arcflow(
    graph: ArcGraph,
    sizes: np.ndarray,
    counts: np.ndarray,
    num_rows: int,
    time_s: float,
    num_workers: int,
    deadline: float | None = None,
) -> tuple[np.ndarray | None, bool]:
    """CP-SAT on the arc-flow model with exactly `num_rows` paths (rows, some maybe empty).

    Returns (the (types, rows) matrix of a packing or None, proven infeasible); (None, False)
    as soon as `time.perf_counter()` passes `deadline` (model building included).
    """
    from ortools.sat.python import cp_model

    if not (graph.ends.size and graph.ends[0] == 0) and not (graph.tails.size and graph.tails[0] == 0):
        return None, True  # no row can start: the waste budget rules out every path
    model = cp_model.CpModel()
    tails, heads, types = graph.tails.tolist(), graph.heads.tolist(), graph.types.tolist()
    flow = [model.new_int_var(0, min(num_rows, int(counts[t])), "") for t in types]
    stop = [model.new_int_var(0, num_rows, "") for _ in graph.ends.tolist()]
    into: dict[int, list[Any]] = {}
    out: dict[int, list[Any]] = {0: []}
    for var, u, v in zip(flow, tails, heads):
        out.setdefault(u, []).append(var)
        into.setdefault(v, []).append(var)
    for var, u in zip(stop, graph.ends.tolist()):
        out.setdefault(u, []).append(var)
    if _expired(deadline):
        return None, False
    for i, u in enumerate(set(out) | set(into)):
        if not i & 1023 and _expired(deadline):
            return None, False
        if u == 0:
            model.add(sum(out[0]) == num_rows)
        else:
            model.add(sum(into.get(u, [])) == sum(out.get(u, [])))
    by_type: dict[int, list[Any]] = {}
    for var, t in zip(flow, types):
        by_type.setdefault(t, []).append(var)
    for t, c in enumerate(np.asarray(counts).tolist()):
        if c and t not in by_type:
            return None, True  # no arc can place this length at all
        if c:
            model.add(sum(by_type[t]) == int(c))
    if _expired(deadline):
        return None, False
    if deadline is not None:
        time_s = min(time_s, deadline - time.perf_counter())
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = num_workers
    solver.parameters.max_time_in_seconds = max(time_s, 0.01)
    code = solver.solve(model)
    if code == cp_model.INFEASIBLE:
        return None, True
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, False
    left_arc = {}  # node -> list of [remaining flow, arc index]
    for a, var in enumerate(flow):
        f = solver.value(var)
        if f:
            left_arc.setdefault(tails[a], []).append([f, a])
    left_end = {u: solver.value(var) for var, u in zip(stop, graph.ends.tolist())}
    take = np.zeros((len(sizes), num_rows), dtype=np.int64)
    for row in range(num_rows):  # split the flow into paths: a DAG, flow is conserved
        u = 0
        while True:
            arcs = left_arc.get(u)
            while arcs and arcs[-1][0] == 0:
                arcs.pop()
            if arcs:
                arcs[-1][0] -= 1
                a = arcs[-1][1]
                take[types[a], row] += 1
                u = heads[a]
            elif left_end.get(u, 0) > 0:
                left_end[u] -= 1
                break
            else:  # pragma: no cover - conservation makes this unreachable
                raise RuntimeError("arc-flow solution does not decompose into paths")
    return take[:, take.any(axis=0)], False
