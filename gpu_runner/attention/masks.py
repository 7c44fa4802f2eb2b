"""Attention structure of packed rows: the dense block-diagonal causal mask and the
FlexAttention `BlockMask`, both built from `PackedInputs.segment_ids` with tensor ops only.

Rule for both: token q of a row may attend to token k of the same row iff
`segment_ids[q] == segment_ids[k]` and `k <= q`. Padding (segment -1) therefore attends only
to earlier padding of its row: harmless, and it keeps every softmax row non-empty.
"""

from __future__ import annotations

import torch

__all__ = ["dense_block_causal_mask", "document_causal_mask_mod", "flex_block_mask"]


def _check_segments(segment_ids: torch.Tensor) -> None:
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be [rows, row_len], got shape {tuple(segment_ids.shape)}")


def dense_block_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Boolean mask [R, 1, L, L] (True = may attend) for `segment_ids` [R, L].

    This is the paper's mask. transformers 5.x passes a 4D `attention_mask` to the attention
    function unchanged (`masking_utils._preprocess_mask_arguments`), and sdpa reads a bool
    mask as "True = keep". Memory: R * L * L bytes.
    """
    _check_segments(segment_ids)
    length = segment_ids.shape[1]
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=segment_ids.device).tril_()
    return (same & causal).unsqueeze(1)


def document_causal_mask_mod(segment_ids: torch.Tensor):
    """FlexAttention `mask_mod(b, h, q, kv)` for `segment_ids` [R, L] (same rule as above)."""
    _check_segments(segment_ids)

    def mask_mod(b, h, q_idx, kv_idx):
        return (segment_ids[b, q_idx] == segment_ids[b, kv_idx]) & (kv_idx <= q_idx)

    return mask_mod


def flex_block_mask(segment_ids: torch.Tensor, *, block_size: int = 128):
    """FlexAttention `BlockMask` of shape (R, 1, L, L) for `segment_ids` [R, L].

    Built with `torch.nn.attention.flex_attention.create_block_mask` on the segment ids'
    device; tiles of `block_size` x `block_size` that no pair of tokens shares are skipped
    by the kernel, so cost follows the touched tiles, not L^2.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    _check_segments(segment_ids)
    rows, length = segment_ids.shape
    return create_block_mask(
        document_causal_mask_mod(segment_ids),
        B=rows,
        H=None,
        Q_LEN=length,
        KV_LEN=length,
        device=segment_ids.device,
        BLOCK_SIZE=block_size,
    )
