"""Packed model inputs: token ids, restarted position ids and segment ids for a `Packing`.

This module owns the layout of prompts inside packed rows. Everything is built with
numpy index arithmetic (no Python loop over tokens) and moved to the device once.

Layout of row r (length `row_len`): the prompts of `packing.bins[r]` back to back in
placement order, then padding. For every token: `position_ids` restarts at each prompt's
first token, numbered as the prompt alone would be (`gpu_runner.positions`: 0, 1, 2, ...
for most models); `segment_ids` is the caller's prompt index, or -1 on padding. Padding
tokens get position 0 and `pad_token_id`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from gpu_runner.windows import WindowLayout
from gpu_runner.positions import PLAIN, PositionRule
from packers import Packing

__all__ = ["PackedInputs", "pack_inputs", "prompt_lengths"]


@dataclass(frozen=True)
class PackedInputs:
    """Packed tensors for one forward pass, plus where each prompt landed.

    Shapes (R = rows, L = row_len, N = prompts):
      input_ids, position_ids, segment_ids: int64 [R, L]
      row_of, start_of, lengths:            int64 [N], caller's prompt order
      last_index:                           int64 [N], flat index (r * L + offset) of each
                                            prompt's last token in the [R * L] token stream
      cu_seqlens:                           int32 [S + 1], boundaries of the S segments
                                            (prompts and per-row padding runs) in the
                                            flattened [R * L] stream, for varlen kernels
      max_seqlen:                           longest segment, tokens
      windows:                              the model's local attention, when a prompt is
                                            longer than its smallest window (masks follow it)
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    segment_ids: torch.Tensor
    row_of: torch.Tensor
    start_of: torch.Tensor
    lengths: torch.Tensor
    last_index: torch.Tensor
    cu_seqlens: torch.Tensor
    max_seqlen: int
    windows: WindowLayout | None = None

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape != self.position_ids.shape:
            raise ValueError("input_ids and position_ids must both be [rows, row_len]")
        if self.segment_ids.shape != self.input_ids.shape:
            raise ValueError("segment_ids must be [rows, row_len]")

    @property
    def num_rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def row_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_prompts(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def num_real_tokens(self) -> int:
        return int(self.lengths.sum())


def prompt_lengths(prompts: Sequence[Sequence[int]]) -> list[int]:
    """Token count of each prompt; `ValueError` for an empty list or an empty prompt."""
    if len(prompts) == 0:
        raise ValueError("prompts is empty: nothing to prefill")
    lengths = [len(p) for p in prompts]
    for i, n in enumerate(lengths):
        if n == 0:
            raise ValueError(f"prompt {i} is empty: every prompt needs at least one token")
    return lengths


def pack_inputs(
    prompts: Sequence[Sequence[int]],
    packing: Packing,
    *,
    row_len: int | None = None,
    num_rows: int | None = None,
    pad_token_id: int = 0,
    device: torch.device | str | None = None,
    positions: PositionRule = PLAIN,
    windows: WindowLayout | None = None,
) -> PackedInputs:
    """Lay `prompts` (token-id lists, caller's order) out in packed rows as `packing` says.

    row_len:  tokens per row; default the longest bin load. A fixed value (e.g. the
              packing's capacity) keeps shapes static across batches.
    num_rows: rows; default the number of bins. Extra rows are all padding (static shapes).
    positions: how each prompt's tokens are numbered (`positions.forward_rule(model)`).
    windows:  local attention the backends' masks apply (`gpu_runner.windows.window_layout`).
    Raises `ValueError` if the prompts do not match `packing.lengths`, or if row_len /
    num_rows are too small for the packing.
    """
    lengths_list = prompt_lengths(prompts)
    if tuple(lengths_list) != packing.lengths:
        bad = next(
            (i for i, (a, b) in enumerate(zip(lengths_list, packing.lengths)) if a != b),
            min(len(lengths_list), len(packing.lengths)),
        )
        raise ValueError(
            f"packing does not match the prompts: {len(lengths_list)} prompts vs "
            f"{len(packing.lengths)} packed lengths, first difference at prompt {bad}"
        )
    row_len = packing.max_load if row_len is None else int(row_len)
    num_rows = packing.num_bins if num_rows is None else int(num_rows)
    if row_len < packing.max_load:
        raise ValueError(f"row_len {row_len} is shorter than the fullest bin ({packing.max_load} tokens)")
    if num_rows < packing.num_bins:
        raise ValueError(f"num_rows {num_rows} is fewer than the packing's {packing.num_bins} bins")

    lengths = np.asarray(lengths_list, dtype=np.int64)
    n = lengths.size
    # Row and offset of each prompt: walk bins in placement order (loop over bins only).
    order = np.fromiter(chain.from_iterable(packing.bins), dtype=np.int64, count=n)
    bin_sizes = np.fromiter(map(len, packing.bins), dtype=np.int64, count=packing.num_bins)
    row_of_ordered = np.repeat(np.arange(packing.num_bins, dtype=np.int64), bin_sizes)
    len_ordered = lengths[order]
    csum = np.cumsum(len_ordered) - len_ordered  # tokens before each prompt, globally
    bin_first = np.concatenate(([0], np.cumsum(bin_sizes)[:-1]))
    start_ordered = csum - np.repeat(csum[bin_first], bin_sizes)
    row_of = np.empty(n, dtype=np.int64)
    start_of = np.empty(n, dtype=np.int64)
    row_of[order] = row_of_ordered
    start_of[order] = start_ordered

    # Token-level scatter in caller order.
    total = int(lengths.sum())
    tokens = np.fromiter(chain.from_iterable(prompts), dtype=np.int64, count=total)
    prompt_first = np.cumsum(lengths) - lengths
    within = np.arange(total, dtype=np.int64) - np.repeat(prompt_first, lengths)
    dest = np.repeat(row_of * row_len + start_of, lengths) + within

    flat_ids = np.full(num_rows * row_len, pad_token_id, dtype=np.int64)
    flat_pos = np.zeros(num_rows * row_len, dtype=np.int64)
    flat_seg = np.full(num_rows * row_len, -1, dtype=np.int64)
    flat_ids[dest] = tokens
    flat_pos[dest] = within if positions.plain else positions.positions(tokens, lengths)
    flat_seg[dest] = np.repeat(np.arange(n, dtype=np.int64), lengths)
    last_index = row_of * row_len + start_of + lengths - 1

    # Segment boundaries in the flat stream: a new segment starts wherever segment id
    # changes or a row starts.
    starts = np.ones(num_rows * row_len, dtype=bool)
    starts[1:] = flat_seg[1:] != flat_seg[:-1]
    starts[::row_len] = True
    bounds = np.concatenate((np.flatnonzero(starts), [num_rows * row_len]))
    max_seqlen = int(np.diff(bounds).max())

    def to(x: np.ndarray, dtype: torch.dtype = torch.int64) -> torch.Tensor:
        return torch.from_numpy(x).to(device=device, dtype=dtype)

    shape = (num_rows, row_len)
    return PackedInputs(
        input_ids=to(flat_ids.reshape(shape)),
        position_ids=to(flat_pos.reshape(shape)),
        segment_ids=to(flat_seg.reshape(shape)),
        row_of=to(row_of),
        start_of=to(start_of),
        lengths=to(lengths),
        last_index=to(last_index),
        cu_seqlens=to(bounds, torch.int32),
        max_seqlen=max_seqlen,
        windows=windows,
    )
