"""Offline "decreasing" heuristics: `ffd`, `bfd`, `wfd` (sort longest first, then place).

Prompts are placed longest first (ties by index). Equal-length prompts are placed as one
batch, which is what makes these fast on real inputs (lengths are ints <= capacity, so a
million prompts have at most a few thousand distinct lengths):

- first-fit: the leftmost bins with room take floor(free / s) prompts each, in bin order;
  found by a vectorised descent of a 64-ary max tree (`FreeSpaceTree`).
- best-fit: the bins with the least room >= s take floor(free / s) each; bins are grouped
  by free space (bins with equal free space are interchangeable for every later choice),
  and the distinct free-space values live in a `SortedInts`.
Both are exactly the one-prompt-at-a-time algorithms: after a bin with the least (or
leftmost) room takes a prompt, it is still the least (leftmost) one with room while
floor(free / s) > 0. Ties between bins of equal free space go to the most recently moved
bin in `bfd` (bin counts and loads do not depend on that choice).

With fewer than MIN_RUN prompts per distinct length on average (e.g. a huge capacity), the
one-at-a-time versions in `packers.online` run instead.

Worst-fit spreads equal prompts over bins one by one, so `wfd` uses a heap (O(n log B)).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from packers._structures import FreeSpaceTree, SortedInts, decreasing_order, size_runs
from packers.base import BasePacker, bins_from_assignment
from packers.online import best_fit, first_fit, worst_fit
from packers.registry import register

__all__ = ["BFDPacker", "FFDPacker", "WFDPacker", "best_fit_decreasing", "first_fit_decreasing"]


# Batches pay a fixed numpy cost per distinct length; below MIN_RUN prompts per distinct
# length on average, placing one prompt at a time (same algorithm, same result) is faster.
MIN_RUN = 16
FAN_START = 64  # bins the first-fit search asks the tree for first; grows 8x when short


def _max_bins(lengths: np.ndarray, capacity: int) -> int:
    """Upper bound on bins of any first-/best-fit packing: at most one bin is half empty."""
    return int(min(lengths.size, 2 * (-(-int(lengths.sum()) // capacity)) + 1))


def first_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """FFD. Returns (order, bin_of): prompt indices in placement order and each one's bin.

    Bins are numbered in opening order. O(D log_64 B) numpy calls for D distinct lengths.
    """
    order = decreasing_order(lengths, capacity)
    sorted_lengths = lengths[order]
    starts, sizes, counts = size_runs(sorted_lengths)
    # Prompts over half the capacity never share a row with each other, and come first:
    # each opens its own row, all in one step.
    big_runs = int(np.count_nonzero(2 * sizes > capacity))
    num_bins = int(starts[big_runs]) if big_runs < sizes.size else lengths.size
    if (sizes.size - big_runs) * MIN_RUN > lengths.size - num_bins:
        return order, first_fit(lengths, order, capacity)
    tree = FreeSpaceTree(_max_bins(lengths, capacity))
    free = tree.free
    bin_of = np.empty(lengths.size, dtype=np.int64)
    bin_of[:num_bins] = np.arange(num_bins)
    if num_bins:
        tree.update_range(0, capacity - sorted_lengths[:num_bins])
    runs = zip(starts[big_runs:].tolist(), sizes[big_runs:].tolist(), counts[big_runs:].tolist())
    for start, s, k in runs:
        pos = start
        limit = min(k, FAN_START)
        while num_bins:  # fill the leftmost bins with room
            cand = tree.leftmost(s, limit)
            if cand.size == 0:
                break
            room = free[cand]
            take = room // s
            total = np.cumsum(take)
            if total[-1] < k and cand.size == limit:
                limit = min(k, limit * 8)  # not enough room found yet: look further right
                continue
            if total[-1] >= k:
                last = int(np.searchsorted(total, k))
                cand, take = cand[: last + 1], take[: last + 1].copy()
                take[-1] -= int(total[last]) - k
            placed = int(take.sum())
            bin_of[pos : pos + placed] = np.repeat(cand, take)
            tree.update(cand, room[: cand.size] - take * s)
            pos += placed
            k -= placed
            break
        if k:  # open new bins, each taking floor(C / s) prompts
            per_bin = capacity // s
            new = -(-k // per_bin)
            bin_of[pos : pos + k] = num_bins + np.arange(k, dtype=np.int64) // per_bin
            new_free = np.full(new, capacity - per_bin * s, dtype=np.int64)
            new_free[-1] = capacity - (k - per_bin * (new - 1)) * s
            tree.update_range(num_bins, new_free)
            num_bins += new
    return order, bin_of



def best_fit_decreasing(lengths: np.ndarray, capacity: int) -> tuple[np.ndarray, np.ndarray]:
    """BFD. Returns (order, bin_of) as `first_fit_decreasing` does.

    Work: O(n) list moves in C plus O(1) Python steps per group of equal-free bins used.
    """
    order = decreasing_order(lengths, capacity)
    _, sizes, counts = size_runs(lengths[order])
    if sizes.size * MIN_RUN > lengths.size:
        return order, best_fit(lengths, order, capacity)
    groups: dict[int, list[int]] = {}  # free tokens -> bins with exactly that much room
    values = SortedInts()  # the keys of `groups`
    chunks: list[np.ndarray] = []  # bin of each placed prompt, in placement order
    num_bins = 0

    def move(ids: list[int], free: int) -> None:
        if free == 0 or not ids:
            return  # a full bin can never take another prompt
        if free in groups:
            groups[free].extend(ids)
        else:
            groups[free] = ids
            values.add(free)

    for s, k in zip(sizes.tolist(), counts.tolist()):
        f = values.successor(s)
        while k and f >= 0:
            members = groups[f]
            per_bin = f // s
            m = len(members)
            if m * per_bin <= k:  # every bin of this group fills up with this length
                del groups[f]
                values.discard(f)
                chunks.append(np.repeat(np.asarray(members, dtype=np.int64), per_bin))
                move(members, f - per_bin * s)
                k -= m * per_bin
                f = values.successor(f + 1)
                continue
            full, rest = divmod(k, per_bin)
            used = members[m - full - (rest > 0) :]
            del members[m - len(used) :]
            if not members:
                del groups[f]
                values.discard(f)
            chunks.append(np.repeat(np.asarray(used, dtype=np.int64), per_bin)[:k])
            if rest:  # the last bin used takes the `rest` prompts
                move(used[:-1], f - per_bin * s)
                move(used[-1:], f - rest * s)
            else:
                move(used, f - per_bin * s)
            k = 0
        if k:
            per_bin = capacity // s
            new = -(-k // per_bin)
            chunks.append(num_bins + np.arange(k, dtype=np.int64) // per_bin)
            ids = list(range(num_bins, num_bins + new))
            if k % per_bin:
                move(ids[:-1], capacity - per_bin * s)
                move(ids[-1:], capacity - (k % per_bin) * s)
            else:
                move(ids, capacity - per_bin * s)
            num_bins += new
    return order, np.concatenate(chunks)


@register("ffd")
@dataclass(frozen=True)
class FFDPacker(BasePacker):
    """First-fit decreasing: longest prompt first, into the leftmost row with room.

    At most 11/9 OPT + 6/9 rows (Dosa 2007). Rows are numbered in opening order.
    """

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        return bins_from_assignment(*first_fit_decreasing(lengths, capacity)), {}


@register("bfd")
@dataclass(frozen=True)
class BFDPacker(BasePacker):
    """Best-fit decreasing: longest prompt first, into the row with the least room that fits.

    Same 11/9 OPT + 6/9 guarantee as FFD; often fuller rows at the end.
    """

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        return bins_from_assignment(*best_fit_decreasing(lengths, capacity)), {}


@register("wfd")
@dataclass(frozen=True)
class WFDPacker(BasePacker):
    """Worst-fit decreasing: longest prompt first, into the row with the most room.

    Balances row loads (useful when rows run on different devices); more rows than FFD at
    times. Ties go to the lowest row index. O(n log B) with a heap.
    """

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        order = decreasing_order(lengths, capacity)
        return bins_from_assignment(order, worst_fit(lengths, order, capacity)), {}
