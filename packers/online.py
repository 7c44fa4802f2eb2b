"""Online heuristics: `next-fit`, `first-fit`, `best-fit`, `worst-fit` (caller's order).

Each prompt is placed when it arrives, never moved again: what a streaming scheduler can
do without seeing the whole batch. The placement functions take an explicit `order` so
the offline "decreasing" packers reuse them on sorted input.

Costs per prompt: next-fit O(1); first-fit O(log B) (binary max tree over bins);
best-fit O(log B) (`SortedInts` over the distinct free-space values); worst-fit
O(log B) (heap). Ties between bins with equal room go to the lowest bin index, except in
best-fit, where they go to the most recently moved bin (counts and loads are the same).
Bins are numbered in opening order.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

import numpy as np

from packers._structures import SortedInts
from packers.base import BasePacker, bins_from_assignment
from packers.registry import register

__all__ = [
    "BestFitPacker",
    "FirstFitPacker",
    "NextFitPacker",
    "WorstFitPacker",
    "best_fit",
    "first_fit",
    "next_fit",
    "worst_fit",
]

def next_fit(lengths: np.ndarray, order: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each prompt of `order`: keep one open bin, open a new one when it is full."""
    bin_of = np.empty(order.size, dtype=np.int64)
    b, free = -1, 0
    for pos, size in enumerate(lengths[order].tolist()):
        if size > free:
            b, free = b + 1, capacity
        free -= size
        bin_of[pos] = b
    return bin_of


def first_fit(lengths: np.ndarray, order: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each prompt of `order`: the lowest-index bin with room (binary max tree)."""
    sizes = lengths[order].tolist()
    max_bins = max(1, min(len(sizes), 2 * (-(-sum(sizes) // capacity)) + 1))
    leaves = 1 << (max_bins - 1).bit_length()
    tree = [0] * (2 * leaves)  # tree[leaves + b] = free tokens of bin b (0 = not opened)
    bin_of = np.empty(len(sizes), dtype=np.int64)
    num_bins = 0
    for pos, size in enumerate(sizes):
        if tree[1] >= size:
            i = 1
            while i < leaves:
                i <<= 1
                if tree[i] < size:
                    i += 1
            b = i - leaves
            free = tree[i] - size
        else:
            b, i = num_bins, leaves + num_bins
            num_bins += 1
            free = capacity - size
        bin_of[pos] = b
        tree[i] = free
        i >>= 1
        while i:
            best = max(tree[2 * i], tree[2 * i + 1])
            if tree[i] == best:
                break  # ancestors above already hold the right maximum
            tree[i] = best
            i >>= 1
    return bin_of


def best_fit(lengths: np.ndarray, order: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each prompt of `order`: a bin with the least room that still fits it."""
    groups: dict[int, list[int]] = {}  # free tokens -> bins with exactly that much room
    values = SortedInts()
    bin_of = np.empty(order.size, dtype=np.int64)
    num_bins = 0
    for pos, size in enumerate(lengths[order].tolist()):
        f = values.successor(size)
        if f < 0:
            b, free = num_bins, capacity - size
            num_bins += 1
        else:
            members = groups[f]
            b = members.pop()
            if not members:
                del groups[f]
                values.discard(f)
            free = f - size
        bin_of[pos] = b
        if free:
            if free in groups:
                groups[free].append(b)
            else:
                groups[free] = [b]
                values.add(free)
    return bin_of


def worst_fit(lengths: np.ndarray, order: np.ndarray, capacity: int) -> np.ndarray:
    """Bin of each prompt of `order`: the bin with the most room, if it fits (heap)."""
    heap: list[tuple[int, int]] = []  # (-free tokens, bin index)
    bin_of = np.empty(order.size, dtype=np.int64)
    for pos, size in enumerate(lengths[order].tolist()):
        if heap and -heap[0][0] >= size:
            neg_free, b = heap[0]
            heapq.heapreplace(heap, (neg_free + size, b))
        else:
            b = len(heap)
            heapq.heappush(heap, (size - capacity, b))
        bin_of[pos] = b
    return bin_of


@register("next-fit")
@dataclass(frozen=True)
class NextFitPacker(BasePacker):
    """Next-fit in arrival order: one open row, a new row when the prompt does not fit.

    At most 2 OPT rows; keeps prompts contiguous in arrival order (rows are slices).
    """

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        order = np.arange(lengths.size, dtype=np.int64)
        return bins_from_assignment(order, next_fit(lengths, order, capacity)), {}


@register("first-fit")
@dataclass(frozen=True)
class FirstFitPacker(BasePacker):
    """First-fit in arrival order: each prompt into the lowest-index row with room (1.7 OPT)."""

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        order = np.arange(lengths.size, dtype=np.int64)
        return bins_from_assignment(order, first_fit(lengths, order, capacity)), {}


@register("best-fit")
@dataclass(frozen=True)
class BestFitPacker(BasePacker):
    """Best-fit in arrival order: each prompt into the row with the least room that fits (1.7 OPT)."""

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        order = np.arange(lengths.size, dtype=np.int64)
        return bins_from_assignment(order, best_fit(lengths, order, capacity)), {}


@register("worst-fit")
@dataclass(frozen=True)
class WorstFitPacker(BasePacker):
    """Worst-fit in arrival order: each prompt into the row with the most room (2 OPT)."""

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        order = np.arange(lengths.size, dtype=np.int64)
        return bins_from_assignment(order, worst_fit(lengths, order, capacity)), {}
