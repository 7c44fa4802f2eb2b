"""Fused kernels of the fast prefill engine, with torch reference versions.

This module owns the memory-bound steps of a Llama-style layer that eager PyTorch would run
as many small kernels: RMSNorm, RoPE (+ writing K/V into the cache; with a per-head QK-norm
before it, `QKNorm`: Qwen3), act(gate) * up (SiLU or GeLU-tanh, `gated_act`), and RoPE fused
with the block-diagonal attention itself (the matmul with SiLU * up in its epilogue is
`matmul.swiglu`). On CUDA they are single Triton kernels (one pass over
the tensor each, compiled once per process; the token count is a runtime argument, so new
batch shapes never recompile). Elsewhere (CPU tests) the torch versions run; they match HF
transformers' Llama numerics (bf16 rounding points included), and the CUDA tests compare
the two.

Shapes (T = tokens of the flat packed row):
  rmsnorm:      h [T, hidden] -> normed [T, hidden] (the residual add is in the matmuls)
  rope_store:   qkv [T, (Hq + 2 Hkv) * D], positions [T], cos/sin tables [P, D/2]
                -> q [T, Hq, D]; writes roped K and V into k_out / v_out [T, Hkv, D]
  silu_mul:     gate_up [T, 2 I] -> [T, I] (written over the gate half, no new buffer)
  rope_attention: qkv as above, positions, cos/sin, seg_start [T] (first token of each token's
                prompt) -> [T, Hq, D]: RoPE fused with block-diagonal causal attention over
                one flat row (K/V written to the cache as by rope_store, Q never written),
                tiled over the row (a tile mixes prompts), so short prompts share tiles
                instead of each occupying a mostly idle one as in per-sequence varlen kernels
  packed_attention: q [T, Hq, D] and k / v [T, Hkv, D] already roped (as the QKV matmul with
                RoPE in its epilogue, `matmul.qkv_rope`, leaves them), seg_start
                -> [T, Hq, D]: the same tiled block-diagonal attention without RoPE or cache
                writes in its loop

Options are constexprs, so the Llama path compiles as before: `qk_norm` (rope_store,
rope_attention) and `softcap` (Gemma-2's tanh score cap: rope_attention, packed_attention,
and the decode kernels) cost nothing when off. Head dims need not be powers of two (Phi-3's
96, 80, 112, ...): every kernel that tiles the head dim pads it to the next power of two with
masks (`_dim_mask`, a folded constant where no padding is needed).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from gpu_runner.engine.reference import (
    gated_act_torch,
    packed_attention_torch,
    rmsnorm_torch,
    rope_store_torch,
)

try:  # Triton is optional: CPU-only installs run the torch versions.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["GATED_ACTIVATIONS", "PACKED_TILES", "AttentionTiles", "QKNorm", "gated_act", "packed_attention",
           "packed_head_dim", "packed_tiles", "rmsnorm", "rope_attention", "rope_store", "silu_mul", "use_triton"]


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels can run on `t`: Triton installed and a CUDA tensor (or
    Triton's CPU interpreter switched on with TRITON_INTERPRET=1, for tests)."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


# ---------------------------------------------------------------- Triton kernels

if triton is not None:

    @triton.jit
    def _dim_mask(N: tl.constexpr, NB: tl.constexpr):
        """[NB] mask of the first N lanes of a head-dim block padded to NB (a power of two >= N):
        where N == NB a constant all-true mask, which the compiler folds away (no cost for
        power-of-two head dims)."""
        if N == NB:
            m = tl.full([NB], 1, tl.int1)
        else:
            m = tl.arange(0, NB) < N
        return m

    @triton.jit
    def _head_rmsnorm(x1, x2, w_ptr, eps, HALF: tl.constexpr, HB: tl.constexpr, AXIS: tl.constexpr,
                      UNIT_OFFSET: tl.constexpr):
        """Per-head RMSNorm of heads held as their two halves x1, x2 (head dim along AXIS, padded
        to HB lanes that hold zeros), the [2 HALF] weight at w_ptr, rounding as HF: Qwen3's
        norm in float32, cast, times the weight in the model dtype; with UNIT_OFFSET (Gemma3)
        norm times (1 + weight) in float32, cast once. Returns the normed halves (x1's dtype)."""
        jm = _dim_mask(HALF, HB)
        j = tl.arange(0, HB)
        w1 = tl.expand_dims(tl.load(w_ptr + j, mask=jm, other=0.0).to(tl.float32), 1 - AXIS)
        w2 = tl.expand_dims(tl.load(w_ptr + HALF + j, mask=jm, other=0.0).to(tl.float32), 1 - AXIS)
        a = x1.to(tl.float32)
        b = x2.to(tl.float32)
        rstd = 1.0 / tl.sqrt((tl.sum(a * a, AXIS) + tl.sum(b * b, AXIS)) / (2 * HALF) + eps)
        rstd = tl.expand_dims(rstd, AXIS)
        if UNIT_OFFSET:
            y1 = a * rstd * (1.0 + w1)
            y2 = b * rstd * (1.0 + w2)
        else:
            y1 = (a * rstd).to(x1.dtype).to(tl.float32) * w1
            y2 = (b * rstd).to(x1.dtype).to(tl.float32) * w2
        return y1.to(x1.dtype), y2.to(x1.dtype)

    @triton.jit
    def _soft_cap(qk, SOFTCAP: tl.constexpr):
        """Gemma-2's attention-logit soft-cap, cap * tanh(s / cap), on scores qk in log2 units
        (qk = s log2(e)): c (2 / (1 + 2^(-2 qk / cap)) - 1) with c = cap log2(e). No
        instruction when SOFTCAP == 0 (off)."""
        if SOFTCAP > 0:
            c: tl.constexpr = SOFTCAP * 1.4426950408889634
            qk = c * (2.0 / (1.0 + tl.exp2(qk * (-2.0 / SOFTCAP))) - 1.0)
        return qk

    @triton.jit
    def _rmsnorm_kernel(h_ptr, w_ptr, out_ptr, n_cols, eps, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        x = tl.load(h_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / n_cols + eps)
        y = (x * rstd).to(h_ptr.dtype.element_ty).to(tl.float32)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * n_cols + cols, (y * w).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _rope_store_kernel(
        qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr, qn_ptr, kn_ptr, eps,
        HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, HB: tl.constexpr,
        BQ: tl.constexpr, BKV: tl.constexpr, QK_NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr,
    ):
        """Program t: token t's heads as halves [heads, HB] (HB = HALF padded to a power of two);
        with QK_NORM q and k are RMS-normed per head (weights qn_ptr / kn_ptr) before RoPE."""
        tok = tl.program_id(0).to(tl.int64)
        d = 2 * HALF
        row_width = (HQ + 2 * HKV) * d
        pos = tl.load(pos_ptr + tok)
        j = tl.arange(0, HB)
        jm = _dim_mask(HALF, HB)
        c = tl.load(cos_ptr + pos * HALF + j, mask=jm, other=0.0)[None, :]  # RoPE in the model dtype, as HF
        s = tl.load(sin_ptr + pos * HALF + j, mask=jm, other=0.0)[None, :]
        base = qkv_ptr + tok * row_width
        # queries
        hq = tl.arange(0, BQ)[:, None]
        mq = (hq < HQ) & jm[None, :]
        x1 = tl.load(base + hq * d + j[None, :], mask=mq, other=0.0)
        x2 = tl.load(base + hq * d + HALF + j[None, :], mask=mq, other=0.0)
        if QK_NORM:
            x1, x2 = _head_rmsnorm(x1, x2, qn_ptr, eps, HALF, HB, 1, UNIT_OFFSET)
        q_out = q_ptr + tok * HQ * d + hq * d + j[None, :]
        tl.store(q_out, (x1 * c - x2 * s).to(q_ptr.dtype.element_ty), mask=mq)
        tl.store(q_out + HALF, (x2 * c + x1 * s).to(q_ptr.dtype.element_ty), mask=mq)
        # keys (roped) and values (copied) into the cache
        hk = tl.arange(0, BKV)[:, None]
        mk = (hk < HKV) & jm[None, :]
        kb = base + HQ * d + hk * d + j[None, :]
        k1 = tl.load(kb, mask=mk, other=0.0)
        k2 = tl.load(kb + HALF, mask=mk, other=0.0)
        if QK_NORM:
            k1, k2 = _head_rmsnorm(k1, k2, kn_ptr, eps, HALF, HB, 1, UNIT_OFFSET)
        k_out = k_ptr + tok * HKV * d + hk * d + j[None, :]
        tl.store(k_out, (k1 * c - k2 * s).to(k_ptr.dtype.element_ty), mask=mk)
        tl.store(k_out + HALF, (k2 * c + k1 * s).to(k_ptr.dtype.element_ty), mask=mk)
        vb = base + (HQ + HKV) * d + hk * d + j[None, :]
        v_out = v_ptr + tok * HKV * d + hk * d + j[None, :]
        tl.store(v_out, tl.load(vb, mask=mk, other=0.0), mask=mk)
        tl.store(v_out + HALF, tl.load(vb + HALF, mask=mk, other=0.0), mask=mk)

    @triton.jit
    def _softmax_step(qk, offs_n, mask_n, offs_m, seg_q, m_i, l_i):
        """The online softmax over one block of scores qk [BM, BN] (log2 units): keys of
        other prompts, later keys and keys past the row masked out; returns the block's
        probabilities, the factor rescaling the running output, the new running max and sum."""
        valid = (offs_n[None, :] >= seg_q[:, None]) & (offs_n[None, :] <= offs_m[:, None]) & mask_n[None, :]
        qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no NaN
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        return p, alpha, m_new, l_i * alpha + tl.sum(p, 1)

    @triton.jit
    def _tile_start(seg_ptr, offs_m, mask_m, pid_m, T, BM: tl.constexpr, BN: tl.constexpr, DP: tl.constexpr):
        """Shared setup of the attention kernels' query tile: its rows' prompt starts seg_q, the
        key range [lo, hi) it needs, and the empty online-softmax state (max, sum, [BM, DP] output)."""
        seg_q = tl.load(seg_ptr + offs_m, mask=mask_m, other=T)
        lo = (tl.min(seg_q, axis=0) // BN) * BN  # keys before the tile's earliest prompt start: never needed
        hi = tl.minimum((pid_m + 1) * BM, T)  # causal: no key after the tile's last row
        m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BM], dtype=tl.float32)
        acc = tl.zeros([BM, DP], dtype=tl.float32)
        return seg_q, lo, hi, m_i, l_i, acc

    @triton.jit
    def _tile_store(o_ptr, acc, l_i, rows, mask_m, h, HQ: tl.constexpr, D: tl.constexpr, DP: tl.constexpr):
        """The tile's normalised output acc / l [BM, D of DP] into o [T, HQ, D] at head h."""
        d = tl.arange(0, DP)
        out = (acc / l_i[:, None]).to(o_ptr.dtype.element_ty)
        tl.store(o_ptr + rows[:, None] * (HQ * D) + h * D + d[None, :], out,
                 mask=mask_m[:, None] & _dim_mask(D, DP)[None, :])

    @triton.jit
    def _rope_attention_block(q1, q2, qkv_ptr, pos_ptr, cos_ptr, sin_ptr, kn_ptr, eps, start_n, offs_m, seg_q, T,
                              k_col, v_col, qk_scale, m_i, l_i, acc, k_ptr, v_ptr, kvh, store_kv,
                              W: tl.constexpr, HALF: tl.constexpr, HB: tl.constexpr, DP: tl.constexpr,
                              BN: tl.constexpr, HKV: tl.constexpr, QK_NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr,
                              SOFTCAP: tl.constexpr):
        """One key/value block of the online softmax (FlashAttention's inner step); keys are
        read raw from the QKV projection, RMS-normed per head (QK_NORM) and roped here
        (bf16-rounded, as the cache holds them). With `store_kv` the block's roped keys and
        values also go to the cache."""
        D: tl.constexpr = 2 * HALF
        j = tl.arange(0, HB)
        jm = _dim_mask(HALF, HB)
        offs_n = start_n + tl.arange(0, BN)
        mask_n = offs_n < T
        cols = offs_n.to(tl.int64)
        pos_n = tl.load(pos_ptr + offs_n, mask=mask_n, other=0)
        # keys loaded straight into the [HB, BN] operand layout
        c = tl.load(cos_ptr + pos_n[None, :] * HALF + j[:, None], mask=jm[:, None], other=0.0)
        s = tl.load(sin_ptr + pos_n[None, :] * HALF + j[:, None], mask=jm[:, None], other=0.0)
        km = jm[:, None] & mask_n[None, :]
        kb = qkv_ptr + cols[None, :] * W + k_col + j[:, None]
        k1 = tl.load(kb, mask=km, other=0.0)
        k2 = tl.load(kb + HALF, mask=km, other=0.0)
        if QK_NORM:
            k1, k2 = _head_rmsnorm(k1, k2, kn_ptr, eps, HALF, HB, 0, UNIT_OFFSET)
        r1 = (k1 * c - k2 * s).to(q1.dtype)  # in the model dtype, as HF's rope (half the registers of float32)
        r2 = (k2 * c + k1 * s).to(q1.dtype)
        qk = _soft_cap((tl.dot(q1, r1) + tl.dot(q2, r2)) * qk_scale, SOFTCAP)
        p, alpha, m_new, l_i = _softmax_step(qk, offs_n, mask_n, offs_m, seg_q, m_i, l_i)
        d = tl.arange(0, DP)
        vm = mask_n[:, None] & _dim_mask(D, DP)[None, :]
        v = tl.load(qkv_ptr + cols[:, None] * W + v_col + d[None, :], mask=vm, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        if store_kv:
            ko = k_ptr + cols[None, :] * (HKV * D) + kvh * D + j[:, None]
            tl.store(ko, r1, mask=km)
            tl.store(ko + HALF, r2, mask=km)
            tl.store(v_ptr + cols[:, None] * (HKV * D) + kvh * D + d[None, :], v, mask=vm)
        return m_new, l_i, acc

    @triton.jit
    def _rope_attention_kernel(
        qkv_ptr, pos_ptr, cos_ptr, sin_ptr, seg_ptr, k_ptr, v_ptr, o_ptr, qn_ptr, kn_ptr, eps, T, qk_scale,
        HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, HB: tl.constexpr, DP: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, QK_NORM: tl.constexpr, UNIT_OFFSET: tl.constexpr,
        SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        """Program (m, h): query rows m*BM.. of head h. Ropes its queries (RMS-normed per head
        first with QK_NORM), attends to the roped keys of its rows' prompts, writes [BM, D] of
        the output; the first query head of each KV group also writes its rows' roped K and V
        into the cache: from the loop's diagonal key block when BM == BN (no second load), else
        in a pass of its own. Head halves are padded to HB lanes, whole heads to DP (powers of two)."""
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        D: tl.constexpr = 2 * HALF
        W: tl.constexpr = (HQ + 2 * HKV) * D
        kvh = h // (HQ // HKV)
        k_col = (HQ + kvh) * D
        v_col = (HQ + HKV + kvh) * D
        offs_m = pid_m * BM + tl.arange(0, BM)
        mask_m = offs_m < T
        rows = offs_m.to(tl.int64)
        j = tl.arange(0, HB)
        jm = _dim_mask(HALF, HB)
        qm = mask_m[:, None] & jm[None, :]
        pos_m = tl.load(pos_ptr + offs_m, mask=mask_m, other=0)
        c = tl.load(cos_ptr + pos_m[:, None] * HALF + j[None, :], mask=jm[None, :], other=0.0)  # [BM, HB]
        s = tl.load(sin_ptr + pos_m[:, None] * HALF + j[None, :], mask=jm[None, :], other=0.0)
        qb = qkv_ptr + rows[:, None] * W + h * D + j[None, :]
        x1 = tl.load(qb, mask=qm, other=0.0)
        x2 = tl.load(qb + HALF, mask=qm, other=0.0)
        if QK_NORM:
            x1, x2 = _head_rmsnorm(x1, x2, qn_ptr, eps, HALF, HB, 1, UNIT_OFFSET)
        q1 = (x1 * c - x2 * s).to(o_ptr.dtype.element_ty)  # RoPE in the model dtype, as HF
        q2 = (x2 * c + x1 * s).to(o_ptr.dtype.element_ty)
        first_of_group = h % (HQ // HKV) == 0
        if (BM != BN) and first_of_group:  # this tile's roped keys and values into the cache, once per KV head
            kb = qkv_ptr + rows[:, None] * W + k_col + j[None, :]
            k1 = tl.load(kb, mask=qm, other=0.0)
            k2 = tl.load(kb + HALF, mask=qm, other=0.0)
            if QK_NORM:
                k1, k2 = _head_rmsnorm(k1, k2, kn_ptr, eps, HALF, HB, 1, UNIT_OFFSET)
            ko = k_ptr + rows[:, None] * (HKV * D) + kvh * D + j[None, :]
            tl.store(ko, k1 * c - k2 * s, mask=qm)
            tl.store(ko + HALF, k2 * c + k1 * s, mask=qm)
            d = tl.arange(0, DP)
            vm = mask_m[:, None] & _dim_mask(D, DP)[None, :]
            vv = tl.load(qkv_ptr + rows[:, None] * W + v_col + d[None, :], mask=vm, other=0.0)
            tl.store(v_ptr + rows[:, None] * (HKV * D) + kvh * D + d[None, :], vv, mask=vm)
        seg_q, lo, hi, m_i, l_i, acc = _tile_start(seg_ptr, offs_m, mask_m, pid_m, T, BM, BN, DP)
        diag = pid_m * BM  # with BM == BN the loop always visits this block: the tile's own rows
        if INTERPRET:  # Triton's CPU interpreter cannot run a for loop with run-time bounds
            start_n = lo
            while start_n < hi:
                store_kv = (BM == BN) & first_of_group & (start_n == diag)
                m_i, l_i, acc = _rope_attention_block(q1, q2, qkv_ptr, pos_ptr, cos_ptr, sin_ptr, kn_ptr, eps, start_n,
                                                      offs_m, seg_q, T, k_col, v_col, qk_scale, m_i, l_i, acc,
                                                      k_ptr, v_ptr, kvh, store_kv, W, HALF, HB, DP, BN, HKV,
                                                      QK_NORM, UNIT_OFFSET, SOFTCAP)
                start_n += BN
        else:
            for start_n in range(lo, hi, BN):
                store_kv = (BM == BN) & first_of_group & (start_n == diag)
                m_i, l_i, acc = _rope_attention_block(q1, q2, qkv_ptr, pos_ptr, cos_ptr, sin_ptr, kn_ptr, eps, start_n,
                                                      offs_m, seg_q, T, k_col, v_col, qk_scale, m_i, l_i, acc,
                                                      k_ptr, v_ptr, kvh, store_kv, W, HALF, HB, DP, BN, HKV,
                                                      QK_NORM, UNIT_OFFSET, SOFTCAP)
        _tile_store(o_ptr, acc, l_i, rows, mask_m, h, HQ, D, DP)

    @triton.jit
    def _packed_attention_block(q, k_ptr, v_ptr, start_n, offs_m, seg_q, T, kv_col, qk_scale, m_i, l_i, acc,
                                KW: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr,
                                IEEE: tl.constexpr, SOFTCAP: tl.constexpr):
        """One key/value block of the online softmax over already roped keys."""
        offs_n = start_n + tl.arange(0, BN)
        mask_n = offs_n < T
        cols = offs_n.to(tl.int64)
        d = tl.arange(0, DP)
        dm = _dim_mask(D, DP)
        k = tl.load(k_ptr + cols[None, :] * KW + kv_col + d[:, None], mask=dm[:, None] & mask_n[None, :],
                    other=0.0)  # [DP, BN]
        if IEEE:  # float32 inputs (CPU interpreter tests): no TF32 rounding
            qk = tl.dot(q, k, input_precision="ieee") * qk_scale
        else:
            qk = tl.dot(q, k) * qk_scale
        qk = _soft_cap(qk, SOFTCAP)
        p, alpha, m_new, l_i = _softmax_step(qk, offs_n, mask_n, offs_m, seg_q, m_i, l_i)
        v = tl.load(v_ptr + cols[:, None] * KW + kv_col + d[None, :], mask=mask_n[:, None] & dm[None, :], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return m_new, l_i, acc

    @triton.jit
    def _packed_attention_kernel(
        q_ptr, k_ptr, v_ptr, seg_ptr, o_ptr, T, qk_scale,
        HQ: tl.constexpr, HKV: tl.constexpr, D: tl.constexpr, DP: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
        IEEE: tl.constexpr, SOFTCAP: tl.constexpr, INTERPRET: tl.constexpr,
    ):
        """Program (m, h): query rows m*BM.. of head h over the keys of its rows' prompts
        (block-diagonal causal); q [T, HQ, D], k / v [T, HKV, D], all roped already; the head
        dim padded to DP (a power of two)."""
        pid_m = tl.program_id(0)
        h = tl.program_id(1)
        kv_col = (h // (HQ // HKV)) * D
        offs_m = pid_m * BM + tl.arange(0, BM)
        mask_m = offs_m < T
        rows = offs_m.to(tl.int64)
        d = tl.arange(0, DP)
        q = tl.load(q_ptr + rows[:, None] * (HQ * D) + h * D + d[None, :],
                    mask=mask_m[:, None] & _dim_mask(D, DP)[None, :], other=0.0)
        seg_q, lo, hi, m_i, l_i, acc = _tile_start(seg_ptr, offs_m, mask_m, pid_m, T, BM, BN, DP)
        if INTERPRET:  # Triton's CPU interpreter cannot run a for loop with run-time bounds
            start_n = lo
            while start_n < hi:
                m_i, l_i, acc = _packed_attention_block(q, k_ptr, v_ptr, start_n, offs_m, seg_q, T, kv_col, qk_scale,
                                                        m_i, l_i, acc, HKV * D, D, DP, BN, IEEE, SOFTCAP)
                start_n += BN
        else:
            for start_n in range(lo, hi, BN):
                m_i, l_i, acc = _packed_attention_block(q, k_ptr, v_ptr, start_n, offs_m, seg_q, T, kv_col, qk_scale,
                                                        m_i, l_i, acc, HKV * D, D, DP, BN, IEEE, SOFTCAP)
        _tile_store(o_ptr, acc, l_i, rows, mask_m, h, HQ, D, DP)

    @triton.jit
    def _gate_activation(g, ACT: tl.constexpr):
        """act(g) in float32 for the gated MLPs (shared with `matmul.swiglu`'s epilogue): "silu",
        or "gelu_tanh", 0.5 g (1 + tanh(z)) with z = sqrt(2 / pi) (g + 0.044715 g^3) in
        torch's form (tanh saturating to +-1 as torch's does)."""
        if ACT == "gelu_tanh":
            z = 0.7978845608028654 * (g + 0.044715 * g * g * g)
            act = 0.5 * g * (1.0 + (1.0 - 2.0 / (tl.exp(2.0 * z) + 1.0)))
        else:  # silu
            act = g / (1.0 + tl.exp(-g))
        return act

    @triton.jit
    def _gated_act_kernel(gu_ptr, out_ptr, n_cols, BLOCK: tl.constexpr, ACT: tl.constexpr):
        """act(gate) * up of row r, columns of block c of the [T, 2 I] gate/up rows (float32
        math; the activation rounded to the model dtype before the product, as HF)."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g = tl.load(gu_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        act = _gate_activation(g, ACT).to(out_ptr.dtype.element_ty).to(tl.float32)
        tl.store(out_ptr + row * 2 * n_cols + cols, (act * u).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- public entry points


@dataclass(frozen=True)
class QKNorm:
    """A per-head RMSNorm of q and k applied before RoPE inside the RoPE kernels (Qwen3's
    q_norm / k_norm): q_weight, k_weight [D], eps; unit_offset: Gemma-style weights applied
    as (1 + w) in float32 (Gemma3RMSNorm's rounding) instead of Qwen3's w times the normed
    value cast to the model dtype (`reference.head_rmsnorm_torch` is the exact contract)."""

    q_weight: torch.Tensor
    k_weight: torch.Tensor
    eps: float
    unit_offset: bool = False

    def __post_init__(self) -> None:
        if self.q_weight.dim() != 1 or self.q_weight.shape != self.k_weight.shape:
            raise ValueError(f"QKNorm needs q and k weights of one [D] shape, got {tuple(self.q_weight.shape)} and "
                             f"{tuple(self.k_weight.shape)}")
        if not self.eps > 0:
            raise ValueError(f"QKNorm eps must be > 0, got {self.eps!r}")


@dataclass(frozen=True)
class AttentionTiles:
    """A launch configuration of `packed_attention`: block_m query rows x block_n keys per
    step (powers of two >= 16), num_warps and num_stages of the Triton launch."""

    block_m: int = 64
    block_n: int = 32
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 16 or v & (v - 1):
                raise ValueError(f"{name} must be a power of two >= 16, got {v!r}")
        if self.num_warps not in (1, 2, 4, 8, 16) or not 1 <= self.num_stages <= 8:
            raise ValueError(f"num_warps must be a power of two <= 16 and num_stages in 1..8, got "
                             f"{self.num_warps!r}, {self.num_stages!r}")


# The fastest measured: on an H100 at the 7B and 1.3B shapes, batch-64-sized rows (62.6 / 36.7 us
# against 76.0 / 39.1 with 64-key blocks), and on an H200 over rows of MMLU prompts of 32k and 65k
# tokens (random and longest-first, 16 and 32 heads) against 15 other configurations: the fastest
# or within 1% in each case (benchmarks/results/attention_tiles_h200.json; its eager 4k-token
# calls are too short to rank). So one configuration for every row.
PACKED_TILES = AttentionTiles(64, 32, 4, 3)


def packed_tiles(num_tokens: int, num_heads: int) -> AttentionTiles:
    """`packed_attention`'s default launch configuration for a row of `num_tokens` tokens
    and `num_heads` query heads (today `PACKED_TILES` for every row: see its comment)."""
    del num_tokens, num_heads  # measured: the same choice at 4k-65k tokens and 16 / 32 heads
    return PACKED_TILES


def packed_head_dim(head_dim: int) -> bool:
    """True where the packed attention path (`rope_attention`, `packed_attention`) takes heads
    of `head_dim`: even and >= 32 (powers of two or not: the kernels pad the head-dim tiles
    to the next power of two with masks)."""
    return head_dim >= 32 and head_dim % 2 == 0


def _pow2(n: int) -> int:
    return 1 << (max(1, int(n)) - 1).bit_length()


def _norm_args(qk_norm: QKNorm | None, head_dim: int, like: torch.Tensor) -> tuple:
    """(q weight, k weight, eps, on, unit_offset) launch arguments of the RoPE kernels."""
    if qk_norm is None:
        return like, like, 1.0, False, False
    if qk_norm.q_weight.numel() != head_dim:
        raise ValueError(f"QKNorm weights of {qk_norm.q_weight.numel()} values for head_dim {head_dim}")
    return qk_norm.q_weight, qk_norm.k_weight, float(qk_norm.eps), True, bool(qk_norm.unit_offset)


def rmsnorm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(h) * weight for h [T, hidden] contiguous (HF's rounding: normalise in float32,
    round to the model dtype, then scale). The residual add happens in the matmuls
    (`addmm_` with beta = 1), so there is no add here."""
    if not use_triton(h):
        return rmsnorm_torch(h, weight, eps)
    t, n = h.shape
    out = torch.empty_like(h)
    block = triton.next_power_of_2(n)
    _rmsnorm_kernel[(t,)](h, weight, out, n, eps, BLOCK=block, num_warps=min(16, max(4, block // 256)))
    return out


def rope_store(qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_out: torch.Tensor, v_out: torch.Tensor, num_q_heads: int, *,
               qk_norm: QKNorm | None = None) -> torch.Tensor:  # fmt: skip
    """Apply RoPE to Q and K of the fused projection; write K, V to the cache; return Q [T, Hq, D].

    cos/sin: [max_positions, D/2] tables in the model dtype (HF's rounding), positions: [T] int;
    qk_norm: a per-head RMSNorm of Q and K before RoPE (Qwen3), None for none. Any even D.
    """
    if not use_triton(qkv):
        return rope_store_torch(qkv, positions, cos, sin, k_out, v_out, num_q_heads, qk_norm)
    t = qkv.shape[0]
    num_kv, d = k_out.shape[1], k_out.shape[2]
    if d % 2:
        raise ValueError(f"rope_store needs an even head_dim, got {d}")
    qn, kn, eps, norm, unit = _norm_args(qk_norm, d, qkv)
    q = torch.empty((t, num_q_heads, d), dtype=qkv.dtype, device=qkv.device)
    _rope_store_kernel[(t,)](
        qkv, positions, cos, sin, q, k_out, v_out, qn, kn, eps,
        HQ=num_q_heads, HKV=num_kv, HALF=d // 2, HB=_pow2(d // 2),
        BQ=triton.next_power_of_2(num_q_heads), BKV=triton.next_power_of_2(num_kv), QK_NORM=norm, UNIT_OFFSET=unit,
        num_warps=4,
    )
    return q


GATED_ACTIVATIONS = ("silu", "gelu_tanh")


def gated_act(gate_up: torch.Tensor, activation: str = "silu") -> torch.Tensor:
    """act(gate) * up for the fused [T, 2 I] gate/up projection, written over the gate half;
    returns that [T, I] view (row stride 2 I: matmuls read it without a copy). activation:
    "silu" (SwiGLU) or "gelu_tanh" (Gemma's gelu_pytorch_tanh), one kernel for both."""
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(GATED_ACTIVATIONS)}, got {activation!r}")
    if not use_triton(gate_up):
        return gated_act_torch(gate_up, activation)
    t, two_i = gate_up.shape
    n = two_i // 2
    block = 1024
    _gated_act_kernel[(t, triton.cdiv(n, block))](gate_up, gate_up, n, BLOCK=block, ACT=activation, num_warps=4)
    return gate_up[:, :n]


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up: `gated_act(gate_up, "silu")`."""
    return gated_act(gate_up, "silu")


def _check_softcap(softcap: float) -> float:
    if isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or not softcap >= 0:
        raise ValueError(f"softcap must be a float >= 0 (0: off), got {softcap!r}")
    return float(softcap)


def rope_attention(
    qkv: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, seg_start: torch.Tensor,
    k_out: torch.Tensor, v_out: torch.Tensor, num_q_heads: int, scale: float,
    *, qk_norm: QKNorm | None = None, softcap: float = 0.0,
    block_m: int = 64, block_n: int = 64, num_warps: int = 4, num_stages: int = 3,
) -> torch.Tensor:  # fmt: skip
    """RoPE + block-diagonal causal attention over one flat row, straight from the fused QKV
    projection: `rope_store` then attention of each token to the earlier tokens of its own
    prompt, in one kernel (Q is never written out; K and V are written to the cache once).

    qkv [T, (Hq + 2 Hkv) * D] contiguous; positions [T] int; cos/sin [max_positions, D/2];
    seg_start [T] int: index of the first token of each token's prompt (non-decreasing);
    k_out / v_out [T, Hkv, D] contiguous receive the roped keys and the values.
    qk_norm: per-head RMSNorm of Q and K before RoPE (Qwen3; the cache holds normed keys);
    softcap > 0: scores become softcap * tanh(scores / softcap) (Gemma-2; 0 = off, compiled out).
    Returns the attention output [T, Hq, D]. D even and >= 32 (`packed_head_dim`; other than
    powers of two, the tiles are padded to the next one).
    Tiles: block_m query rows x block_n keys; the defaults are the configuration measured
    fastest on an H100 for 16 and 32 heads (a search script since deleted: git log -S tune_attention).
    """
    softcap = _check_softcap(softcap)
    if not use_triton(qkv):
        q = rope_store_torch(qkv, positions, cos, sin, k_out, v_out, num_q_heads, qk_norm)
        return packed_attention_torch(q, k_out, v_out, seg_start, scale, softcap)
    t = qkv.shape[0]
    num_kv, d = k_out.shape[1], k_out.shape[2]
    if not packed_head_dim(d):
        raise ValueError(f"rope_attention needs an even head_dim >= 32, got head_dim {d}")
    qn, kn, eps, norm, unit = _norm_args(qk_norm, d, qkv)
    out = torch.empty((t, num_q_heads, d), dtype=qkv.dtype, device=qkv.device)
    grid = (triton.cdiv(t, block_m), num_q_heads)
    _rope_attention_kernel[grid](
        qkv, positions, cos, sin, seg_start, k_out, v_out, out, qn, kn, eps, t, scale * 1.4426950408889634,
        HQ=num_q_heads, HKV=num_kv, HALF=d // 2, HB=_pow2(d // 2), DP=_pow2(d), BM=block_m, BN=block_n,
        QK_NORM=norm, UNIT_OFFSET=unit, SOFTCAP=softcap, INTERPRET=not qkv.is_cuda,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def packed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg_start: torch.Tensor, scale: float,
    *, softcap: float = 0.0, tiles: AttentionTiles | None = None,
) -> torch.Tensor:  # fmt: skip
    """Block-diagonal causal attention over one flat row of already roped q [T, Hq, D] and
    k / v [T, Hkv, D] (the KV cache, as `matmul.qkv_rope` leaves them), all
    contiguous; seg_start [T] int: index of the first token of each token's prompt
    (non-decreasing). Returns [T, Hq, D]. Tiled over the row like `rope_attention` (a tile
    mixes prompts); no RoPE, no cache writes, so the key and value blocks go straight from
    memory to the matmuls. softcap > 0: Gemma-2's score soft-cap (0 = off, compiled out).
    D >= 16 (padded to the next power of two). tiles: the launch configuration, default
    `packed_tiles(T, Hq)`."""
    t, hq, d = q.shape
    if k.shape != v.shape or k.shape[0] != t or k.shape[2] != d or hq % k.shape[1]:
        raise ValueError(f"packed_attention needs q [T, Hq, D] and k, v [T, Hkv, D] with Hkv dividing Hq, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    softcap = _check_softcap(softcap)
    if not use_triton(q):
        return packed_attention_torch(q, k, v, seg_start, scale, softcap)
    if d < 16:
        raise ValueError(f"packed_attention needs head_dim >= 16, got {d}")
    tl_ = tiles or packed_tiles(t, hq)
    out = torch.empty_like(q)
    grid = (triton.cdiv(t, tl_.block_m), hq)
    _packed_attention_kernel[grid](
        q, k, v, seg_start, out, t, scale * 1.4426950408889634,
        HQ=hq, HKV=k.shape[1], D=d, DP=_pow2(d), BM=tl_.block_m, BN=tl_.block_n, IEEE=q.dtype == torch.float32,
        SOFTCAP=softcap, INTERPRET=not q.is_cuda, num_warps=tl_.num_warps, num_stages=tl_.num_stages,
    )
    return out
