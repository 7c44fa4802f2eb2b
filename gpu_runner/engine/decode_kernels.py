"""Decode attention over a paged KV cache: one query token per sequence, with a torch reference.

This module owns the attention of a decode step (`decode_attention`): every batch row holds
one new query token of one sequence, whose keys and values live in fixed-size pages of a
shared pool (`kv_pages.PagedKVCache`). Everything that changes between steps (which
sequence a row is, how long it is, where its pages are) is read from device memory, so one
CUDA graph per batch-size bucket replays every step without re-capture.

Shapes (B = rows of the bucket, P = page_tokens):
  q       [B, Hq, D]           the new tokens' roped queries
  k, v    [pages, P, Hkv, D]   the pool of one layer (keys already roped)
  table   [seqs, max_pages]    int: page ids of each sequence, in order
  seq     [B] int              the sequence (table row) of each batch row
  lengths [B] int              keys each row attends to (its cache length, new token included), >= 1
  -> [B, Hq, D]

On CUDA (or Triton's interpreter, TRITON_INTERPRET=1) it is one Triton kernel, program
(row, query head): an online softmax over the row's pages, one page per loop step, in
float32. Elsewhere the torch reference gathers the pages and runs masked sdpa.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpu_runner.engine.kernels import use_triton

try:  # Triton is optional: CPU-only installs run the torch version.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["decode_attention", "decode_attention_torch"]


def decode_attention_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, seq: torch.Tensor,
    lengths: torch.Tensor, scale: float, num_pages: int | None = None,
) -> torch.Tensor:
    """Reference: gather each row's first `num_pages` pages (default: the table's width), mask
    keys at or past its length, sdpa in the inputs' dtype. Shapes as in the module docstring."""
    b, hq, d = q.shape
    page_tokens, hkv = k.shape[1], k.shape[2]
    pages = table[seq.long(), : num_pages or table.shape[1]].long()  # [B, n]
    n_keys = pages.shape[1] * page_tokens
    kk = k[pages].reshape(b, n_keys, hkv, d).transpose(1, 2)  # [B, Hkv, n, D]
    vv = v[pages].reshape(b, n_keys, hkv, d).transpose(1, 2)
    rep = hq // hkv
    if rep > 1:
        kk, vv = kk.repeat_interleave(rep, dim=1), vv.repeat_interleave(rep, dim=1)
    mask = torch.arange(n_keys, device=q.device)[None, :] < lengths.long()[:, None]  # [B, n]
    out = F.scaled_dot_product_attention(q.unsqueeze(2), kk, vv, attn_mask=mask[:, None, None, :], scale=scale)
    return out.squeeze(2)


if triton is not None:

    @triton.jit
    def _decode_page(q, k_ptr, v_ptr, table_row, start, n, kv_col, qk_scale, m_i, l_i, acc,
                     KW: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr):
        """One page of the online softmax: scores of its keys, rescaled running sums."""
        page = tl.load(table_row + start // PAGE).to(tl.int64)
        offs = tl.arange(0, PAGE)
        valid = (start + offs) < n
        rows = page * PAGE + offs
        d = tl.arange(0, D)
        k = tl.load(k_ptr + rows[:, None] * KW + kv_col + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.sum(k * q[None, :], 1) * qk_scale
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        p = tl.exp2(s - m_new)
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_ptr + rows[:, None] * KW + kv_col + d[None, :], mask=valid[:, None], other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        return m_new, l_i * alpha + tl.sum(p, 0), acc

    @triton.jit
    def _decode_attention_kernel(
        q_ptr, k_ptr, v_ptr, table_ptr, seq_ptr, len_ptr, o_ptr, table_stride, qk_scale,
        HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        """Program (b, h): query head h of row b over the row's pages (scores in log2 units)."""
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        kv_col = (h // (HQ // HKV)) * D
        n = tl.load(len_ptr + b)
        table_row = table_ptr + tl.load(seq_ptr + b).to(tl.int64) * table_stride
        d = tl.arange(0, D)
        q = tl.load(q_ptr + b * (HQ * D) + h * D + d).to(tl.float32)
        # 0-d float32 running max and sum; the first page always holds a key (n >= 1), so the
        # max is finite after it and exp2(-inf - max) = 0 rescales the empty start
        m_i = tl.max(tl.full([PAGE], float("-inf"), tl.float32), 0)
        l_i = tl.sum(tl.zeros([PAGE], dtype=tl.float32), 0)
        acc = tl.zeros([D], dtype=tl.float32)
        if INTERPRET:  # Triton's CPU interpreter cannot run a for loop with run-time bounds
            start = 0
            while start < n:
                m_i, l_i, acc = _decode_page(q, k_ptr, v_ptr, table_row, start, n, kv_col, qk_scale, m_i, l_i, acc,
                                             HKV * D, D, PAGE)
                start += PAGE
        else:
            for start in range(0, n, PAGE):
                m_i, l_i, acc = _decode_page(q, k_ptr, v_ptr, table_row, start, n, kv_col, qk_scale, m_i, l_i, acc,
                                             HKV * D, D, PAGE)
        tl.store(o_ptr + b * (HQ * D) + h * D + d, (acc / l_i).to(o_ptr.dtype.element_ty))


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, seq: torch.Tensor,
    lengths: torch.Tensor, scale: float, *, num_pages: int | None = None, num_warps: int = 4,
) -> torch.Tensor:
    """Attention of each row's one query token over its sequence's cached keys (paged).

    Shapes in the module docstring; q, k, v contiguous; every length >= 1 and at most
    pages-in-table x page_tokens (not checked on the device: that would sync). `num_pages`
    bounds the pages the torch path gathers (the kernel reads lengths, so ignores it).
    Triton path: head_dim and page_tokens powers of two.
    ValueError for inconsistent shapes.
    """
    b, hq, d = q.shape
    if k.dim() != 4 or k.shape != v.shape or k.shape[3] != d or hq % k.shape[2]:
        raise ValueError(f"decode_attention needs q [B, Hq, D] and k, v [pages, P, Hkv, D] with Hkv dividing Hq, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if seq.shape != (b,) or lengths.shape != (b,) or table.dim() != 2:
        raise ValueError(f"decode_attention needs seq and lengths [B] and a 2D table, got {tuple(seq.shape)}, "
                         f"{tuple(lengths.shape)}, {tuple(table.shape)}")
    if not use_triton(q):
        return decode_attention_torch(q, k, v, table, seq, lengths, scale, num_pages)
    page = k.shape[1]
    if d & (d - 1) or page & (page - 1):
        raise ValueError(f"the decode kernel needs head_dim and page_tokens powers of two, got {d} and {page}")
    out = torch.empty_like(q)
    _decode_attention_kernel[(b, hq)](
        q, k, v, table, seq, lengths, out, table.stride(0), scale * 1.4426950408889634,
        HQ=hq, HKV=k.shape[2], D=d, PAGE=page, INTERPRET=not q.is_cuda, num_warps=num_warps,
    )
    return out
