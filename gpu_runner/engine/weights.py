"""Engine weights: each decoder layer's projections fused once (QKV and gate/up
concatenated; by default the HF module's own weights become views into the fused tensors,
so no weight memory is duplicated), with what the family's constants (`family.EngineFamily`)
ask of the weights themselves: norm offsets folded in, the layer's norms placed
(`family.NORM_LAYOUTS`), Q / K head dims permuted for the RoPE plan (`rope`), the layer's
RoPE table attached. Which models the engine takes is `engine.support`'s decision (through
`gpu_runner.support.require_supported`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_runner.engine import matmul as mm
from gpu_runner.engine.family import (
    NORM_LAYOUTS,
    EngineFamily,
    act_params,
    mlp_projections,
    norm_weight,
    qk_norms,
)

__all__ = ["FusedLayer", "fuse_layer", "permute_heads", "rebind"]


@dataclass(frozen=True)
class FusedLayer:
    """One decoder layer's weights as the engine's forward reads them. Q / K rows (and the
    QK-norm weights) are in the engine's head-dim order (`rope.RopePlan.perm`)."""

    ln1: torch.Tensor | None  # norm before attention (None: none there, `family.NORM_LAYOUTS`)
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    qkv_rope: bool  # the QKV matmul ropes and writes Q and the KV cache itself (matmul.qkv_rope)
    o: torch.Tensor
    ln2: torch.Tensor | None  # norm before the MLP (None: none there)
    gate_up: torch.Tensor  # [2 I, hidden] gated, [I, hidden] not (EngineFamily.gated)
    down: torch.Tensor
    q_norm: torch.Tensor | None = None  # [D] per head or [Hq D] whole (EngineFamily.qk_norm)
    k_norm: torch.Tensor | None = None
    post_attn: torch.Tensor | None = None  # norms of the attention / MLP outputs
    post_mlp: torch.Tensor | None = None
    cos: torch.Tensor | None = None  # the layer's RoPE table [P, D/2] (`rope.RopePlan`)
    sin: torch.Tensor | None = None
    act_params: tuple[torch.Tensor, ...] | None = None  # the activation's own parameters (xIELU)


def permute_heads(w: torch.Tensor, head_dim: int, perm: torch.Tensor | None) -> torch.Tensor:
    """Rows (or entries) of a per-head tensor [H * D, ...] or [H * D] reordered within each
    head by `perm` (engine dim e takes model dim perm[e]); `w` itself when perm is None."""
    if perm is None:
        return w
    return w.reshape(-1, head_dim, *w.shape[1:]).index_select(1, perm).reshape(w.shape).contiguous()


def _qkv(attn: torch.nn.Module, share: bool, perm: torch.Tensor | None,
         head_dim: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The fused QKV weight and bias with Q / K head dims permuted (a new tensor then: the HF
    modules keep their own weights); shared with the HF modules where nothing is permuted."""
    fused = getattr(attn, "qkv_proj", None)
    if fused is not None:
        weight, bias = fused.weight, fused.bias
        if perm is not None:
            raise ValueError("a fused qkv_proj with permuted RoPE dims is not implemented")
        return weight, bias
    projs = [attn.q_proj, attn.k_proj, attn.v_proj]
    parts = [permute_heads(attn.q_proj.weight, head_dim, perm), permute_heads(attn.k_proj.weight, head_dim, perm),
             attn.v_proj.weight]
    qkv = torch.cat(parts).contiguous()
    bias = None
    if attn.q_proj.bias is not None:
        bias = torch.cat([permute_heads(attn.q_proj.bias, head_dim, perm),
                          permute_heads(attn.k_proj.bias, head_dim, perm), attn.v_proj.bias]).contiguous()
    if share and perm is None:
        rebind(projs, qkv, "weight")
        if bias is not None:
            rebind(projs, bias, "bias")
    return qkv, bias


def fuse_layer(layer: torch.nn.Module, share: bool, *, qkv_rope: bool, num_q_heads: int, num_kv_heads: int,
               head_dim: int, family: EngineFamily | None = None, perm: torch.Tensor | None = None,
               table: tuple[torch.Tensor, torch.Tensor] | None = None) -> FusedLayer:
    """Layer's QKV and gate/up weights concatenated (the HF module's weights rebound as views
    into them when `share` and no head dims are permuted; taken as they are where the model
    stores them fused: Phi-3's qkv_proj / gate_up_proj, GLM's gate_up_proj); perm: the RoPE
    plan's head-dim permutation, applied to Q / K rows, biases and QK-norm weights; table:
    the layer's RoPE (cos, sin). qkv_rope: try the QKV-RoPE epilogue (kept where its tiles
    fit, never with a QK-norm, which sits between the projection and RoPE)."""
    family = family or EngineFamily()
    attn, mlp = layer.self_attn, layer.mlp
    fused_gate_up = getattr(mlp, "gate_up_proj", None)
    up, down = (None, mlp.down_proj) if fused_gate_up is not None else mlp_projections(mlp)
    if fused_gate_up is not None:
        mlp_projs = [fused_gate_up]
    else:
        mlp_projs = [mlp.gate_proj, up] if family.gated else [up]
    for m in [attn.o_proj, down, *mlp_projs]:
        if getattr(m, "bias", None) is not None:
            raise ValueError("unsupported model: an O or MLP projection has a bias (the engine supports QKV biases only)")
    with torch.no_grad():
        qkv, bias = _qkv(attn, share, perm, head_dim)
        if len(mlp_projs) == 1:
            gate_up = mlp_projs[0].weight
        else:
            gate_up = torch.cat([p.weight for p in mlp_projs]).contiguous()
            if share:
                rebind(mlp_projs, gate_up, "weight")
        probe = torch.empty((1, gate_up.shape[1]), dtype=gate_up.dtype, device=gate_up.device)
        fused_qkv = (qkv_rope and not family.qk_norm
                     and mm.qkv_fusable(probe, qkv, num_q_heads, num_kv_heads, head_dim))
        q_norm = k_norm = None
        if family.qk_norm:  # [D] per head, else [H D]: as the weight says (a weightless one is per head)
            q_norm, k_norm = (permute_heads(norm_weight(n, family, qkv[:1, :head_dim]), head_dim, perm)
                              for n in qk_norms(attn))
    ln1, post_attn, ln2, post_mlp = (None if name is None else norm_weight(getattr(layer, name), family, qkv[:1])
                                     for name in NORM_LAYOUTS[family.norms])
    cos, sin = table if table is not None else (None, None)
    return FusedLayer(ln1=ln1, qkv=qkv, qkv_bias=bias, qkv_rope=fused_qkv, o=attn.o_proj.weight, ln2=ln2,
                      gate_up=gate_up, down=down.weight, q_norm=q_norm, k_norm=k_norm,
                      post_attn=post_attn, post_mlp=post_mlp, cos=cos, sin=sin,
                      act_params=act_params(mlp, family))


def rebind(modules: list[torch.nn.Module], fused: torch.Tensor, name: str) -> None:
    row = 0
    for m in modules:
        p = getattr(m, name)
        n = p.shape[0]
        p.data = fused[row : row + n]
        row += n
