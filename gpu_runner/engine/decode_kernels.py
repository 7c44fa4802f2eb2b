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

On CUDA (or Triton's interpreter, TRITON_INTERPRET=1) two Triton kernels exist:
  split (the default, "flash-decoding"): program (row, KV head, split s of S): the query heads
    of one KV head together as a [G, D] tile (padded to 16 rows) against 64-key (at least 16)
    tiles of the row's pages: QK^T and PV are tl.dot (tensor cores for 16-bit inputs, fp32
    accumulation, exact fp32 products for fp32 inputs), online softmax in float32 over split
    s's share of the row's pages (ceil(pages / S) pages each: lengths live on the device, so
    S is static and a split past the row's end does no work). With S > 1 each split writes
    its (max, sum, unnormalised output) to fp32 scratch and a reduce kernel, program (row,
    query head), combines them; with S = 1 the split kernel writes the output itself.
    S (`decode_splits`): the fewest powers of two with rows x KV heads x S >= 4 x the SMs
    (one wave of small programs hides the page loads' latency), at most the table's width.
  head (the first kernel: the baseline benchmarks/tools/decode_profile.py compares against,
    and the kernel for head_dim < 16): program (row, query head), one page per loop step,
    fp32 broadcasts.
Both pad the head dim to the next power of two with masks (Phi-3's 96, 80, 112, ...: no cost
for powers of two) and take an optional Gemma-2 score soft-cap (`softcap`, a constexpr: off
compiles it out). Elsewhere the torch reference gathers the pages and runs masked sdpa.
"""

from __future__ import annotations

import torch

from gpu_runner.engine.kernels import use_triton
from gpu_runner.engine.reference import capped_attention_torch

try:  # Triton is optional: CPU-only installs run the torch version.
    import triton
    import triton.language as tl

    # the jit helpers shared with the prefill kernels: head-dim padding, soft-cap
    from gpu_runner.engine.kernels import _dim_mask, _soft_cap
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["KERNELS", "decode_attention", "decode_attention_torch", "decode_splits"]

KERNELS = ("split", "head")
_WAVES = 4  # the split rule: rows x KV heads x splits >= _WAVES x SMs
_CPU_SMS = 4  # stands in for the SM count under the interpreter (tests)


def decode_attention_torch(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, seq: torch.Tensor,
    lengths: torch.Tensor, scale: float, num_pages: int | None = None, softcap: float = 0.0,
) -> torch.Tensor:
    """Reference: gather each row's first `num_pages` pages (default: the table's width), mask
    keys at or past its length, sdpa in the inputs' dtype (with softcap > 0, Gemma-2's
    capped scores: `reference.capped_attention_torch`). Shapes as in the module docstring."""
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
    out = capped_attention_torch(q.unsqueeze(2), kk, vv, mask[:, None, None, :], scale, softcap)
    return out.squeeze(2)


if triton is not None:

    @triton.jit
    def _decode_page(q, k_ptr, v_ptr, table_row, start, n, kv_col, qk_scale, m_i, l_i, acc,
                     KW: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, PAGE: tl.constexpr, SOFTCAP: tl.constexpr):
        """One page of the online softmax: scores of its keys, rescaled running sums."""
        page = tl.load(table_row + start // PAGE).to(tl.int64)
        offs = tl.arange(0, PAGE)
        valid = (start + offs) < n
        rows = page * PAGE + offs
        d = tl.arange(0, DP)
        kv_mask = valid[:, None] & _dim_mask(D, DP)[None, :]
        k = tl.load(k_ptr + rows[:, None] * KW + kv_col + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        s = _soft_cap(tl.sum(k * q[None, :], 1) * qk_scale, SOFTCAP)
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 0))
        p = tl.exp2(s - m_new)
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_ptr + rows[:, None] * KW + kv_col + d[None, :], mask=kv_mask, other=0.0).to(tl.float32)
        acc = acc * alpha + tl.sum(p[:, None] * v, 0)
        return m_new, l_i * alpha + tl.sum(p, 0), acc

    @triton.jit
    def _decode_attention_kernel(
        q_ptr, k_ptr, v_ptr, table_ptr, seq_ptr, len_ptr, o_ptr, table_stride, qk_scale,
        HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, PAGE: tl.constexpr,
        SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        """Program (b, h): query head h of row b over the row's pages (scores in log2 units);
        the head dim padded to DP (a power of two) lanes."""
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        kv_col = (h // (HQ // HKV)) * D
        n = tl.load(len_ptr + b)
        table_row = table_ptr + tl.load(seq_ptr + b).to(tl.int64) * table_stride
        d = tl.arange(0, DP)
        dm = _dim_mask(D, DP)
        q = tl.load(q_ptr + b * (HQ * D) + h * D + d, mask=dm, other=0.0).to(tl.float32)
        # 0-d float32 running max and sum; the first page always holds a key (n >= 1), so the
        # max is finite after it and exp2(-inf - max) = 0 rescales the empty start
        m_i = tl.max(tl.full([PAGE], float("-inf"), tl.float32), 0)
        l_i = tl.sum(tl.zeros([PAGE], dtype=tl.float32), 0)
        acc = tl.zeros([DP], dtype=tl.float32)
        if INTERPRET:  # Triton's CPU interpreter cannot run a for loop with run-time bounds
            start = 0
            while start < n:
                m_i, l_i, acc = _decode_page(q, k_ptr, v_ptr, table_row, start, n, kv_col, qk_scale, m_i, l_i, acc,
                                             HKV * D, D, DP, PAGE, SOFTCAP)
                start += PAGE
        else:
            for start in range(0, n, PAGE):
                m_i, l_i, acc = _decode_page(q, k_ptr, v_ptr, table_row, start, n, kv_col, qk_scale, m_i, l_i, acc,
                                             HKV * D, D, DP, PAGE, SOFTCAP)
        tl.store(o_ptr + b * (HQ * D) + h * D + d, (acc / l_i).to(o_ptr.dtype.element_ty), mask=dm)

    @triton.jit
    def _split_tile(q, k_ptr, v_ptr, table_row, start, hi, kvh, qk_scale, m_i, l_i, acc,
                    HKV: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                    SOFTCAP: tl.constexpr):
        """Keys start.. start + BLOCK_N (those < hi) of the split kernel's online softmax."""
        key = start + tl.arange(0, BLOCK_N)
        valid = key < hi
        page = tl.load(table_row + key // PAGE, mask=valid, other=0).to(tl.int64)
        d = tl.arange(0, DP)
        addr = (page * PAGE + key % PAGE)[:, None] * (HKV * D) + kvh * D + d[None, :]
        kv_mask = valid[:, None] & _dim_mask(D, DP)[None, :]
        k = tl.load(k_ptr + addr, mask=kv_mask, other=0.0)
        s = _soft_cap(tl.dot(q, tl.trans(k), input_precision="ieee") * qk_scale, SOFTCAP)  # [GP, BLOCK_N]
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every tile holds a key
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_ptr + addr, mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        return m_new, l_i * alpha + tl.sum(p, 1), acc

    @triton.jit
    def _split_kernel(
        q_ptr, k_ptr, v_ptr, table_ptr, seq_ptr, len_ptr, o_ptr, m_ptr, l_ptr, acc_ptr, table_stride, qk_scale,
        HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, PAGE: tl.constexpr,
        BLOCK_N: tl.constexpr, GP: tl.constexpr, S: tl.constexpr, SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        """Program (b, kv head, split): the G = HQ / HKV query heads of one KV head over split's
        share of row b's pages (scores in log2 units); S = 1 writes the output, else partials.
        The head dim is padded to DP (a power of two) lanes."""
        b = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1)
        split = tl.program_id(2)
        n = tl.load(len_ptr + b)
        chunk = tl.cdiv(tl.cdiv(n, PAGE), S) * PAGE  # keys per split, whole pages
        lo = split * chunk
        hi = tl.minimum(n, lo + chunk)
        table_row = table_ptr + tl.load(seq_ptr + b).to(tl.int64) * table_stride
        g = tl.arange(0, GP)
        d = tl.arange(0, DP)
        heads = kvh * (HQ // HKV) + g  # query heads of this KV head
        live = g < HQ // HKV  # rows past the group are padding
        qm = live[:, None] & _dim_mask(D, DP)[None, :]
        q = tl.load(q_ptr + b * (HQ * D) + heads[:, None] * D + d[None, :], mask=qm, other=0.0)
        m_i = tl.full([GP], float("-inf"), tl.float32)
        l_i = tl.zeros([GP], dtype=tl.float32)
        acc = tl.zeros([GP, DP], dtype=tl.float32)
        if INTERPRET:  # Triton's CPU interpreter cannot run a for loop with run-time bounds
            start = lo
            while start < hi:
                m_i, l_i, acc = _split_tile(q, k_ptr, v_ptr, table_row, start, hi, kvh, qk_scale, m_i, l_i, acc,
                                            HKV, D, DP, PAGE, BLOCK_N, SOFTCAP)
                start += BLOCK_N
        else:  # a for loop: Triton pipelines its loads
            for start in range(lo, hi, BLOCK_N):
                m_i, l_i, acc = _split_tile(q, k_ptr, v_ptr, table_row, start, hi, kvh, qk_scale, m_i, l_i, acc,
                                            HKV, D, DP, PAGE, BLOCK_N, SOFTCAP)
        if S == 1:
            out = acc / l_i[:, None]
            tl.store(o_ptr + b * (HQ * D) + heads[:, None] * D + d[None, :], out.to(o_ptr.dtype.element_ty), mask=qm)
        else:  # an empty split stores m = -inf, l = 0, acc = 0: weight 0 in the reduce
            at = (b * HQ + heads) * S + split  # [GP] partial index (row, query head, split)
            tl.store(m_ptr + at, m_i, mask=live)
            tl.store(l_ptr + at, l_i, mask=live)
            tl.store(acc_ptr + at[:, None] * D + d[None, :], acc, mask=qm)

    @triton.jit
    def _reduce_kernel(o_ptr, m_ptr, l_ptr, acc_ptr, HQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                       S: tl.constexpr, SP: tl.constexpr):
        """Program (b, h): combine the S partials of query head h of row b (split 0 is never
        empty); the head dim padded to DP (a power of two) lanes."""
        b = tl.program_id(0).to(tl.int64)
        h = tl.program_id(1)
        sp = tl.arange(0, SP)
        d = tl.arange(0, DP)
        dm = _dim_mask(D, DP)
        at = (b * HQ + h) * S + sp
        m = tl.load(m_ptr + at, mask=sp < S, other=float("-inf"))
        w = tl.exp2(m - tl.max(m, 0))
        l_sum = tl.sum(w * tl.load(l_ptr + at, mask=sp < S, other=0.0), 0)
        acc = tl.load(acc_ptr + at[:, None] * D + d[None, :], mask=(sp < S)[:, None] & dm[None, :], other=0.0)
        out = tl.sum(w[:, None] * acc, 0) / l_sum
        tl.store(o_ptr + (b * HQ + h) * D + d, out.to(o_ptr.dtype.element_ty), mask=dm)


def _sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else _CPU_SMS


def decode_splits(rows: int, kv_heads: int, max_pages: int, device: torch.device) -> int:
    """The split kernel's S for a batch of `rows` (the rule in the module docstring)."""
    target, s = _WAVES * _sms(device), 1
    while rows * kv_heads * s < target and s < max_pages:
        s *= 2
    return max(1, min(s, max_pages))


def _next_pow2(x: int) -> int:
    return 1 << (max(1, int(x)) - 1).bit_length()


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, seq: torch.Tensor,
    lengths: torch.Tensor, scale: float, *, num_pages: int | None = None, kernel: str = "split",
    splits: int | None = None, softcap: float = 0.0, num_warps: int = 4,
) -> torch.Tensor:
    """Attention of each row's one query token over its sequence's cached keys (paged).

    Shapes in the module docstring; q, k, v contiguous; every length >= 1 and at most
    pages-in-table x page_tokens (not checked on the device: that would sync). `num_pages`
    bounds the pages the torch path gathers (the kernels read lengths, so ignore it).
    kernel: "split" or "head" (module docstring); splits: the split kernel's S (default
    `decode_splits`; head_dim < 16 runs the head kernel). softcap > 0: Gemma-2's score
    soft-cap, softcap * tanh(scores / softcap) (0 = off, compiled out). Triton path: page_tokens
    a power of two; any head_dim (tiles padded to the next power of two).
    ValueError for inconsistent shapes, a bad softcap or an unknown kernel.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown decode attention kernel {kernel!r}; choose from {', '.join(KERNELS)}")
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, int) or splits < 1):
        raise ValueError(f"splits must be a positive int or None, got {splits!r}")
    b, hq, d = q.shape
    if k.dim() != 4 or k.shape != v.shape or k.shape[3] != d or hq % k.shape[2]:
        raise ValueError(f"decode_attention needs q [B, Hq, D] and k, v [pages, P, Hkv, D] with Hkv dividing Hq, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if seq.shape != (b,) or lengths.shape != (b,) or table.dim() != 2:
        raise ValueError(f"decode_attention needs seq and lengths [B] and a 2D table, got {tuple(seq.shape)}, "
                         f"{tuple(lengths.shape)}, {tuple(table.shape)}")
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not softcap >= 0:
        raise ValueError(f"softcap must be a float >= 0 (0: off), got {softcap!r}")
    softcap = float(softcap)
    if not use_triton(q):
        return decode_attention_torch(q, k, v, table, seq, lengths, scale, num_pages, softcap)
    page = k.shape[1]
    if page & (page - 1):
        raise ValueError(f"the decode kernel needs page_tokens a power of two, got {page}")
    out = torch.empty_like(q)
    hkv = k.shape[2]
    if kernel == "split" and d >= 16:  # tl.dot needs 16 columns; smaller heads take the head kernel
        s = splits or decode_splits(b, hkv, table.shape[1], q.device)
        parts = [torch.empty((b, hq, s) + extra, dtype=torch.float32, device=q.device) for extra in ((), (), (d,))] \
            if s > 1 else [out] * 3  # unused with S = 1
        _split_kernel[(b, hkv, s)](
            q, k, v, table, seq, lengths, out, *parts, table.stride(0), scale * 1.4426950408889634,
            HQ=hq, HKV=hkv, D=d, DP=_next_pow2(d), PAGE=page, BLOCK_N=max(page, 16),
            GP=max(16, _next_pow2(hq // hkv)), S=s, SOFTCAP=softcap, INTERPRET=not q.is_cuda, num_warps=num_warps,
        )
        if s > 1:
            _reduce_kernel[(b, hq)](out, *parts, HQ=hq, D=d, DP=_next_pow2(d), S=s, SP=_next_pow2(s),
                                    num_warps=num_warps)
        return out
    _decode_attention_kernel[(b, hq)](
        q, k, v, table, seq, lengths, out, table.stride(0), scale * 1.4426950408889634,
        HQ=hq, HKV=k.shape[2], D=d, DP=_next_pow2(d), PAGE=page, SOFTCAP=softcap, INTERPRET=not q.is_cuda,
        num_warps=num_warps,
    )
    return out
