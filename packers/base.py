"""The packer interface (`Packer` protocol) and `BasePacker`, the template most packers use.

A packer is a frozen dataclass whose fields are its hyperparameters only; `pack()` does the
work and keeps no state between calls, so `dataclasses.asdict(packer)` is the exact record
of what ran and two calls with the same input return equal packings.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Sequence, runtime_checkable

import numpy as np

from packers.bounds import lower_bound
from packers.packing import Packing, validate_capacity, validate_lengths

__all__ = ["Packer", "BasePacker", "bins_from_assignment"]


@runtime_checkable
class Packer(Protocol):
    """Contract every packer honours.

    `pack(lengths, capacity)`:
      - lengths: token count of each prompt (positive ints, caller's order); not mutated.
      - capacity: tokens one packed row may hold (positive int).
      - returns a `Packing` over exactly these lengths and capacity with `packer` set to the
        registry name and `meta` holding `lower_bound`, `status`, `solve_time_s`.
      - raises `ValueError` naming the prompt index and value for empty input, non-integer,
        NaN, zero or negative lengths, a length over capacity, or capacity <= 0.
      - deterministic: the same input gives the same packing.
    """

    name: ClassVar[str]

    def pack(self, lengths: Sequence[int] | np.ndarray, capacity: int) -> Packing: ...


def bins_from_assignment(order: np.ndarray, bin_of: np.ndarray) -> list[tuple[int, ...]]:
    """Group prompt indices into bins.

    order:  prompt indices in placement order (int array, a permutation of 0..n-1).
    bin_of: bin id (0..B-1, dense) of each entry of `order`, same length.
    Returns B tuples of prompt indices (Python ints), each in placement order: tuples, as
    `Packing.bins` holds them, so the packing takes them without a copy. O(n log n), no
    Python loop over prompts.
    """
    order = np.asarray(order, dtype=np.int64)
    bin_of = np.asarray(bin_of, dtype=np.int64)
    perm = np.argsort(bin_of, kind="stable")
    grouped = tuple(order[perm].tolist())
    counts = np.bincount(bin_of)
    bounds = np.concatenate(([0], np.cumsum(counts))).tolist()
    return [grouped[bounds[b] : bounds[b + 1]] for b in range(len(counts))]


@dataclass(frozen=True)
class BasePacker:
    """Validates input, times the work, computes the lower bound and builds the `Packing`.

    Subclasses set `name` and implement `_assign(lengths, capacity) -> (bins, meta)`, where
    `lengths` is a validated int64 array (never to be modified), `bins` a list of prompt
    index sequences, and `meta` any extra facts (e.g. `status` when not "heuristic").
    """

    name: ClassVar[str] = ""

    def pack(self, lengths: Sequence[int] | np.ndarray, capacity: int) -> Packing:
        capacity = validate_capacity(capacity)
        arr = validate_lengths(lengths, capacity)
        arr.setflags(write=False)
        # Bins are acyclic lists/tuples of ints: cyclic-GC passes triggered while a million
        # of them are built find nothing and cost up to half of a large pack().
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            start = time.perf_counter()
            bins, extra = self._assign(arr, capacity)
            solve_time_s = time.perf_counter() - start
            meta: dict[str, Any] = {
                "lower_bound": extra.pop("lower_bound", None) or lower_bound(arr, capacity),
                "status": "heuristic",
                "solve_time_s": solve_time_s,
            }
            meta.update(extra)
            if meta["status"] == "heuristic" and len(bins) == meta["lower_bound"]:
                meta["status"] = "optimal"  # meeting the lower bound is a certificate
            return Packing(lengths=arr, capacity=capacity, bins=bins, packer=self.name, meta=meta)
        finally:
            if gc_was_enabled:
                gc.enable()

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        raise NotImplementedError
