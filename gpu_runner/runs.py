"""Variable-length runs of token ids stored flat, handled with numpy over a whole set at once.

A run is a slice `flat[start : start + length]` of one flat int64 array. This module owns the
two operations scoring's host work needs on tens of thousands of runs without a Python step
per run: the flat indices of many runs back to back (`run_indices`, to gather them into one
array) and the grouping of runs of equal content (`group_runs`: a positional hash of every
run, runs sorted by (key, length, hash), then each run checked token by token against its
group's first run, so the grouping is exact, never a hash guess).
"""

from __future__ import annotations

import numpy as np

__all__ = ["group_runs", "run_indices"]

_HASH_SEED = 0x5EED


def run_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """int64 [sum(lengths)]: the indices start_i, ..., start_i + length_i - 1 of every run,
    runs back to back in their given order (lengths >= 0)."""
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum()), dtype=np.int64) + np.repeat(starts - before, lengths)


def _hashes(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """uint64 [R]: sum over j of flat[start + j] * w[j] (mod 2^64), w fixed random odd
    weights; empty runs hash to 0."""
    longest = int(lengths.max(initial=0))
    weights = np.random.default_rng(_HASH_SEED).integers(0, 2**63, size=max(longest, 1), dtype=np.uint64) * 2 + 1
    idx = run_indices(starts, lengths)
    at = np.arange(idx.size, dtype=np.int64) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    with np.errstate(over="ignore"):
        terms = flat[idx].astype(np.uint64) * weights[at]
    out = np.zeros(lengths.size, dtype=np.uint64)
    full = np.flatnonzero(lengths > 0)
    if full.size:
        first = (np.cumsum(lengths) - lengths)[full]
        out[full] = np.add.reduceat(terms, first)
    return out


def _equal_runs(flat: np.ndarray, a_starts: np.ndarray, b_starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """bool [R]: run a_i equals run b_i (both lengths_i long)."""
    same = flat[run_indices(a_starts, lengths)] == flat[run_indices(b_starts, lengths)]
    bad = np.zeros(lengths.size, dtype=bool)
    full = np.flatnonzero(lengths > 0)
    if full.size:
        first = (np.cumsum(lengths) - lengths)[full]
        bad[full] = np.logical_and.reduceat(same, first) == 0
    return ~bad


def group_runs(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
               key: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Group R runs of `flat` by content (and by `key`, one int64 per run, when given).

    Returns (group, first): group int64 [R], each run's group, numbered 0, 1, ... in the
    order of their first runs; first int64 [G], the first (lowest) run index of each group.
    Exact: equal hashes are checked token by token, a collision falls back to a dict.
    """
    flat = np.asarray(flat, dtype=np.int64)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    r = lengths.size
    if r == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    k = np.zeros(r, dtype=np.int64) if key is None else np.asarray(key, dtype=np.int64)
    h = _hashes(flat, starts, lengths).view(np.int64)
    order = np.lexsort((np.arange(r), h, lengths, k))  # ties: lowest run index first
    new = np.ones(r, dtype=bool)
    new[1:] = (k[order[1:]] != k[order[:-1]]) | (lengths[order[1:]] != lengths[order[:-1]]) | (
        h[order[1:]] != h[order[:-1]])
    head = order[np.flatnonzero(new)]  # the first run of each candidate group
    cand = np.empty(r, dtype=np.int64)
    cand[order] = np.repeat(head, np.diff(np.append(np.flatnonzero(new), r)))
    check = np.flatnonzero(cand != np.arange(r))
    if check.size and not _equal_runs(flat, starts[check], starts[cand[check]], lengths[check]).all():
        return _group_exactly(flat, starts, lengths, k)
    rank = np.empty(r, dtype=np.int64)  # candidate group heads renumbered by first occurrence
    heads = np.sort(head)
    rank[heads] = np.arange(heads.size)
    return rank[cand], heads


def _group_exactly(flat: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                   key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`group_runs` with a dict of bytes (a Python step per run: only after a hash collision)."""
    seen: dict[tuple[int, bytes], int] = {}
    group = np.empty(lengths.size, dtype=np.int64)
    first: list[int] = []
    for i, (s, n, kk) in enumerate(zip(starts.tolist(), lengths.tolist(), key.tolist())):
        g = seen.setdefault((kk, flat[s : s + n].tobytes()), len(first))
        if g == len(first):
            first.append(i)
        group[i] = g
    return group, np.asarray(first, dtype=np.int64)
