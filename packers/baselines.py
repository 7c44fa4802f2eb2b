"""Baselines that do not pack: the padded batch and the length-sorted padded batch.

`pad` is what HF does by default: one prompt per row, every row padded to the longest
prompt. It is a packer like any other so that padded-vs-packed comparisons go row for row
through the same cost model and runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from packers.base import BasePacker
from packers.registry import register

__all__ = ["PadPacker", "SortedPadPacker"]


@register("pad")
@dataclass(frozen=True)
class PadPacker(BasePacker):
    """One prompt per row, in the caller's order (the padded baseline)."""

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        return [[i] for i in range(lengths.size)], {}


@register("sorted")
@dataclass(frozen=True)
class SortedPadPacker(BasePacker):
    """One prompt per row, longest first (ties by index): the length-sorted padded batch.

    Same rows and padding as `pad` as one rectangle; the order is what matters to a
    consumer that cuts the rows into micro-batches of similar length.
    """

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        order = np.argsort(-lengths, kind="stable")
        return [[i] for i in order.tolist()], {}
