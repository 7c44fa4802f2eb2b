"""Fused elementwise kernels of the fast prefill engine, with torch reference versions.

This module owns the three memory-bound steps of a Llama-style layer that eager PyTorch
would run as many small kernels: residual add + RMSNorm, RoPE (+ writing K/V into the
cache), and SiLU(gate) * up. On CUDA they are single Triton kernels (one pass over the
tensor each, compiled once per process; the token count is a runtime argument, so new
batch shapes never recompile). Elsewhere (CPU tests) the torch versions run; they match
HF transformers' Llama numerics (bf16 rounding points included), and the CUDA tests
compare the two.

Shapes (T = tokens of the flat packed row):
  add_rmsnorm:  h [T, hidden] (updated in place: h += delta), returns normed [T, hidden]
  rope_store:   qkv [T, (Hq + 2 Hkv) * D], positions [T], cos/sin tables [P, D/2]
                -> q [T, Hq, D]; writes roped K and V into k_out / v_out [T, Hkv, D]
  silu_mul:     gate_up [T, 2 I] -> [T, I]
"""

from __future__ import annotations

import torch

try:  # Triton is optional: CPU-only installs run the torch versions.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None

__all__ = ["add_rmsnorm", "rope_store", "silu_mul", "use_triton"]


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels can run on `t` (a CUDA tensor and Triton installed)."""
    return triton is not None and t.is_cuda


# ---------------------------------------------------------------- torch reference versions


def _add_rmsnorm_torch(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if delta is not None:
        h.add_(delta)
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
    return torch.nn.functional.silu(gate) * up


# ---------------------------------------------------------------- Triton kernels

if triton is not None:

    @triton.jit
    def _add_rmsnorm_kernel(h_ptr, d_ptr, w_ptr, out_ptr, n_cols, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        h = tl.load(h_ptr + row * n_cols + cols, mask=mask, other=0.0)
        if HAS_DELTA:
            d = tl.load(d_ptr + row * n_cols + cols, mask=mask, other=0.0)
            h = (h.to(tl.float32) + d.to(tl.float32)).to(h_ptr.dtype.element_ty)  # bf16 residual, as HF
            tl.store(h_ptr + row * n_cols + cols, h, mask=mask)
        x = h.to(tl.float32)
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
        c = tl.load(cos_ptr + pos * HALF + j).to(tl.float32)[None, :]  # tables hold bf16-rounded values
        s = tl.load(sin_ptr + pos * HALF + j).to(tl.float32)[None, :]
        base = qkv_ptr + tok * row_width
        # queries
        hq = tl.arange(0, BQ)[:, None]
        mq = hq < HQ
        x1 = tl.load(base + hq * d + j[None, :], mask=mq, other=0.0).to(tl.float32)
        x2 = tl.load(base + hq * d + HALF + j[None, :], mask=mq, other=0.0).to(tl.float32)
        q_out = q_ptr + tok * HQ * d + hq * d + j[None, :]
        tl.store(q_out, (x1 * c - x2 * s).to(q_ptr.dtype.element_ty), mask=mq)
        tl.store(q_out + HALF, (x2 * c + x1 * s).to(q_ptr.dtype.element_ty), mask=mq)
        # keys (roped) and values (copied) into the cache
        hk = tl.arange(0, BKV)[:, None]
        mk = hk < HKV
        kb = base + HQ * d + hk * d + j[None, :]
        k1 = tl.load(kb, mask=mk, other=0.0).to(tl.float32)
        k2 = tl.load(kb + HALF, mask=mk, other=0.0).to(tl.float32)
        k_out = k_ptr + tok * HKV * d + hk * d + j[None, :]
        tl.store(k_out, (k1 * c - k2 * s).to(k_ptr.dtype.element_ty), mask=mk)
        tl.store(k_out + HALF, (k2 * c + k1 * s).to(k_ptr.dtype.element_ty), mask=mk)
        vb = base + (HQ + HKV) * d + hk * d + j[None, :]
        v_out = v_ptr + tok * HKV * d + hk * d + j[None, :]
        tl.store(v_out, tl.load(vb, mask=mk, other=0.0), mask=mk)
        tl.store(v_out + HALF, tl.load(vb + HALF, mask=mk, other=0.0), mask=mk)

    @triton.jit
    def _silu_mul_kernel(gu_ptr, out_ptr, n_cols, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < n_cols
        g = tl.load(gu_ptr + row * 2 * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        u = tl.load(gu_ptr + row * 2 * n_cols + n_cols + cols, mask=mask, other=0.0).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(out_ptr.dtype.element_ty).to(tl.float32)  # bf16 silu, as HF
        tl.store(out_ptr + row * n_cols + cols, (act * u).to(out_ptr.dtype.element_ty), mask=mask)


# ---------------------------------------------------------------- public entry points


def add_rmsnorm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """h += delta (in place, if given); return RMSNorm(h) * weight. h, delta: [T, hidden] contiguous."""
    if not use_triton(h):
        return _add_rmsnorm_torch(h, delta, weight, eps)
    t, n = h.shape
    out = torch.empty_like(h)
    block = triton.next_power_of_2(n)
    _add_rmsnorm_kernel[(t,)](
        h, delta if delta is not None else h, weight, out, n, eps,
        HAS_DELTA=delta is not None, BLOCK=block, num_warps=min(16, max(4, block // 256)),
    )
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
    """SiLU(gate) * up for the fused [T, 2 I] gate/up projection; returns [T, I]."""
    if not use_triton(gate_up):
        return _silu_mul_torch(gate_up)
    t, two_i = gate_up.shape
    n = two_i // 2
    out = torch.empty((t, n), dtype=gate_up.dtype, device=gate_up.device)
    block = 1024
    _silu_mul_kernel[(t, triton.cdiv(n, block))](gate_up, out, n, BLOCK=block, num_warps=4)
    return out
