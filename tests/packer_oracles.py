"""Slow, obviously-correct reference algorithms the packer tests compare against.

Nothing here is fast; everything here is short enough to check by reading.
"""

from __future__ import annotations

import numpy as np


def reference_fit(lengths: list[int], capacity: int, rule: str, decreasing: bool) -> list[list[int]]:
    """One prompt at a time, O(n * bins). Rules: next, first, best, worst.

    Decreasing order is by length, ties by index. Ties between bins: lowest index.
    """
    n = len(lengths)
    order = sorted(range(n), key=lambda i: (-lengths[i], i)) if decreasing else list(range(n))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        size = lengths[i]
        if rule == "next":
            fits = [len(bins) - 1] if bins and free[-1] >= size else []
        else:
            fits = [b for b in range(len(bins)) if free[b] >= size]
        if fits:
            if rule in ("next", "first"):
                b = fits[0]
            elif rule == "best":
                b = min(fits, key=lambda j: (free[j], j))
            else:
                b = min(fits, key=lambda j: (-free[j], j))
            bins[b].append(i)
            free[b] -= size
        else:
            bins.append([i])
            free.append(capacity - size)
    return bins


def optimal_bins(lengths: list[int], capacity: int) -> int:
    """Fewest bins, by exhaustive search with symmetry pruning (for n <= ~12)."""
    sizes = sorted(lengths, reverse=True)
    best = [len(sizes)]

    def place(i: int, loads: list[int]) -> None:
        if len(loads) >= best[0]:
            return
        if i == len(sizes):
            best[0] = len(loads)
            return
        tried = set()
        for b, load in enumerate(loads):
            if load + sizes[i] <= capacity and load not in tried:
                tried.add(load)
                loads[b] += sizes[i]
                place(i + 1, loads)
                loads[b] -= sizes[i]
        loads.append(sizes[i])
        place(i + 1, loads)
        loads.pop()

    place(0, [])
    return best[0]


def perfect_instance(rng: np.random.Generator, num_bins: int, capacity: int, max_parts: int) -> list[int]:
    """Lengths that fill `num_bins` bins exactly (so OPT = num_bins = L1), shuffled."""
    lengths: list[int] = []
    for _ in range(num_bins):
        parts = int(rng.integers(1, max_parts + 1))
        parts = min(parts, capacity)
        cuts = np.sort(rng.choice(np.arange(1, capacity), size=parts - 1, replace=False)) if parts > 1 else []
        edges = np.concatenate(([0], cuts, [capacity]))
        lengths.extend(np.diff(edges).astype(int).tolist())
    rng.shuffle(lengths)
    return lengths


def canonical(bins, lengths) -> list[tuple[int, ...]]:
    """Bins as sorted tuples of lengths, sorted: equal for packings that differ only by ties."""
    return sorted(tuple(sorted(lengths[i] for i in b)) for b in bins)


def loads_of(bins, lengths) -> list[int]:
    return sorted(sum(lengths[i] for i in b) for b in bins)
