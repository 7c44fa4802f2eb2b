"""Minimum-slack row filling: a primal heuristic for near-perfect packings (used by `ilp`).

Rows are built one at a time. The longest prompt left opens a row, and a subset-sum
dynamic program over the prompts left fills the rest of the row as full as any subset can
(Gupta and Ho's minimum bin slack idea; Fleszar and Hindi's MBS'). Among the subsets that
reach that fill, the lexicographically longest one is taken: long prompts are placed while
there is room for them, the many short prompts are kept for the last rows, where they
close the remaining gaps.

On real prompt-length batches this often finds a packing with exactly the lower-bound
number of rows where FFD needs one more: FFD fills a row with whatever fits first, while
here each row wastes as little as it can. Where the greedy order runs out of short prompts
too early, `randomized_fill` restarts it with noise on the preference order and with a
little of the waste budget allowed per row. Both are heuristics (no proof): the caller
compares the row count with a lower bound.

The dynamic program is over prompt lengths with bounded counts (binary splitting of the
counts), with Python integers as bit sets of reachable sums: O(rows x pieces x C / 64)
word operations, milliseconds for a few hundred prompts.
"""

from __future__ import annotations

import math
import random
import time

import numpy as np

__all__ = ["min_slack_fill", "randomized_fill"]

# Restarts of `randomized_fill` cycle through these (noise, slack_share) settings.
PORTFOLIO = ((0.3, 0.0), (0.1, 0.3), (0.2, 0.1))


def min_slack_fill(
    sizes: np.ndarray,
    counts: np.ndarray,
    capacity: int,
    deadline: float | None = None,
    max_rows: int | None = None,
    rng: random.Random | None = None,
    noise: float = 0.0,
    slack_share: float = 0.0,
) -> np.ndarray | None:
    """Pack `counts[t]` prompts of length `sizes[t]` (distinct, ascending) into rows of `capacity`.

    Returns the (types, rows) matrix of prompts per length and row, or None when `deadline`
    (a `time.perf_counter()` value) passes first, or, with `max_rows`, as soon as the rows
    so far waste more than `max_rows` rows can.
    With `rng`: `noise` is the sigma of a lognormal factor on each length's rank in the
    preference order, and with `max_rows` a row may waste up to a uniform random share (at
    most `slack_share`) of the waste budget left beyond its own minimum.
    """
    sizes_l = [int(s) for s in sizes]
    left = [int(c) for c in counts]
    if any(s > capacity or s < 1 for s in sizes_l):
        raise ValueError("every length must be in [1, capacity]")
    if max_rows is not None:
        budget = max_rows * capacity - sum(s * c for s, c in zip(sizes_l, left))
        if budget < 0:
            return None
    rows: list[list[int]] = []
    top = len(sizes_l) - 1  # the longest length with prompts left is at or below this index
    while True:
        while top >= 0 and left[top] == 0:
            top -= 1
        if top < 0:
            break
        if deadline is not None and time.perf_counter() > deadline:
            return None
        row = [0] * len(sizes_l)
        row[top], left[top] = 1, left[top] - 1
        gap = capacity - sizes_l[top]
        room = None if max_rows is None else budget
        filled = _fill(sizes_l, left, gap, top, room, rng if noise > 0 or slack_share > 0 else None, noise, slack_share)
        if filled is None:
            return None
        used = 0
        for t, k in filled:
            row[t] += k
            left[t] -= k
            used += k * sizes_l[t]
        if max_rows is not None:
            budget -= gap - used
        rows.append(row)
    if not rows:
        return np.zeros((len(sizes_l), 0), dtype=np.int64)
    return np.array(rows, dtype=np.int64).T


def randomized_fill(
    sizes: np.ndarray, counts: np.ndarray, capacity: int, num_rows: int, time_s: float, seed: int = 0
) -> np.ndarray | None:
    """`min_slack_fill` restarted until it packs into `num_rows` rows or `time_s` runs out.

    The first run is the deterministic one; later runs cycle through `PORTFOLIO`. A run
    stops as soon as it wastes more than `num_rows` rows allow, so a restart costs a few
    milliseconds. Repeatable for a given seed whenever it succeeds within the time.
    """
    deadline = time.perf_counter() + time_s
    rng = random.Random(seed)
    tries = 0
    while time.perf_counter() < deadline:
        noise, share = PORTFOLIO[(tries - 1) % len(PORTFOLIO)] if tries else (0.0, 0.0)
        tries += 1
        take = min_slack_fill(sizes, counts, capacity, deadline, num_rows, rng, noise, share)
        if take is not None and take.shape[1] <= num_rows:
            return take
    return None


def _fill(
    sizes: list[int],
    left: list[int],
    gap: int,
    top: int,
    budget: int | None,
    rng: random.Random | None,
    noise: float,
    slack_share: float,
) -> list[tuple[int, int]] | None:
    """A fullest subset of the prompts left within `gap`, lexicographically first in the
    preference order (longest first, or noisy with `rng`). Returns (type, count) pairs, or
    None when even the fullest wastes more than `budget`."""
    # 0/1 pieces by binary splitting of each count, big chunks first.
    pieces: list[tuple[float, int, int, int]] = []  # (preference, type, copies, width)
    for t in range(top, -1, -1):
        s = sizes[t]
        if left[t] == 0 or s > gap:
            continue
        limit, chunk, chunks = min(left[t], gap // s), 1, []
        while limit > 0:
            c = min(chunk, limit)
            chunks.append(c)
            limit -= c
            chunk *= 2
        key = s * math.exp(rng.gauss(0.0, noise)) if rng is not None and noise > 0 else float(s)
        pieces.extend((key, t, c, c * s) for c in sorted(chunks, reverse=True))
    if rng is not None and noise > 0:
        pieces.sort(key=lambda piece: -piece[0])
    mask = (1 << (gap + 1)) - 1
    # reach[k]: the sums that pieces k.. can make (bit j set: sum j reachable).
    reach = [0] * (len(pieces) + 1)
    r = 1
    reach[-1] = r
    for k in range(len(pieces) - 1, -1, -1):
        r = (r | (r << pieces[k][3])) & mask
        reach[k] = r
    hi = r.bit_length() - 1
    waste = gap - hi
    if budget is not None and waste > budget:
        return None
    lo = hi
    if rng is not None and slack_share > 0 and budget is not None:
        lo = hi - int(rng.random() * slack_share * (budget - waste))
    out: list[tuple[int, int]] = []
    total = 0
    for k, (_, t, c, w) in enumerate(pieces):
        if total >= lo and lo == hi:
            break
        top_room = hi - total - w
        if top_room < 0:
            continue
        low_room = max(lo - total - w, 0)
        if (reach[k + 1] >> low_room) & ((1 << (top_room - low_room + 1)) - 1):
            out.append((t, c))
            total += w
    return out
