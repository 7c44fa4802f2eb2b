"""Torch versions of the engine's kernels: what runs where Triton cannot (no Triton, CPU
without the interpreter), and the reference the Triton kernels are tested against.
Same contracts as the kernels in `kernels.py` of the same name (without `_torch`)."""

from __future__ import annotations

import torch

__all__ = ["capped_attention_torch", "gated_act_torch", "head_rmsnorm_torch", "packed_attention_torch", "rmsnorm_torch",
           "rope_store_torch", "silu_mul_torch"]


def rmsnorm_torch(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def head_rmsnorm_torch(x: torch.Tensor, weight: torch.Tensor, eps: float, unit_offset: bool = False) -> torch.Tensor:
    """RMSNorm over the last dim (one head) of x, rounding as HF: Qwen3RMSNorm normalises in
    float32, casts, then multiplies by the weight in x's dtype; with `unit_offset`
    (Gemma3RMSNorm) the float32 normed x is times (1 + weight) in float32, cast once."""
    y = x.float()
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    if unit_offset:
        return (y * (1.0 + weight.float())).to(x.dtype)
    return weight * y.to(x.dtype)


def rope_store_torch(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    k_out: torch.Tensor,
    v_out: torch.Tensor,
    num_q_heads: int,
    qk_norm=None,
) -> torch.Tensor:
    """qk_norm: a `kernels.QKNorm` (per-head RMSNorm of q and k before RoPE) or None."""
    t = qkv.shape[0]
    num_kv, d = k_out.shape[1], k_out.shape[2]
    q = qkv[:, : num_q_heads * d].view(t, num_q_heads, d)
    k = qkv[:, num_q_heads * d : (num_q_heads + num_kv) * d].view(t, num_kv, d)
    if qk_norm is not None:
        q = head_rmsnorm_torch(q, qk_norm.q_weight, qk_norm.eps, qk_norm.unit_offset)
        k = head_rmsnorm_torch(k, qk_norm.k_weight, qk_norm.eps, qk_norm.unit_offset)
    v = qkv[:, (num_q_heads + num_kv) * d :].view(t, num_kv, d)
    c = torch.cat((cos, cos), -1)[positions].unsqueeze(1)  # [T, 1, D] in the model dtype
    s = torch.cat((sin, sin), -1)[positions].unsqueeze(1)

    def rot(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x[..., : d // 2], x[..., d // 2 :]
        return torch.cat((-x2, x1), -1)

    k_out.copy_(k * c + rot(k) * s)
    v_out.copy_(v)
    return q * c + rot(q) * s


def silu_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    return gated_act_torch(gate_up, "silu")


_GATED_ACTS = {"silu": torch.nn.functional.silu,
               "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh")}


def gated_act_torch(gate_up: torch.Tensor, activation: str) -> torch.Tensor:
    """act(gate) * up of the fused [T, 2 I] projection, written over the gate half (as HF:
    the activation rounded to the model dtype, then the product)."""
    gate, up = gate_up.chunk(2, dim=-1)
    return gate.copy_(_GATED_ACTS[activation](gate) * up)


def capped_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float,
                           softcap: float = 0.0) -> torch.Tensor:
    """Attention of q [..., M, D] over k / v [..., N, D] where the boolean mask [..., M, N]
    allows; with softcap > 0 the scores are softcap * tanh(scores / softcap) before the mask
    (Gemma-2's eager attention: float32 softmax, probabilities cast to q's dtype)."""
    if not softcap:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    s = torch.tanh(s / softcap) * softcap
    s = s.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype), v)


def packed_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg_start: torch.Tensor, scale: float,
                           softcap: float = 0.0) -> torch.Tensor:
    t, hq, _ = q.shape
    idx = torch.arange(t, device=q.device)
    mask = (idx[None, :] >= seg_start[:, None]) & (idx[None, :] <= idx[:, None])
    rep = hq // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)
    vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)
    out = capped_attention_torch(q.transpose(0, 1), kk, vv, mask, scale, softcap)
    return out.transpose(0, 1)
