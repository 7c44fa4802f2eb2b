"""Histogram packing (`lpfhp`): worst-fit decreasing on the length histogram, for huge inputs.

In the style of Graphcore's LPFHP ("longest-pack-first histogram packing", Krell et al.,
arXiv 2107.02027): work on counts per distinct length, not on prompts, and keep *pack
strategies* (a row content, repeated r times) instead of rows. The longest remaining
length goes, one prompt per row, into the strategies with the most free room; rows that
take a prompt move to a new strategy. The work is O(strategies), independent of how many
prompts share a length, so a histogram of billions of prompts packs as fast as one of
thousands. Differences from Graphcore's code: a length that fits nowhere opens rows that
each take as many of its prompts as fit (Graphcore opens one row per prompt), and the
limit on prompts per row is optional (`max_per_bin`, default none).

Without a limit this is exactly worst-fit decreasing: same row count and loads as `wfd`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from packers._structures import SortedInts, decreasing_order, size_runs
from packers.base import BasePacker
from packers.registry import register

__all__ = ["HistogramPacker", "pack_histogram"]


def pack_histogram(
    sizes: Sequence[int], counts: Sequence[int], capacity: int, max_per_bin: int | None = None
) -> list[tuple[tuple[tuple[int, int], ...], int]]:
    """Pack a histogram; return strategies `(content, rows)` in creation order.

    sizes: distinct lengths in tokens (each 1..capacity); counts: prompts of each length
    (> 0). `content` is a tuple of `(length, prompts of that length)` in placement order and
    `rows` how many rows have exactly that content. Raises `ValueError` on bad input.
    """
    if len(sizes) != len(counts):
        raise ValueError(f"{len(sizes)} sizes but {len(counts)} counts")
    if max_per_bin is not None and max_per_bin < 1:
        raise ValueError(f"max_per_bin must be >= 1 or None, got {max_per_bin}")
    hist = sorted(zip(map(int, sizes), map(int, counts)), reverse=True)
    for i, (s, k) in enumerate(hist):
        if not 0 < s <= capacity or k <= 0 or (i and s == hist[i - 1][0]):
            raise ValueError(f"bad histogram entry: length {s}, count {k} (capacity {capacity})")
    cap = max_per_bin or capacity  # a row never holds more than `capacity` prompts anyway
    # Strategy nodes: content(node) = content(parent[node]) + ((length[node], reps[node]),).
    parent: list[int] = []
    length: list[int] = []
    reps: list[int] = []
    done: list[list[int]] = []  # [node, rows] that can take no more prompts
    groups: dict[int, list[list[int]]] = {}  # free tokens -> [[node, rows, prompts per row]]
    values = SortedInts()

    def add(node_parent: int, s: int, r: int, rows: int, free: int, per_row: int) -> None:
        parent.append(node_parent)
        length.append(s)
        reps.append(r)
        entry = [len(parent) - 1, rows, per_row]
        if free == 0 or per_row >= cap:
            done.append(entry[:2])
        elif free in groups:
            groups[free].append(entry)
        else:
            groups[free] = [entry]
            values.add(free)

    for s, k in hist:
        f = values.predecessor(capacity)
        while k and f >= s:
            entries = groups[f]
            while k and entries:
                node, rows, per_row = entries[-1]
                take = min(rows, k)
                if take == rows:
                    entries.pop()
                else:
                    entries[-1][1] -= take
                add(node, s, 1, take, f - s, per_row + 1)
                k -= take
            if not entries:
                del groups[f]
                values.discard(f)
            f = values.predecessor(f)
        if k:  # fits nowhere: new rows, each filled with this length while it fits
            per_new = min(capacity // s, cap)
            full, rest = divmod(k, per_new)
            if full:
                add(-1, s, per_new, full, capacity - per_new * s, per_new)
            if rest:
                add(-1, s, rest, 1, capacity - rest * s, rest)
    finished = done + [entry[:2] for f in sorted(groups) for entry in groups[f]]
    finished.sort()
    out = []
    for node, rows in finished:
        content = []
        while node >= 0:
            content.append((length[node], reps[node]))
            node = parent[node]
        out.append((tuple(reversed(content)), rows))
    return out


@register("lpfhp")
@dataclass(frozen=True)
class HistogramPacker(BasePacker):
    """Longest-pack-first histogram packing (worst-fit decreasing on the length histogram).

    max_per_bin: most prompts one row may hold (None: no limit). Fast on huge inputs
    with few distinct lengths; rows are listed strategy by strategy.
    """

    max_per_bin: int | None = None

    def __post_init__(self) -> None:
        if self.max_per_bin is not None and (isinstance(self.max_per_bin, bool) or self.max_per_bin < 1):
            raise ValueError(f"max_per_bin must be a positive int or None, got {self.max_per_bin!r}")

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        order = decreasing_order(lengths, capacity)
        starts, sizes, counts = size_runs(lengths[order])
        strategies = pack_histogram(sizes.tolist(), counts.tolist(), capacity, self.max_per_bin)
        pool = dict(zip(sizes.tolist(), starts.tolist()))  # next unused position in `order`
        bins: list[list[int]] = []
        for content, rows in strategies:
            blocks = []
            for s, r in content:
                start = pool[s]
                pool[s] = start + rows * r
                blocks.append(order[start : start + rows * r].reshape(rows, r))
            bins.extend(np.hstack(blocks).tolist() if len(blocks) > 1 else blocks[0].tolist())
        return bins, {"strategies": len(strategies)}
