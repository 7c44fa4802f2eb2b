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

__all__ = ["PadPacker"]


@register("pad")
@dataclass(frozen=True)
class PadPacker(BasePacker):
    """One prompt per row, in the caller's order (the padded baseline)."""

    def _assign(self, lengths: np.ndarray, capacity: int) -> tuple[list[list[int]], dict[str, Any]]:
        return [[i] for i in range(lengths.size)], {}
