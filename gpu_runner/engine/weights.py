"""Engine weights: each decoder layer's projections fused once (QKV and gate/up concatenated; by default the HF module's own weights become
views into the fused tensors, so no weight memory is duplicated). Which models the engine
takes is `engine.support`'s decision (through `gpu_runner.support.require_supported`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_runner.engine import matmul as mm

__all__ = ["FusedLayer", "fuse_layer", "rebind"]

@dataclass(frozen=True)
class FusedLayer:
    """One decoder layer's weights as the engine's forward reads them."""

    ln1: torch.Tensor
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    qkv_rope: bool  # the QKV matmul ropes and writes Q and the KV cache itself (matmul.qkv_rope)
    o: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor  # [2 I, hidden]
    down: torch.Tensor


def fuse_layer(layer: torch.nn.Module, share: bool, *, qkv_rope: bool, num_q_heads: int, num_kv_heads: int,
               head_dim: int) -> FusedLayer:
    """Layer's QKV and gate/up weights concatenated (the HF module's weights rebound as views
    into them when `share`); qkv_rope: try the QKV-RoPE epilogue (kept where its tiles fit)."""
    attn, mlp = layer.self_attn, layer.mlp
    for name, m in (("o_proj", attn.o_proj), ("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj),
                    ("down_proj", mlp.down_proj)):
        if getattr(m, "bias", None) is not None:
            raise ValueError(f"unsupported model: {name} has a bias (the engine supports QKV biases only)")
    projs = [attn.q_proj, attn.k_proj, attn.v_proj]
    with torch.no_grad():
        qkv = torch.cat([p.weight for p in projs]).contiguous()
        bias = None
        if attn.q_proj.bias is not None:
            bias = torch.cat([p.bias for p in projs]).contiguous()
        gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous()
        if share:
            rebind(projs, qkv, "weight")
            if bias is not None:
                rebind(projs, bias, "bias")
            rebind([mlp.gate_proj, mlp.up_proj], gate_up, "weight")
        probe = torch.empty((1, gate_up.shape[1]), dtype=gate_up.dtype, device=gate_up.device)
        fused_qkv = qkv_rope and mm.qkv_fusable(probe, qkv, num_q_heads, num_kv_heads, head_dim)
    return FusedLayer(ln1=layer.input_layernorm.weight, qkv=qkv, qkv_bias=bias, qkv_rope=fused_qkv, o=attn.o_proj.weight,
                  ln2=layer.post_attention_layernorm.weight, gate_up=gate_up, down=mlp.down_proj.weight)


def rebind(modules: list[torch.nn.Module], fused: torch.Tensor, name: str) -> None:
    row = 0
    for m in modules:
        p = getattr(m, name)
        n = p.shape[0]
        p.data = fused[row : row + n]
        row += n
