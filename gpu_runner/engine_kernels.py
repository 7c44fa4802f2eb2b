"""Fused kernels of the fast prefill engine, with torch reference versions.

This module owns the memory-bound steps of a Llama-style layer that eager PyTorch
would run as many small kernels: RMSNorm, RoPE (+ writing K/V into the
cache), and SiLU(gate) * up, plus the gate/up matmul with SiLU * up fused into its
epilogue (`swiglu`, Hopper). On CUDA they are single Triton kernels (one pass over the
tensor each, compiled once per process; the token count is a runtime argument, so new
batch shapes never recompile). Elsewhere (CPU tests) the torch versions run; they match
HF transformers' Llama numerics (bf16 rounding points included), and the CUDA tests
compare the two.

Shapes (T = tokens of the flat packed row):
  rmsnorm:      h [T, hidden] -> normed [T, hidden] (the residual add is in the matmuls)
  rope_store:   qkv [T, (Hq + 2 Hkv) * D], positions [T], cos/sin tables [P, D/2]
                -> q [T, Hq, D]; writes roped K and V into k_out / v_out [T, Hkv, D]
  silu_mul:     gate_up [T, 2 I] -> [T, I] (written over the gate half, no new buffer)
  swiglu:       x [T, hidden], fused gate/up weight [2 I, hidden] -> SiLU(x Wg^T) * (x Wu^T) [T, I]:
                on Hopper one persistent TMA matmul with the activation in its epilogue (no
                [T, 2 I] intermediate), elsewhere cuBLAS + silu_mul
  rope_attention: qkv as above, positions, cos/sin, seg_start [T] (first token of each token's
                prompt) -> [T, Hq, D]: RoPE fused with block-diagonal causal attention over
                one flat row (K/V written to the cache as by rope_store, Q never written),
                tiled over the row (a tile mixes prompts), so short prompts share tiles
                instead of each occupying a mostly idle one as in per-sequence varlen kernels
"""

from __future__ import annotations

import os

import torch

try:  # Triton is optional: CPU-only installs run the torch versions.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
try:  # TMA tensor descriptors (Triton >= 3.3): the fused SwiGLU matmul needs them
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the install
    TensorDescriptor = None

__all__ = ["rmsnorm", "rope_attention", "rope_store", "silu_mul", "swiglu", "use_triton"]


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels can run on `t`: Triton installed and a CUDA tensor (or
    Triton's CPU interpreter switched on with TRITON_INTERPRET=1, for tests)."""
    return triton is not None and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


# ---------------------------------------------------------------- torch reference versions


def _rmsnorm_torch(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def _rope_store_torch(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_out: torch.Tensor,
    v_out: torch.Tensor,
    num_q_heads: int,
) -> torch.Tensor:
    t = qkv.shape[0]
    num_kv, d = k_out.shape[1], k_out.shape[2]
    q = qkv[:, : num_q_heads * d].view(t, num_q_heads, d)
    k = qkv[:, num_q_heads * d : (num_q_heads + num_kv) * d].view(t, num_kv, d)
    v = qkv[:, (num_q_heads + num_kv) * d :].view(t, num_kv, d)
    c = torch.cat((cos, cos), -1)[positions].unsqueeze(1)  # [T, 1, D] in the model dtype
    s = torch.cat((sin, sin), -1)[positions].unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat((-x2, x1), -1)

    k_out.copy_(k * c + rot(k) * s)
    v_out.copy_(v)
    return q * c + rot(q) * s


def _silu_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return gate.copy_(torch.nn.functional.silu(gate) * up)


def _packed_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg_start: torch.Tensor, scale: float) -> torch.Tensor:
    t, hq, _ = q.shape
    idx = torch.arange(t, device=q.device)
    mask = (idx[None, :] >= seg_start[:, None]) & (idx[None, :] <= idx[:, None])
    rep = hq // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)
    vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


# ---------------------------------------------------------------- Triton kernels

if triton is not None:

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
        qkv_ptr, pos_ptr, cos_ptr, sin_ptr, q_ptr, k_ptr, v_ptr,
        HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr,
        BQ: tl.constexpr, BKV: tl.constexpr,
    ):
        tok = tl.program_id(0).to(tl.int64)
        d = 2 * HALF
        row_width = (HQ + 2 * HKV) * d
        pos = tl.load(pos_ptr + tok)
        j = tl.arange(0, HALF)
        c = tl.load(cos_ptr + pos * HALF + j)[None, :]  # RoPE in the model dtype, as HF
        s = tl.load(sin_ptr + pos * HALF + j)[None, :]
        base = qkv_ptr + tok * row_width
        # queries
        hq = tl.arange(0, BQ)[:, None]
        mq = hq < HQ
        x1 = tl.load(base + hq * d + j[None, :], mask=mq, other=0.0)
        x2 = tl.load(base + hq * d + HALF + j[None, :], mask=mq, other=0.0)
        q_out = q_ptr + tok * HQ * d + hq * d + j[None, :]
        tl.store(q_out, (x1 * c - x2 * s).to(q_ptr.dtype.element_ty), mask=mq)
        tl.store(q_out + HALF, (x2 * c + x1 * s).to(q_ptr.dtype.element_ty), mask=mq)
        # keys (roped) and values (copied) into the cache
        hk = tl.arange(0, BKV)[:, None]
        mk = hk < HKV
        kb = base + HQ * d + hk * d + j[None, :]
        k1 = tl.load(kb, mask=mk, other=0.0)
        k2 = tl.load(kb + HALF, mask=mk, other=0.0)
        k_out = k_ptr + tok * HKV * d + hk * d + j[None, :]
        tl.store(k_out, (k1 * c - k2 * s).to(k_ptr.dtype.element_ty), mask=mk)
        tl.store(k_out + HALF, (k2 * c + k1 * s).to(k_ptr.dtype.element_ty), mask=mk)
        vb = base + (HQ + HKV) * d + hk * d + j[None, :]
        v_out = v_ptr + tok * HKV * d + hk * d + j[None, :]
        tl.store(v_out, tl.load(vb, mask=mk, other=0.0), mask=mk)
        tl.store(v_out + HALF, tl.load(vb + HALF, mask=mk, other=0.0), mask=mk)

    @triton.jit
    def _rope_attention_block(q1, q2, qkv_ptr, pos_ptr, cos_ptr, sin_ptr, start_n, offs_m, seg_q, T, k_col, v_col,
                              qk_scale, m_i, l_i, acc, k_ptr, v_ptr, kvh, store_kv,
                              W: tl.constexpr, HALF: tl.constexpr, BN: tl.constexpr, HKV: tl.constexpr):
        """One key/value block of the online softmax (FlashAttention's inner step); keys are
        read raw from the QKV projection and roped here (bf16-rounded, as the cache holds them).
        With `store_kv` the block's roped keys and values also go to the cache."""
        j = tl.arange(0, HALF)
        offs_n = start_n + tl.arange(0, BN)
        mask_n = offs_n < T
        cols = offs_n.to(tl.int64)
        pos_n = tl.load(pos_ptr + offs_n, mask=mask_n, other=0)
        # keys loaded straight into the [HALF, BN] operand layout
        c = tl.load(cos_ptr + pos_n[None, :] * HALF + j[:, None])
        s = tl.load(sin_ptr + pos_n[None, :] * HALF + j[:, None])
        kb = qkv_ptr + cols[None, :] * W + k_col + j[:, None]
        k1 = tl.load(kb, mask=mask_n[None, :], other=0.0)
        k2 = tl.load(kb + HALF, mask=mask_n[None, :], other=0.0)
        r1 = (k1 * c - k2 * s).to(q1.dtype)  # in the model dtype, as HF's rope (half the registers of float32)
        r2 = (k2 * c + k1 * s).to(q1.dtype)
        qk = (tl.dot(q1, r1) + tl.dot(q2, r2)) * qk_scale
        valid = (offs_n[None, :] >= seg_q[:, None]) & (offs_n[None, :] <= offs_m[:, None]) & mask_n[None, :]
        qk = tl.where(valid, qk, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no key yet: no NaN
        p = tl.exp2(qk - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        d = tl.arange(0, 2 * HALF)
        v = tl.load(qkv_ptr + cols[:, None] * W + v_col + d[None, :], mask=mask_n[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        if store_kv:
            ko = k_ptr + cols[None, :] * (HKV * 2 * HALF) + kvh * 2 * HALF + j[:, None]
            tl.store(ko, r1, mask=mask_n[None, :])
            tl.store(ko + HALF, r2, mask=mask_n[None, :])
            tl.store(v_ptr + cols[:, None] * (HKV * 2 * HALF) + kvh * 2 * HALF + d[None, :], v, mask=mask_n[:, None])
        return m_new, l_i, acc

    @triton.jit
    def _rope_attention_kernel(
        qkv_ptr, pos_ptr, cos_ptr, sin_ptr, seg_ptr, k_ptr, v_ptr, o_ptr, T, qk_scale,
        HQ: tl.constexpr, HKV: tl.constexpr, HALF: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
        INTERPRET: tl.constexpr,
    ):
        """Program (m, h): query rows m*BM.. of head h. Ropes its queries, attends to the
        roped keys of its rows' prompts, writes [BM, D] of the output; the first query head
        of each KV group also writes its rows' roped K and V into the cache: from the loop's
        diagonal key block when BM == BN (no second load), else in a pass of its own."""
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
        j = tl.arange(0, HALF)
        pos_m = tl.load(pos_ptr + offs_m, mask=mask_m, other=0)
        c = tl.load(cos_ptr + pos_m[:, None] * HALF + j[None, :])  # [BM, HALF]
        s = tl.load(sin_ptr + pos_m[:, None] * HALF + j[None, :])
        qb = qkv_ptr + rows[:, None] * W + h * D + j[None, :]
        x1 = tl.load(qb, mask=mask_m[:, None], other=0.0)
        x2 = tl.load(qb + HALF, mask=mask_m[:, None], other=0.0)
        q1 = (x1 * c - x2 * s).to(o_ptr.dtype.element_ty)  # RoPE in the model dtype, as HF
        q2 = (x2 * c + x1 * s).to(o_ptr.dtype.element_ty)
        first_of_group = h % (HQ // HKV) == 0
        if (BM != BN) and first_of_group:  # this tile's roped keys and values into the cache, once per KV head
            kb = qkv_ptr + rows[:, None] * W + k_col + j[None, :]
            k1 = tl.load(kb, mask=mask_m[:, None], other=0.0)
            k2 = tl.load(kb + HALF, mask=mask_m[:, None], other=0.0)
            ko = k_ptr + rows[:, None] * (HKV * D) + kvh * D + j[None, :]
            tl.store(ko, k1 * c - k2 * s, mask=mask_m[:, None])
            tl.store(ko + HALF, k2 * c + k1 * s, mask=mask_m[:, None])
            d = tl.arange(0, D)
            vv = tl.load(qkv_ptr + rows[:, None] * W + v_col + d[None, :], mask=mask_m[:, None], other=0.0)
            tl.store(v_ptr + rows[:, None] * (HKV * D) + kvh * D + d[None, :], vv, mask=mask_m[:, None])
        seg_q = tl.load(seg_ptr + offs_m, mask=mask_m, other=T)
        lo = (tl.min(seg_q, axis=0) // BN) * BN  # keys before the tile's earliest prompt start: never needed
        hi = tl.minimum((pid_m + 1) * BM, T)  # causal: no key after the tile's last row
        m_i = tl.full([BM], float("-inf"), dtype=tl.float32)
        l_i = tl.zeros([BM], dtype=tl.float32)
        acc = tl.zeros([BM, D], dtype=tl.float32)
        diag = pid_m * BM  # with BM == BN the loop always visits this block: the tile's own rows
        if INTERPRET:  # Triton's CPU interpreter cannot run a for loop with run-time bounds
            start_n = lo
            while start_n < hi:
                store_kv = (BM == BN) & first_of_group & (start_n == diag)
                m_i, l_i, acc = _rope_attention_block(q1, q2, qkv_ptr, pos_ptr, cos_ptr, sin_ptr, start_n, offs_m,
                                                      seg_q, T, k_col, v_col, qk_scale, m_i, l_i, acc,
                                                      k_ptr, v_ptr, kvh, store_kv, W, HALF, BN, HKV)
                start_n += BN
        else:
            for start_n in range(lo, hi, BN):
                store_kv = (BM == BN) & first_of_group & (start_n == diag)
                m_i, l_i, acc = _rope_attention_block(q1, q2, qkv_ptr, pos_ptr, cos_ptr, sin_ptr, start_n, offs_m,
                                                      seg_q, T, k_col, v_col, qk_scale, m_i, l_i, acc,
                                                      k_ptr, v_ptr, kvh, store_kv, W, HALF, BN, HKV)
        acc = acc / l_i[:, None]
        d = tl.arange(0, D)
        tl.store(o_ptr + rows[:, None] * (HQ * D) + h * D + d[None, :], acc.to(o_ptr.dtype.element_ty),
                 mask=mask_m[:, None])

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g = tl.load(gu_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)  # bf16 silu, as HF
        tl.store(out_ptr + row * 2 * n_cols + cols, (act * u).to(out_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _swiglu_kernel(x_desc, w_desc, o_desc, M, N, K, num_programs, BM: tl.constexpr, BN: tl.constexpr,
                       BK: tl.constexpr, GROUP_M: tl.constexpr, IEEE: tl.constexpr):
        """Persistent: program p computes output tiles p, p + num_programs, ... (grouped by
        GROUP_M row tiles for L2 reuse). Tile (m, n): w_desc reads the [2, N, K] view of the
        weight, so one TMA load brings the gate rows n and the up rows N + n of a K step and
        one [BM, 2 BN] matmul computes both; then SiLU(gate) * up with HF's bf16 rounding
        points (gate and up rounded, SiLU rounded, product rounded). Rows past N are zeros
        (TMA bounds) and the store clips columns past N."""
        num_m = tl.cdiv(M, BM)
        num_n = tl.cdiv(N, BN)
        in_group = GROUP_M * num_n
        dt = o_desc.dtype
        for tile in tl.range(tl.program_id(0), num_m * num_n, num_programs):
            first_m = (tile // in_group) * GROUP_M
            size_m = tl.minimum(num_m - first_m, GROUP_M)
            off_m = (first_m + (tile % in_group) % size_m) * BM
            off_n = ((tile % in_group) // size_m) * BN
            acc = tl.zeros((BM, 2 * BN), dtype=tl.float32)
            for ki in range(tl.cdiv(K, BK)):
                a = x_desc.load([off_m, ki * BK])
                b = w_desc.load([0, off_n, ki * BK]).reshape(2 * BN, BK).T
                if IEEE:  # float32 inputs (CPU interpreter tests): no TF32 rounding
                    acc = tl.dot(a, b, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, b, acc)
            acc_g, acc_u = tl.split(acc.reshape(BM, 2, BN).permute(0, 2, 1))
            gate = acc_g.to(dt).to(tl.float32)
            up = acc_u.to(dt).to(tl.float32)
            act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
            o_desc.store([off_m, off_n], (act * up).to(dt))


# ---------------------------------------------------------------- public entry points


def rmsnorm(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm(h) * weight for h [T, hidden] contiguous (HF's rounding: normalise in float32,
    round to the model dtype, then scale). The residual add happens in the matmuls
    (`addmm_` with beta = 1), so there is no add here."""
    if not use_triton(h):
        return _rmsnorm_torch(h, weight, eps)
    t, n = h.shape
    out = torch.empty_like(h)
    block = triton.next_power_of_2(n)
    _rmsnorm_kernel[(t,)](h, weight, out, n, eps, BLOCK=block, num_warps=min(16, max(4, block // 256)))
    return out


def rope_store(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_out: torch.Tensor,
    v_out: torch.Tensor,
    num_q_heads: int,
) -> torch.Tensor:
    """Apply RoPE to Q and K of the fused projection; write K, V to the cache; return Q [T, Hq, D].

    cos/sin: [max_positions, D/2] tables in the model dtype (HF's rounding), positions: [T] int.
    """
    if not use_triton(qkv):
        return _rope_store_torch(qkv, positions, cos, sin, k_out, v_out, num_q_heads)
    t = qkv.shape[0]
    num_kv, d = k_out.shape[1], k_out.shape[2]
    q = torch.empty((t, num_q_heads, d), dtype=qkv.dtype, device=qkv.device)
    _rope_store_kernel[(t,)](
        qkv, positions, cos, sin, q, k_out, v_out,
        HQ=num_q_heads, HKV=num_kv, HALF=d // 2,
        BQ=triton.next_power_of_2(num_q_heads), BKV=triton.next_power_of_2(num_kv), num_warps=4,
    )
    return q


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up for the fused [T, 2 I] gate/up projection, written over the gate half;
    returns that [T, I] view (row stride 2 I: matmuls read it without a copy)."""
    if not use_triton(gate_up):
        return _silu_mul_torch(gate_up)
    t, two_i = gate_up.shape
    n = two_i // 2
    block = 1024
    _silu_mul_kernel[(t, triton.cdiv(n, block))](gate_up, gate_up, n, BLOCK=block, num_warps=4)
    return gate_up[:, :n]


def _swiglu_fusable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The fused matmul runs where Triton has TMA descriptors (Hopper or newer, or the CPU
    interpreter) and the operands suit them: contiguous, one dtype, 16-byte row strides."""
    if TensorDescriptor is None or not use_triton(x) or x.dtype != w.dtype:
        return False
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (9, 0):
        return False
    size = x.element_size()
    return x.is_contiguous() and w.is_contiguous() and (x.shape[1] * size) % 16 == 0 and (w.shape[0] // 2 * size) % 16 == 0


def swiglu(
    x: torch.Tensor,
    gate_up_weight: torch.Tensor,
    *,
    block_m: int = 128,
    block_n: int = 128,
    block_k: int = 64,
    group_m: int = 12,
    num_warps: int = 8,
    num_stages: int = 3,
) -> torch.Tensor:
    """SiLU(x W_gate^T) * (x W_up^T) for x [T, hidden] and the fused [2 I, hidden] weight
    (gate rows first, then up rows): a new [T, I] tensor in x's dtype, with HF's rounding.

    Where `_swiglu_fusable` holds: one persistent Triton matmul with TMA loads and the
    activation in its epilogue (no [T, 2 I] intermediate written or read back); gate and up
    tiles come in one TMA load of the [2, I, hidden] view and go through one [BM, 2 BN]
    matmul. On an H100 its matmul runs 3-5% under cuBLAS's rate, less than the saved pass:
    1.04-1.06x of cuBLAS + silu_mul at the 7B shape, 1.08-1.14x at 1.3B alone
    (swiglu_tma_probe.py, which chose the default tiles and GROUP_M), and the engine's
    forward 18.99 vs 19.74 ms (1.3B), 91.94 vs 92.83 ms (7B) (fused_mlp_ab.py).
    Elsewhere: F.linear, then silu_mul.
    """
    if x.shape[1] != gate_up_weight.shape[1] or gate_up_weight.shape[0] % 2:
        raise ValueError(f"swiglu needs x [T, hidden] and a [2 I, hidden] weight, got {tuple(x.shape)} "
                         f"and {tuple(gate_up_weight.shape)}")
    if not _swiglu_fusable(x, gate_up_weight):
        return silu_mul(torch.nn.functional.linear(x, gate_up_weight))
    t, k = x.shape
    n = gate_up_weight.shape[0] // 2
    out = torch.empty((t, n), dtype=x.dtype, device=x.device)
    x_desc = TensorDescriptor.from_tensor(x, [block_m, block_k])
    w_desc = TensorDescriptor.from_tensor(gate_up_weight.view(2, n, k), [2, block_n, block_k])
    o_desc = TensorDescriptor.from_tensor(out, [block_m, block_n])
    tiles = triton.cdiv(t, block_m) * triton.cdiv(n, block_n)
    programs = min(tiles, torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4)
    _swiglu_kernel[(programs,)](
        x_desc, w_desc, o_desc, t, n, k, programs, BM=block_m, BN=block_n, BK=block_k, GROUP_M=group_m,
        IEEE=x.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    return out


def rope_attention(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    seg_start: torch.Tensor,
    k_out: torch.Tensor,
    v_out: torch.Tensor,
    num_q_heads: int,
    scale: float,
    *,
    block_m: int = 64,
    block_n: int = 64,
    num_warps: int = 4,
    num_stages: int = 3,
) -> torch.Tensor:
    """RoPE + block-diagonal causal attention over one flat row, straight from the fused QKV
    projection: `rope_store` then attention of each token to the earlier tokens of its own
    prompt, in one kernel (Q is never written out; K and V are written to the cache once).

    qkv [T, (Hq + 2 Hkv) * D] contiguous; positions [T] int; cos/sin [max_positions, D/2];
    seg_start [T] int: index of the first token of each token's prompt (non-decreasing);
    k_out / v_out [T, Hkv, D] contiguous receive the roped keys and the values.
    Returns the attention output [T, Hq, D]. D / 2 must be a power of two >= 16.
    Tiles: block_m query rows x block_n keys; the defaults are the configuration measured
    fastest on an H100 for 16 and 32 heads (benchmarks/device/tune_attention.py).
    """
    if not use_triton(qkv):
        q = _rope_store_torch(qkv, positions, cos, sin, k_out, v_out, num_q_heads)
        return _packed_attention_torch(q, k_out, v_out, seg_start, scale)
    t = qkv.shape[0]
    num_kv, d = k_out.shape[1], k_out.shape[2]
    if d % 2 or d // 2 < 16 or (d // 2) & (d // 2 - 1):
        raise ValueError(f"rope_attention needs head_dim / 2 a power of two >= 16, got head_dim {d}")
    out = torch.empty((t, num_q_heads, d), dtype=qkv.dtype, device=qkv.device)
    grid = (triton.cdiv(t, block_m), num_q_heads)
    _rope_attention_kernel[grid](
        qkv, positions, cos, sin, seg_start, k_out, v_out, out, t, scale * 1.4426950408889634,
        HQ=num_q_heads, HKV=num_kv, HALF=d // 2, BM=block_m, BN=block_n, INTERPRET=not qkv.is_cuda,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out
