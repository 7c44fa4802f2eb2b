"""Capacity (tokens per packed row) as a choice: `max`, a fixed integer, or `auto`.

`auto` packs the batch at each candidate capacity and keeps the one with the lowest modeled
time among those that fit the memory budget (fewest forwards first). Every candidate is
packed and costed because FFD and friends are not monotone in the capacity.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from packers import Packer, Packing, checked_pack
from packers.limits import check_capacity_tokens
from simulator.cost import CostModel, PackingCost
from simulator.layout import RowLayout

__all__ = ["CapacityChoice", "capacity_candidates", "choose_capacity", "parse_capacity"]

CapacitySpec = str | int
# Multiples of the longest prompt tried by `auto`, rounded up to a multiple of 128 tokens.
AUTO_FACTORS = (1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0, 32.0)
ROUND_TOKENS = 128


def parse_capacity(spec: CapacitySpec) -> CapacitySpec:
    """Normalize 'max' | 'auto' | positive int (or its decimal string) at most
    `packers.limits.MAX_CAPACITY_TOKENS`; `ValueError` otherwise."""
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text in ("max", "auto"):
            return text
        if text.isascii() and text.isdigit() and int(text) > 0:
            return check_capacity_tokens(int(text))
    elif isinstance(spec, (int, np.integer)) and not isinstance(spec, bool) and spec > 0:
        return check_capacity_tokens(int(spec))
    raise ValueError(f"capacity must be 'max', 'auto' or a positive integer, got {spec!r}")


def capacity_candidates(lengths: np.ndarray) -> list[int]:
    """max(lengths), then max(lengths) * AUTO_FACTORS rounded up to a multiple of 128, capped
    at sum(lengths) (one row holding everything), which is always a candidate."""
    longest, total = int(lengths.max()), int(lengths.sum())
    cands = {longest, total}
    for f in AUTO_FACTORS[1:]:
        c = -(-int(np.ceil(longest * f)) // ROUND_TOKENS) * ROUND_TOKENS
        cands.add(min(max(c, longest), total))
    return sorted(cands)


@dataclass(frozen=True)
class CapacityChoice:
    """The chosen capacity for one (batch, packer, backend), with its packing and cost."""

    capacity: int
    packing: Packing
    cost: PackingCost


def _key(cost: PackingCost) -> tuple[float, float]:
    return (cost.forwards if cost.forwards is not None else np.inf, cost.est_time_s)


def choose_capacity(
    lengths: np.ndarray,
    packer: Packer,
    cost_models: Sequence[CostModel],
    capacity: CapacitySpec,
) -> list[CapacityChoice]:
    """For each cost model (one per backend) return the `CapacityChoice`.

    'max' and an integer pack once; 'auto' packs once per candidate of
    `capacity_candidates(lengths)` and, per backend, keeps the fitting candidate with the
    lowest est_time_s (fewest forwards first, ties to the smaller capacity). Every packing
    goes through `packers.checked_pack`: a packer that fails or returns anything but a valid
    `Packing` of these lengths at this capacity raises `ValueError` / `TypeError` naming it."""
    spec = parse_capacity(capacity)
    if spec == "auto":
        candidates = capacity_candidates(lengths)
    elif spec == "max":
        candidates = [int(lengths.max())]
    else:
        candidates = [int(spec)]
    best: list[CapacityChoice | None] = [None] * len(cost_models)
    for cap in candidates:
        packing = checked_pack(packer, lengths, cap)  # plug-ins included: nothing unchecked is priced
        layout = RowLayout.from_packing(packing)  # shared by every backend
        for i, model in enumerate(cost_models):
            cost = model.cost(packing, layout)
            current = best[i]
            if current is None or _key(cost) < _key(current.cost):
                best[i] = CapacityChoice(cap, packing, cost)
    return [b for b in best if b is not None]
