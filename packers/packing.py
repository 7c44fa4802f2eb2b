"""The `Packing` result type and input validation shared by every packer.

A `Packing` is the whole answer of a packer: which prompts share which packed row (bin),
in placement order, for one capacity. It validates itself on construction, so a
`Packing` that exists is always a valid packing of its lengths.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np

from packers.limits import MAX_LENGTH_TOKENS, MAX_PROMPTS, check_capacity_tokens, limit_error

__all__ = ["STATUSES", "Packing", "validate_capacity", "validate_lengths"]

STATUSES = ("optimal", "feasible", "heuristic")


def validate_capacity(capacity: object) -> int:
    """Return `capacity` as a positive int (at most `limits.MAX_CAPACITY_TOKENS`) or raise
    `ValueError` naming the bad value."""
    return check_capacity_tokens(capacity)


def _first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _check_max(arr: np.ndarray) -> None:
    bad = arr > MAX_LENGTH_TOKENS
    if bad.any():
        i = _first_bad(bad)
        raise limit_error(f"prompt {i}: length", arr[i].item(), MAX_LENGTH_TOKENS, "tokens")


def validate_lengths(lengths: Sequence[int] | np.ndarray, capacity: int | None = None) -> np.ndarray:
    """Check prompt lengths and return them as a fresh int64 array.

    Contract: `lengths` is a non-empty sequence of at most `limits.MAX_PROMPTS` positive
    integers (ints, integral floats or numpy integers; not booleans), each at most
    `limits.MAX_LENGTH_TOKENS`; with `capacity` given, none may exceed it. Any violation
    raises `ValueError` whose message names the offending prompt index and value.
    The input is never modified.
    """
    if isinstance(lengths, (str, bytes)):
        raise ValueError(f"lengths must be a sequence of integers, got {type(lengths).__name__}")
    try:
        arr = np.asarray(lengths)
    except (ValueError, TypeError) as exc:  # ragged nested input
        raise ValueError(f"lengths must be a flat sequence of integers: {exc}") from None
    if arr.ndim != 1:
        raise ValueError(f"lengths must be a flat sequence of integers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError("lengths is empty: nothing to pack")
    if arr.size > MAX_PROMPTS:
        raise limit_error("number of prompts", arr.size, MAX_PROMPTS, "prompts")
    if arr.dtype == np.bool_:
        raise ValueError(f"prompt 0 has length {arr[0].item()!r}: lengths must be integers, not booleans")
    if arr.dtype.kind in "iuf" and not isinstance(lengths, np.ndarray):
        # numpy turns a True among ints into 1: find it in the caller's own values
        for i, value in enumerate(lengths):
            if isinstance(value, (bool, np.bool_)):
                raise ValueError(f"prompt {i} has length {value!r}: lengths must be integers, not booleans")
    if arr.dtype.kind in "iu":
        _check_max(arr)  # before the cast: a uint64 past 2**63 would wrap negative
        out = arr.astype(np.int64, copy=True)
    elif arr.dtype.kind == "f":
        bad = np.isnan(arr) | (np.isfinite(arr) & (arr != np.floor(arr)))
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(f"prompt {i} has length {arr[i].item()!r}: lengths must be integers")
        _check_max(arr)  # inf included
        bad = arr <= 0  # -inf included, reported as the caller gave it
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(f"prompt {i} has length {arr[i].item()!r}: lengths must be positive")
        out = arr.astype(np.int64)
    else:
        out = np.empty(arr.size, dtype=np.int64)
        # numpy made every value a str/object here: report the caller's own values
        for i, value in enumerate(arr.tolist() if isinstance(lengths, np.ndarray) else lengths):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ValueError(f"prompt {i} has length {value!r}: lengths must be integers")
            as_float = float(value) if not isinstance(value, numbers.Integral) else 0.0
            if math.isnan(as_float) or (math.isfinite(as_float) and not as_float.is_integer()):
                raise ValueError(f"prompt {i} has length {value!r}: lengths must be integers")
            if value <= 0:
                raise ValueError(f"prompt {i} has length {value!r}: lengths must be positive")
            if value > MAX_LENGTH_TOKENS:
                raise limit_error(f"prompt {i}: length", value, MAX_LENGTH_TOKENS, "tokens")
            out[i] = int(value)
    bad = out <= 0
    if bad.any():
        i = _first_bad(bad)
        raise ValueError(f"prompt {i} has length {out[i]}: lengths must be positive")
    if capacity is not None:
        bad = out > capacity
        if bad.any():
            i = _first_bad(bad)
            raise ValueError(
                f"prompt {i} has length {out[i]}, over the capacity {capacity}: "
                "raise the capacity or split/truncate the prompt explicitly"
            )
    return out


def _as_bins(bins: object) -> tuple[tuple[Any, ...], ...]:
    """`bins` as a tuple of tuples, or `ValueError` when it is not an iterable of iterables."""
    try:
        return tuple(map(tuple, bins))  # type: ignore[call-overload]
    except TypeError:
        raise ValueError(f"bins must be a sequence of prompt-index sequences, got {bins!r:.80}") from None


@dataclass(frozen=True)
class Packing:
    """A valid assignment of prompts to packed rows.

    Fields:
      lengths:  tokens of each prompt, in the caller's order (tuple of positive ints).
      capacity: tokens a packed row may hold.
      bins:     one tuple of prompt indices per packed row, in placement order.
      packer:   registry name of the packer that made it.
      meta:     at least `lower_bound` (int, best bound on the bin count),
                `status` ("optimal" | "feasible" | "heuristic") and `solve_time_s`.

    Invariants checked on construction (`ValueError` otherwise): lengths and capacity within
    `packers.limits` (so loads are exact int64 sums), every bin a sequence of int prompt
    indices (no floats, strings or booleans), every prompt index in exactly one bin, no empty
    bin, no bin load over capacity, the meta keys above with 1 <= lower_bound <= num_bins.
    """

    lengths: tuple[int, ...]
    capacity: int
    bins: tuple[tuple[int, ...], ...]
    packer: str
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        capacity = validate_capacity(self.capacity)
        lengths_arr = validate_lengths(self.lengths, capacity)
        object.__setattr__(self, "lengths", tuple(lengths_arr.tolist()))
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "bins", _as_bins(self.bins))
        if not isinstance(self.packer, str):
            raise ValueError(f"packer must be the packer's name (a str), got {self.packer!r}")
        n = lengths_arr.size
        sizes = np.fromiter(map(len, self.bins), dtype=np.int64, count=len(self.bins))
        if sizes.size == 0 or (sizes == 0).any():
            raise ValueError("a packing needs at least one bin and no empty bins")
        if int(sizes.sum()) != n:
            raise ValueError(f"bins hold {int(sizes.sum())} prompt slots for {n} prompts")
        for kind in set(map(type, chain.from_iterable(self.bins))):  # a handful: ints, numpy ints
            if not issubclass(kind, (int, np.integer)) or issubclass(kind, (bool, np.bool_)):
                bad = next(v for v in chain.from_iterable(self.bins) if type(v) is kind)
                raise ValueError(f"bins must hold int prompt indices, got {bad!r} ({kind.__name__})")
        try:
            flat = np.fromiter(chain.from_iterable(self.bins), dtype=np.int64, count=n)
        except OverflowError:
            flat = np.full(1, -1)
        if flat.min() < 0 or flat.max() >= n:
            raise ValueError(f"bins name a prompt index outside 0..{n - 1}")
        counts = np.bincount(flat, minlength=n)
        if (counts != 1).any():
            i = _first_bad(counts != 1)
            raise ValueError(f"prompt {i} appears {counts[i]} times in the bins (must be exactly once)")
        # Exact: every length <= MAX_LENGTH_TOKENS and n <= MAX_PROMPTS keep sums below 2**60.
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        loads = np.add.reduceat(lengths_arr[flat], starts)
        if (loads > capacity).any():
            b = _first_bad(loads > capacity)
            raise ValueError(f"bin {b} holds {loads[b]} tokens, over the capacity {capacity}")
        if not isinstance(self.meta, Mapping):
            raise ValueError(f"packing meta must be a mapping, got {type(self.meta).__name__}")
        meta = dict(self.meta)
        missing = {"lower_bound", "status", "solve_time_s"} - meta.keys()
        if missing:
            raise ValueError(f"packing meta lacks {sorted(missing)}")
        if meta["status"] not in STATUSES:
            raise ValueError(f"meta['status'] must be one of {STATUSES}, got {meta['status']!r}")
        bound = meta["lower_bound"]
        if (
            isinstance(bound, (bool, np.bool_))
            or not isinstance(bound, numbers.Integral)
            or not 1 <= bound <= len(self.bins)
        ):
            raise ValueError(
                f"meta['lower_bound'] must be an int in 1..{len(self.bins)} (the bins of this packing), "
                f"got {bound!r}"
            )
        object.__setattr__(self, "meta", meta)
        object.__setattr__(self, "_loads", tuple(loads.tolist()))

    @property
    def num_prompts(self) -> int:
        return len(self.lengths)

    @property
    def num_bins(self) -> int:
        return len(self.bins)

    @property
    def loads(self) -> tuple[int, ...]:
        """Tokens in each bin, in bin order."""
        return self._loads  # type: ignore[attr-defined]

    @property
    def max_load(self) -> int:
        return max(self._loads)  # type: ignore[attr-defined]

    @property
    def total_tokens(self) -> int:
        return sum(self._loads)  # type: ignore[attr-defined]

    @property
    def padded_tokens(self) -> int:
        """Padding when the rows form one rectangle: num_bins x longest load - real tokens."""
        return self.num_bins * self.max_load - self.total_tokens

    @property
    def efficiency(self) -> float:
        """Real tokens over rectangle tokens (num_bins x longest load); 1.0 means no padding."""
        return self.total_tokens / (self.num_bins * self.max_load)

    @property
    def lower_bound(self) -> int:
        return int(self.meta["lower_bound"])

    @property
    def gap(self) -> float:
        """Relative gap of the bin count to the lower bound: (bins - bound) / bound."""
        return (self.num_bins - self.lower_bound) / self.lower_bound

    def assignment(self) -> np.ndarray:
        """Bin index of each prompt, int64 array of length num_prompts."""
        out = np.empty(self.num_prompts, dtype=np.int64)
        for b, members in enumerate(self.bins):
            out[list(members)] = b
        return out
