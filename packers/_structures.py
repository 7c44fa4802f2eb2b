"""Index structures the fast packers share: who has room for a prompt of `s` tokens?

- `FreeSpaceTree`: a 64-ary max tree over bins (in opening order) of their free tokens,
  stored as numpy levels. `leftmost(s, limit)` returns the first bins, in index order, with
  at least `s` free tokens, by a vectorised descent; first-fit placement is O(log_64 B)
  numpy calls per batch of equal-sized prompts.
- `SortedInts`: a set of ints as sorted blocks, with `successor(v)` / `predecessor(v)`
  (smallest member >= v / largest <= v) by bisection: O(log n) per operation and O(n)
  memory, whatever the capacity. Best-fit and the histogram packer keep the distinct
  free-space values of their bins in one.

Both are private helpers: the public contract is `Packer.pack`.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right

import numpy as np

__all__ = ["FreeSpaceTree", "SortedInts", "decreasing_order", "size_runs"]

FAN = 64
_AR = np.arange(FAN, dtype=np.int64)


def decreasing_order(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Prompt indices by decreasing length, ties by index (a stable sort).

    Uses numpy's O(n) radix sort on uint16 keys when the capacity allows it.
    """
    if capacity < 1 << 16:
        return np.argsort((capacity - lengths).astype(np.uint16), kind="stable")
    return np.argsort(-lengths, kind="stable")


def size_runs(sorted_lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal values in a sorted array: (start offsets, values, counts)."""
    n = sorted_lengths.size
    starts = np.concatenate(([0], np.flatnonzero(sorted_lengths[1:] != sorted_lengths[:-1]) + 1))
    counts = np.diff(np.concatenate((starts, [n])))
    return starts, sorted_lengths[starts], counts


class FreeSpaceTree:
    """Free tokens per bin (0 for bins not yet opened) with a 64-ary max tree on top.

    `levels[0]` holds one entry per bin, padded to a multiple of 64; `levels[i + 1][j]` is
    the max of block j of `levels[i]`. Prompts are >= 1 token, so unopened bins (0) are
    never eligible.
    """

    def __init__(self, max_bins: int) -> None:
        size = -(-max(max_bins, 1) // FAN) * FAN
        self.levels: list[np.ndarray] = [np.zeros(size, dtype=np.int64)]
        while self.levels[-1].size > FAN:
            size = -(-(self.levels[-1].size // FAN) // FAN) * FAN
            self.levels.append(np.zeros(size, dtype=np.int64))

    @property
    def free(self) -> np.ndarray:
        return self.levels[0]

    def leftmost(self, s: int, limit: int) -> np.ndarray:
        """Indices of the first `limit` bins (in index order) with free >= s."""
        levels = self.levels
        cand = (levels[-1] >= s).nonzero()[0][:limit]
        for level in reversed(levels[:-1]):
            if cand.size == 0:
                break
            children = (cand[:, None] * FAN + _AR).ravel()
            cand = children[level[children] >= s][:limit]
        return cand

    def update(self, bins: np.ndarray, free: np.ndarray) -> None:
        """Set the free tokens of `bins` (strictly increasing) and refresh their ancestors."""
        self.levels[0][bins] = free
        nodes = bins
        for child, parent in zip(self.levels[:-1], self.levels[1:]):
            nodes = nodes // FAN
            if nodes.size > 1:  # sorted input: drop repeats without np.unique's overhead
                keep = np.empty(nodes.size, dtype=bool)
                keep[0] = True
                np.not_equal(nodes[1:], nodes[:-1], out=keep[1:])
                nodes = nodes[keep]
            parent[nodes] = child.reshape(-1, FAN)[nodes].max(axis=1)

    def update_range(self, start: int, free: np.ndarray) -> None:
        """Set the free tokens of the contiguous bins start .. start + len(free) - 1."""
        stop = start + free.size
        self.levels[0][start:stop] = free
        for child, parent in zip(self.levels[:-1], self.levels[1:]):
            start, stop = start // FAN, (stop - 1) // FAN + 1
            parent[start:stop] = child.reshape(-1, FAN)[start:stop].max(axis=1)


class SortedInts:
    """A set of ints as sorted blocks of at most 2 * LOAD values, with each block's largest
    value in `maxes`.

    `add`, `discard`, `successor` and `predecessor` cost two bisects plus an O(LOAD) list
    move (O(log n) comparisons; the list moves are memmoves of at most a few KiB), and the
    memory is O(members) whatever the values: a huge capacity costs nothing.
    """

    LOAD = 512

    def __init__(self) -> None:
        self.blocks: list[list[int]] = []
        self.maxes: list[int] = []

    def __len__(self) -> int:
        return sum(map(len, self.blocks))

    def add(self, v: int) -> None:
        maxes = self.maxes
        if not maxes:
            self.blocks.append([v])
            maxes.append(v)
            return
        i = bisect_left(maxes, v)
        if i == len(maxes):  # a new largest value
            i -= 1
            block = self.blocks[i]
            block.append(v)
            maxes[i] = v
        else:
            block = self.blocks[i]
            j = bisect_left(block, v)
            if block[j] == v:
                return
            block.insert(j, v)
        if len(block) > 2 * self.LOAD:  # split in two halves
            self.blocks.insert(i + 1, block[self.LOAD :])
            del block[self.LOAD :]
            maxes.insert(i, block[-1])

    def discard(self, v: int) -> None:
        maxes = self.maxes
        i = bisect_left(maxes, v)
        if i == len(maxes):
            return
        block = self.blocks[i]
        j = bisect_left(block, v)
        if block[j] != v:
            return
        del block[j]
        if not block:
            del self.blocks[i]
            del maxes[i]
        elif j == len(block):
            maxes[i] = block[-1]

    def predecessor(self, v: int) -> int:
        """Largest member <= v, or -1 when there is none."""
        maxes = self.maxes
        i = bisect_right(maxes, v)  # blocks before i hold only values <= v
        if i < len(maxes):
            block = self.blocks[i]
            j = bisect_right(block, v)
            if j:
                return block[j - 1]
        return maxes[i - 1] if i else -1

    def successor(self, v: int) -> int:
        """Smallest member >= v, or -1 when there is none."""
        maxes = self.maxes
        i = bisect_left(maxes, v)
        if i == len(maxes):
            return -1
        block = self.blocks[i]
        return block[bisect_left(block, v)]
