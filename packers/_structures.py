"""Index structures the fast packers share: who has room for a prompt of `s` tokens?

- `FreeSpaceTree`: a 64-ary max tree over bins (in opening order) of their free tokens,
  stored as numpy levels. `leftmost(s, limit)` returns the first bins, in index order, with
  at least `s` free tokens, by a vectorised descent; first-fit placement is O(log_64 B)
  numpy calls per batch of equal-sized prompts.
- `IntSet`: a set of non-negative ints as a two-level bitset of Python ints, with
  `successor(v)` / `predecessor(v)` (smallest member >= v / largest <= v) in O(1) big-int
  operations on at most 2**16 bits. Best-fit and the histogram packer keep the distinct
  free-space values of their bins in one.

Both are private helpers: the public contract is `Packer.pack`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["FreeSpaceTree", "IntSet", "decreasing_order", "size_runs"]

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


class IntSet:
    """A set of ints in [0, 2**62) as a two-level bitset of Python ints.

    Values are split into blocks of 2**16; `blocks[b]` has bit (v mod 2**16) set for each
    member v of block b, and bit b of `top` is set when block b is non-empty.
    """

    _SHIFT = 16
    _MASK = (1 << _SHIFT) - 1

    def __init__(self) -> None:
        self.top = 0
        self.blocks: dict[int, int] = {}

    def add(self, v: int) -> None:
        b = v >> self._SHIFT
        word = self.blocks.get(b, 0)
        if not word:
            self.top |= 1 << b
        self.blocks[b] = word | (1 << (v & self._MASK))

    def discard(self, v: int) -> None:
        b = v >> self._SHIFT
        word = self.blocks.get(b, 0) & ~(1 << (v & self._MASK))
        if word:
            self.blocks[b] = word
        else:
            self.blocks.pop(b, None)
            self.top &= ~(1 << b)

    def predecessor(self, v: int) -> int:
        """Largest member <= v, or -1 when there is none."""
        if v < 0:
            return -1
        b = v >> self._SHIFT
        word = self.blocks.get(b, 0) & ((2 << (v & self._MASK)) - 1)
        if word:
            return (b << self._SHIFT) + word.bit_length() - 1
        rest = self.top & ((1 << b) - 1)
        if not rest:
            return -1
        b = rest.bit_length() - 1
        return (b << self._SHIFT) + self.blocks[b].bit_length() - 1

    def successor(self, v: int) -> int:
        """Smallest member >= v, or -1 when there is none."""
        b = v >> self._SHIFT
        word = self.blocks.get(b, 0) >> (v & self._MASK)
        if word:
            return v + ((word & -word).bit_length() - 1)
        rest = self.top >> (b + 1)
        if not rest:
            return -1
        b += (rest & -rest).bit_length()
        word = self.blocks[b]
        return (b << self._SHIFT) + ((word & -word).bit_length() - 1)
