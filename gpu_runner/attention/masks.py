"""Attention structure of packed rows: the dense block-diagonal causal mask and the
FlexAttention `BlockMask`, both built from `PackedInputs.segment_ids` with tensor ops only.

Rule for both: token q of a row may attend to token k of the same row iff
`segment_ids[q] == segment_ids[k]` and `k <= q`. Padding (segment -1) therefore attends only
to earlier padding of its row: harmless, and it keeps every softmax row non-empty.
With a `LocalSpan` (gpu_runner/windows.py) also: `q - k < size` (sliding) or the same
size-token chunk of the prompt (chunked), as HF masks the prompt alone. `packed_masks`
gives the mask (or the dict of masks keyed by layer type) a windowed forward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gpu_runner.windows import LocalSpan, WindowLayout

__all__ = [
    "dense_block_causal_mask",
    "document_causal_mask_mod",
    "flex_block_mask",
    "packed_masks",
    "prompt_offsets",
]


def _check_segments(segment_ids: torch.Tensor) -> None:
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be [rows, row_len], got shape {tuple(segment_ids.shape)}")


def prompt_offsets(segment_ids: torch.Tensor) -> torch.Tensor:
    """Each token's index within its own segment (prompt or padding run), int64 [R, L]."""
    _check_segments(segment_ids)
    length = segment_ids.shape[1]
    index = torch.arange(length, device=segment_ids.device).expand_as(segment_ids)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = torch.cummax(torch.where(starts, index, torch.zeros_like(index)), dim=1).values
    return index - first


def _local(span: LocalSpan, off_q: torch.Tensor, off_k: torch.Tensor) -> torch.Tensor:
    """The span's rule for offsets within one prompt (k <= q and same prompt checked apart)."""
    if span.kind == "sliding":
        return off_q - off_k < span.size
    return torch.div(off_q, span.size, rounding_mode="floor") == torch.div(off_k, span.size, rounding_mode="floor")


def dense_block_causal_mask(segment_ids: torch.Tensor, span: LocalSpan | None = None) -> torch.Tensor:
    """Boolean mask [R, 1, L, L] (True = may attend) for `segment_ids` [R, L] (and `span`).

    This is the paper's mask. transformers 5.x passes a 4D `attention_mask` to the attention
    function unchanged (`masking_utils._preprocess_mask_arguments`), and sdpa reads a bool
    mask as "True = keep". Memory: R * L * L bytes.
    """
    _check_segments(segment_ids)
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril_()
    mask = same & causal
    if span is not None:
        offsets = prompt_offsets(segment_ids)
        mask &= _local(span, offsets[:, :, None], offsets[:, None, :])
    return mask.unsqueeze(1)


def document_causal_mask_mod(segment_ids: torch.Tensor, span: LocalSpan | None = None):
    """FlexAttention `mask_mod(b, h, q, kv)` for `segment_ids` [R, L] (same rule as above)."""
    _check_segments(segment_ids)
    offsets = prompt_offsets(segment_ids) if span is not None else None

    def mask_mod(b, h, q_idx, kv_idx):
        keep = (segment_ids[b, q_idx] == segment_ids[b, kv_idx]) & (kv_idx <= q_idx)
        if offsets is not None:
            keep = keep & _local(span, offsets[b, q_idx], offsets[b, kv_idx])
        return keep

    return mask_mod


def packed_masks(
    segment_ids: torch.Tensor, windows: WindowLayout | None, build: Callable[..., Any]
) -> Any:
    """`build(segment_ids)` (a mask for every layer), or with `windows` `build(segment_ids,
    span)` per layer type: a dict {layer type: mask} for a keyed layout, else the one mask.
    `build` is `dense_block_causal_mask` or `flex_block_mask`."""
    if windows is None:
        return build(segment_ids)
    masks = {kind: build(segment_ids, span) for kind, span in windows.spans}
    return masks if windows.keyed else next(iter(masks.values()))


def flex_block_mask(segment_ids: torch.Tensor, span: LocalSpan | None = None, *, block_size: int = 128):
    """FlexAttention `BlockMask` of shape (R, 1, L, L) for `segment_ids` [R, L].

    Built with `torch.nn.attention.flex_attention.create_block_mask` on the segment ids'
    device; tiles of `block_size` x `block_size` that no pair of tokens shares are skipped
    by the kernel, so cost follows the touched tiles, not L^2.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    _check_segments(segment_ids)
    rows, length = segment_ids.shape
    return create_block_mask(
        document_causal_mask_mod(segment_ids, span),
        B=rows,
        H=None,
        Q_LEN=length,
        KV_LEN=length,
        device=segment_ids.device,
        BLOCK_SIZE=block_size,
    )
