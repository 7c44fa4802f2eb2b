"""`RowLayout`: the geometry of a `Packing` as flat numpy arrays (rows, segments, offsets).

Every cost formula reads this instead of walking `Packing.bins` in Python, so a batch of a
few hundred prompts costs a few numpy calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np

from packers import Packing

__all__ = ["RowLayout"]


@dataclass(frozen=True, eq=False)
class RowLayout:
    """Packed rows as arrays.

    loads_tokens:   (R,) real tokens in each row.
    width_tokens:   the row width of the padded rectangle = max(loads_tokens).
    seg_lengths:    (n,) prompt lengths in row-major placement order.
    seg_row:        (n,) row of each segment.
    seg_start:      (n,) offset of each segment inside its row (tokens).
    """

    loads_tokens: np.ndarray
    width_tokens: int
    seg_lengths: np.ndarray
    seg_row: np.ndarray
    seg_start: np.ndarray

    def __post_init__(self) -> None:
        n = self.seg_lengths.size
        if self.loads_tokens.size == 0 or n == 0:
            raise ValueError("a row layout needs at least one row and one prompt")
        if not (self.seg_row.size == self.seg_start.size == n):
            raise ValueError("seg_lengths, seg_row and seg_start must have the same length")
        if self.width_tokens != int(self.loads_tokens.max()):
            raise ValueError("width_tokens must equal the largest row load")

    @classmethod
    def from_packing(cls, packing: Packing) -> "RowLayout":
        sizes = np.fromiter(map(len, packing.bins), dtype=np.int64, count=packing.num_bins)
        n = packing.num_prompts
        order = np.fromiter(chain.from_iterable(packing.bins), dtype=np.int64, count=n)
        seg_lengths = np.asarray(packing.lengths, dtype=np.int64)[order]
        seg_row = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        ends = np.cumsum(seg_lengths)
        row_first = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        row_base = ends[row_first] - seg_lengths[row_first]  # global offset where each row starts
        seg_start = ends - seg_lengths - row_base[seg_row]
        loads = np.asarray(packing.loads, dtype=np.int64)
        return cls(loads, int(loads.max()), seg_lengths, seg_row, seg_start)

    @property
    def num_rows(self) -> int:
        return int(self.loads_tokens.size)

    @property
    def num_prompts(self) -> int:
        return int(self.seg_lengths.size)

    @property
    def real_tokens(self) -> int:
        return int(self.loads_tokens.sum())

    def prompts_per_row(self) -> np.ndarray:
        """(R,) prompts in each row (computed once, then cached)."""
        cached = self.__dict__.get("_prompts_per_row")
        if cached is None:
            cached = np.bincount(self.seg_row, minlength=self.num_rows)
            object.__setattr__(self, "_prompts_per_row", cached)
        return cached

    def causal_pairs_total(self) -> int:
        """sum over prompts of l(l+1)/2: the pairs a per-prompt causal mask allows (cached;
        float64 sums, exact below 2**53, never wrapping)."""
        cached = self.__dict__.get("_causal_pairs_total")
        if cached is None:
            cached = int(self.causal_pairs_per_row().sum())
            object.__setattr__(self, "_causal_pairs_total", cached)
        return cached

    def causal_pairs_per_row(self) -> np.ndarray:
        """(R,) float64 query-key pairs a per-prompt causal mask allows: sum over the row's
        prompts of l(l+1)/2 (float64: l**2 of a long prompt would wrap int64)."""
        seg = self.seg_lengths.astype(np.float64)
        return np.bincount(self.seg_row, weights=seg * (seg + 1) / 2, minlength=self.num_rows)

    def touched_tiles_per_row(self, block_tokens: int) -> np.ndarray:
        """(R,) float64 count of block_tokens x block_tokens tiles of the row's (W x W) score
        matrix that hold at least one allowed pair of the block-diagonal causal mask (padding
        tiles excluded).

        Query block i of a row starts at position b*i; the prompt holding that position starts
        at s, and because prompts are contiguous the allowed keys of the whole block are the
        contiguous range [s, b*i + b), so the block touches key blocks floor(s/b) .. i:
        tiles(i) = i - floor(s/b) + 1. The query blocks starting inside a prompt [s, e) are
        i = lo .. hi with lo = ceil(s/b), hi = ceil(e/b) - 1; with k = hi - lo + 1 (>= 0) they
        touch k * (lo - floor(s/b) + 1) + k(k-1)/2 tiles. O(n), whatever the row width.
        """
        b = block_tokens
        start = self.seg_start
        end = start + self.seg_lengths
        lo = -(-start // b)
        k = np.maximum(-(-end // b) - lo, 0).astype(np.float64)
        tiles = k * (lo - start // b + 1) + k * (k - 1) / 2
        return np.bincount(self.seg_row, weights=tiles, minlength=self.num_rows)
