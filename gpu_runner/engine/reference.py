"""Torch versions of the engine's kernels: what runs where Triton cannot (no Triton, CPU
without the interpreter), and the reference the Triton kernels are tested against.
Same contracts as the kernels in `kernels.py` of the same name (without `_torch`)."""

from __future__ import annotations

import torch

__all__ = ["packed_attention_torch", "rmsnorm_torch", "rope_store_torch", "silu_mul_torch"]


def rmsnorm_torch(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x.to(h.dtype)


def rope_store_torch(
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


def silu_mul_torch(gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return gate.copy_(torch.nn.functional.silu(gate) * up)


def packed_attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg_start: torch.Tensor, scale: float) -> torch.Tensor:
    t, hq, _ = q.shape
    idx = torch.arange(t, device=q.device)
    mask = (idx[None, :] >= seg_start[:, None]) & (idx[None, :] <= idx[:, None])
    rep = hq // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)
    vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)
