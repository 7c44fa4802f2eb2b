"""Attention backends as the model sees them: what each computes, stores and costs per row.

One registry, `ATTENTION`, maps a name to a frozen dataclass whose fields are the backend's
calibrated constants (see simulator/CALIBRATION.md); `make_attention(name, **overrides)`
builds one. The cost model asks a backend four questions about a `RowLayout`:

- `row_tokens(layout)`: tokens each row pushes through the linear layers,
- `pairs_per_row(layout)`: query-key pairs the kernel computes per row and head,
- `score_elements_per_row(layout)`: score-matrix elements it materializes per head (0 for
  fused kernels),
- `mask_bytes(layout)`: bytes of the mask (or its metadata) it needs.

Backends:
  dense   4D block-diagonal causal mask with sdpa: the full W^2 per row (W = row width =
          longest row), scores materialized, a W x W bool mask per row.
  padded  what HF does with a padded batch (one prompt per row, 2D padding mask expanded
          to 4D): costed like dense; a row holding several prompts is a ValueError.
  flex    FlexAttention: only the 128x128 tiles the per-prompt causal triangles touch
          (boundary tiles included, padding tiles skipped), block-mask metadata only.
  varlen  flash varlen: sum of l(l+1)/2 pairs (no padding, no cross-prompt pairs) and, by
          default, no row padding either (the rows are run ragged / concatenated, so the
          packer changes nothing: `simulate` reports varlen once, as the flat batch).
          `make_attention("varlen", pad_rows=True)` prices gpu_runner's varlen backend on
          packed rows, whose linear layers run the padded R x W rectangle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from simulator import names
from simulator.layout import RowLayout
from simulator.lookup import build

__all__ = [
    "ATTENTION",
    "AttentionCost",
    "DenseAttention",
    "FlexAttention",
    "PaddedAttention",
    "VarlenAttention",
    "available_attention",
    "make_attention",
]

ATTENTION: dict[str, type["AttentionCost"]] = {}


def _register(cls: type["AttentionCost"]) -> type["AttentionCost"]:
    ATTENTION[cls.name] = cls
    return cls


@dataclass(frozen=True)
class AttentionCost:
    """Base: calibrated constants shared by every backend.

    attention_efficiency: achieved fraction of peak FLOP/s on the attention matmuls.
    layer_overhead_s: fixed seconds per layer per forward (kernel launches, Python, mask
                      building), independent of the batch.
    score_traffic_passes: HBM passes over a materialized score matrix (write, mask, softmax,
                          read) that cost bandwidth time; 0 for fused kernels.
    score_copies: score-sized buffers alive at the peak; 0 for fused kernels.
    """

    name: ClassVar[str] = ""
    materializes_scores: ClassVar[bool] = False
    attention_efficiency: float = 0.5
    layer_overhead_s: float = 5e-4
    score_traffic_passes: float = 0.0
    score_copies: float = 0.0

    def __post_init__(self) -> None:
        if not 0 < self.attention_efficiency <= 1:
            raise ValueError(f"attention_efficiency must be in (0, 1], got {self.attention_efficiency!r}")
        for attr in ("layer_overhead_s", "score_traffic_passes", "score_copies"):
            if not getattr(self, attr) >= 0:
                raise ValueError(f"{attr} must be >= 0, got {getattr(self, attr)!r}")

    def check(self, layout: RowLayout) -> None:
        """Raise `ValueError` when this backend cannot run the layout."""

    def row_tokens(self, layout: RowLayout) -> np.ndarray:
        """Rectangle backends run every row at the full width W: (R,) int64 of W."""
        return np.full(layout.num_rows, layout.width_tokens, dtype=np.int64)

    def pairs_per_row(self, layout: RowLayout) -> np.ndarray:
        """(R,) float64 query-key pairs per head (float64: W**2 of a wide row would wrap int64)."""
        raise NotImplementedError

    def score_elements_per_row(self, layout: RowLayout) -> np.ndarray:
        """(R,) float64 score elements materialized per head."""
        if not self.materializes_scores:
            return np.zeros(layout.num_rows, dtype=np.float64)
        return np.full(layout.num_rows, float(layout.width_tokens) ** 2)

    def mask_bytes(self, layout: RowLayout) -> int:
        raise NotImplementedError


@_register
@dataclass(frozen=True)
class DenseAttention(AttentionCost):
    """sdpa with a 4D bool block-diagonal mask: pairs = W^2 per row, mask = R * W^2 bytes."""

    name: ClassVar[str] = names.DENSE
    materializes_scores: ClassVar[bool] = True
    # fitted on the H100 anchors + the GPU runner's H100 sweep (CALIBRATION.md); padded shares these
    attention_efficiency: float = 0.422
    layer_overhead_s: float = 4.25e-4
    score_traffic_passes: float = 4.72
    score_copies: float = 0.0  # the anchors' memory shows no materialized score matrix

    def pairs_per_row(self, layout: RowLayout) -> np.ndarray:
        return np.full(layout.num_rows, float(layout.width_tokens) ** 2)

    def mask_bytes(self, layout: RowLayout) -> int:
        return layout.num_rows * layout.width_tokens**2


@_register
@dataclass(frozen=True)
class PaddedAttention(DenseAttention):
    """HF's padded batch: like dense, but only one prompt per row is allowed."""

    name: ClassVar[str] = names.PADDED

    def check(self, layout: RowLayout) -> None:
        if layout.num_prompts != layout.num_rows:
            raise ValueError(
                "attention 'padded' needs one prompt per row (the 'pad' packer); "
                "use 'dense', 'flex' or 'varlen' for packed rows"
            )


@_register
@dataclass(frozen=True)
class FlexAttention(AttentionCost):
    """FlexAttention: pairs = block^2 x touched tiles; mask = BlockMask int32 metadata,
    4 tables (kv/q x partial/full) of T + T^2 entries per row, T = ceil(W / block)."""

    name: ClassVar[str] = names.FLEX
    block_tokens: int = 128
    attention_efficiency: float = 0.35  # a prior, not fitted (see CALIBRATION.md)
    layer_overhead_s: float = 9.92e-4

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.block_tokens, bool) or not isinstance(self.block_tokens, int) or self.block_tokens <= 0:
            raise ValueError(f"block_tokens must be a positive integer, got {self.block_tokens!r}")

    def pairs_per_row(self, layout: RowLayout) -> np.ndarray:
        return layout.touched_tiles_per_row(self.block_tokens) * float(self.block_tokens) ** 2

    def mask_bytes(self, layout: RowLayout) -> int:
        t = -(-layout.width_tokens // self.block_tokens)
        return 4 * 4 * layout.num_rows * (t + t * t)


@_register
@dataclass(frozen=True)
class VarlenAttention(AttentionCost):
    """Flash varlen: pairs = sum l(l+1)/2, mask = cu_seqlens, (n + 1) int32; tokens = the
    real load of each row (ragged rows), or R x W with pad_rows=True (rows padded to W for
    the linear layers, as gpu_runner's varlen backend runs packed rows)."""

    name: ClassVar[str] = names.VARLEN
    attention_efficiency: float = 0.35  # a prior, not fitted (see CALIBRATION.md)
    layer_overhead_s: float = 5.19e-4
    pad_rows: bool = False

    def row_tokens(self, layout: RowLayout) -> np.ndarray:
        return super().row_tokens(layout) if self.pad_rows else layout.loads_tokens.copy()

    def pairs_per_row(self, layout: RowLayout) -> np.ndarray:
        return layout.causal_pairs_per_row()

    def mask_bytes(self, layout: RowLayout) -> int:
        return 4 * (layout.num_prompts + 1)


def available_attention() -> list[str]:
    return list(ATTENTION)


def make_attention(name: str | AttentionCost, **overrides: Any) -> AttentionCost:
    """Build a backend by name with its calibrated defaults (or `overrides`); an instance
    passes through. Unknown names raise `ValueError` listing the known ones."""
    if isinstance(name, AttentionCost):
        return name
    return build(ATTENTION, name, "attention backend", **overrides)
