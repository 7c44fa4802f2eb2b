"""The `dense` backend: the paper's method, a 4D bool block-diagonal causal mask
[R, 1, L, L] (attention/masks.py) under transformers' `sdpa`; runs anywhere."""

from __future__ import annotations

from typing import Any

import torch

from gpu_runner.attention.masks import dense_block_causal_mask, packed_masks
from gpu_runner.attention.registry import AttentionBackend, register_backend
from gpu_runner.inputs import PackedInputs
from simulator.names import DENSE as _NAME

__all__ = ["DENSE", "cpu_scores_bytes"]


def runs_anywhere(device: torch.device, dtype: torch.dtype) -> str | None:
    """`unavailable` of a backend with no device or dtype requirement."""
    return None


def cpu_scores_bytes(num_rows: int, row_len: int, q_heads: int, device: torch.device) -> int:
    """Scores that CPU sdpa (and eager flex) materialize: rows x heads x L^2 fp32; 0 elsewhere."""
    return num_rows * q_heads * row_len * row_len * 4 if device.type == "cpu" else 0


def _dense_kwargs(inputs: PackedInputs) -> dict[str, Any]:
    return {"attention_mask": packed_masks(inputs.segment_ids, inputs.windows, dense_block_causal_mask)}


def _dense_extra_bytes(num_rows: int, row_len: int, q_heads: int, device: torch.device) -> int:
    """The bool mask, R * L^2 bytes, plus CPU sdpa's scores (a windowed forward holds one
    mask per layer type: two or three; priced as one, see `plan`)."""
    return num_rows * row_len * row_len + cpu_scores_bytes(num_rows, row_len, q_heads, device)


DENSE = register_backend(
    AttentionBackend(
        name=_NAME,
        attn_implementation="sdpa",
        forward_kwargs=_dense_kwargs,
        unavailable=runs_anywhere,
        description="4D bool block-diagonal causal mask with sdpa (the paper's method)",
        extra_bytes=_dense_extra_bytes,
    )
)
