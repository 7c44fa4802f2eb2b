"""Engine weights: each decoder layer's projections fused once (QKV and gate/up
concatenated; by default the HF module's own weights become views into the fused tensors,
so no weight memory is duplicated), and the per-family constants of the layer math
(`EngineFamily`: multipliers, norm offsets, activation, QK-norm). Which models the engine
takes is `engine.support`'s decision (through `gpu_runner.support.require_supported`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpu_runner.engine import matmul as mm

__all__ = ["ACTIVATIONS", "EngineFamily", "FusedLayer", "engine_family", "fuse_layer", "mlp_activation", "norm_weight",
           "rebind"]


@dataclass(frozen=True)
class EngineFamily:
    """Per-family constants of the layer math, read once from the model (`engine_family`);
    the defaults are Llama's (Mistral, Qwen2 alike). What the engine's forward and decode
    step apply on top of the Llama layer:

    embed_scale:    the embedding output times this (Granite's embedding_multiplier;
                    Gemma's sqrt(hidden), rounded to the model dtype as HF does)
    residual_scale: the attention and MLP outputs times this before the residual add
                    (Granite's residual_multiplier; the alpha of the O / down addmm_)
    attn_scale:     the attention softmax scale (Granite's attention_multiplier); None =
                    head_dim ** -0.5
    logits_divisor: logits divided by this (Granite's logits_scaling)
    norm_offset:    RMSNorm weights applied as (offset + w) (Gemma: 1)
    activation:     the MLP's act(gate) * up: "silu" or "gelu_tanh" (Gemma's gelu_pytorch_tanh),
                    probed from the MLP's activation module (`mlp_activation`)
    qk_norm:        RMSNorm of q and k before RoPE, with `qk_eps`: over each head (Qwen3) or
                    over the whole projection (OLMo2), as the norm weight's size says
    post_norms:     no pre-norms; the attention and MLP outputs are RMS-normed before the
                    residual add (OLMo2)
    eps:            the decoder norms' epsilon
    """

    name: str = "Llama"
    embed_scale: float = 1.0
    residual_scale: float = 1.0
    attn_scale: float | None = None
    logits_divisor: float = 1.0
    norm_offset: float = 0.0
    activation: str = "silu"
    qk_norm: bool = False
    qk_eps: float = 1e-6
    eps: float = 1e-6
    post_norms: bool = False

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        for field in ("embed_scale", "residual_scale", "logits_divisor", "eps", "qk_eps"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}")
        if self.attn_scale is not None and not self.attn_scale > 0:
            raise ValueError(f"attn_scale must be > 0 or None, got {self.attn_scale!r}")


ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}  # the engine's MLP acts


def mlp_activation(mlp: torch.nn.Module) -> str | None:
    """Which of `ACTIVATIONS` the MLP's activation module computes (probed on a grid of
    values, whatever the config calls it: hidden_act, activation_function, ...), or None."""
    fn = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
    if not callable(fn):
        return None
    x = torch.linspace(-6.0, 6.0, 97)
    with torch.no_grad():
        try:
            y = fn(x)
        except Exception:  # noqa: BLE001 - an activation we cannot probe is one we do not know
            return None
    return next((name for name, ref in ACTIVATIONS.items()
                 if isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, ref(x))), None)


def _eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", None) or norm.eps)


def engine_family(model: torch.nn.Module) -> EngineFamily:
    """The constants of `model`'s family (`engine.support` has already accepted the model)."""
    cfg, inner = model.config, model.model
    layer = inner.layers[0]
    name = type(layer).__name__.removesuffix("DecoderLayer")
    kw: dict = {}
    if name == "Granite":
        kw = {"embed_scale": float(cfg.embedding_multiplier), "residual_scale": float(cfg.residual_multiplier),
              "attn_scale": float(cfg.attention_multiplier), "logits_divisor": float(cfg.logits_scaling)}
    elif name == "Olmo2":
        kw = {"post_norms": True}
    elif name == "Gemma":
        rounded = torch.tensor(cfg.hidden_size**0.5, dtype=inner.embed_tokens.weight.dtype)
        kw = {"embed_scale": float(rounded), "norm_offset": 1.0}
    q_norm = getattr(layer.self_attn, "q_norm", None)
    if q_norm is not None:
        kw.update(qk_norm=True, qk_eps=_eps(q_norm))
    act = mlp_activation(layer.mlp)
    if act is None:
        raise ValueError(f"the engine's MLPs are {' or '.join(ACTIVATIONS)} gated; {type(layer.mlp).__name__} is not")
    return EngineFamily(name=name, activation=act, eps=_eps(inner.norm), **kw)


def norm_weight(weight: torch.Tensor, family: EngineFamily) -> torch.Tensor:
    """An RMSNorm weight as the engine's kernels apply it (weight * normed): `weight`, or a
    new (offset + weight) tensor for families that store the offset apart (Gemma)."""
    if family.norm_offset == 0.0:
        return weight
    with torch.no_grad():
        return (weight.float() + family.norm_offset).to(weight.dtype)


@dataclass(frozen=True)
class FusedLayer:
    """One decoder layer's weights as the engine's forward reads them."""

    ln1: torch.Tensor | None  # pre-attention norm (None: EngineFamily.post_norms)
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    qkv_rope: bool  # the QKV matmul ropes and writes Q and the KV cache itself (matmul.qkv_rope)
    o: torch.Tensor
    ln2: torch.Tensor | None  # pre-MLP norm (None: EngineFamily.post_norms)
    gate_up: torch.Tensor  # [2 I, hidden]
    down: torch.Tensor
    q_norm: torch.Tensor | None = None  # [D] per head or [Hq D] whole (EngineFamily.qk_norm)
    k_norm: torch.Tensor | None = None
    post_attn: torch.Tensor | None = None  # norms of the attention / MLP outputs (post_norms)
    post_mlp: torch.Tensor | None = None


def fuse_layer(layer: torch.nn.Module, share: bool, *, qkv_rope: bool, num_q_heads: int, num_kv_heads: int,
               head_dim: int, family: EngineFamily | None = None) -> FusedLayer:
    """Layer's QKV and gate/up weights concatenated (the HF module's weights rebound as views
    into them when `share`; taken as they are where the model stores them fused: Phi-3's
    qkv_proj / gate_up_proj); qkv_rope: try the QKV-RoPE epilogue (kept where its tiles fit,
    never with a QK-norm, which sits between the projection and RoPE)."""
    family = family or EngineFamily()
    attn, mlp = layer.self_attn, layer.mlp
    fused_qkv_proj = getattr(attn, "qkv_proj", None)
    fused_gate_up = getattr(mlp, "gate_up_proj", None)
    biased = [attn.o_proj, mlp.down_proj] + ([fused_gate_up] if fused_gate_up is not None else
                                             [mlp.gate_proj, mlp.up_proj])
    for m in biased:
        if getattr(m, "bias", None) is not None:
            raise ValueError("unsupported model: an O or MLP projection has a bias (the engine supports QKV biases only)")
    with torch.no_grad():
        if fused_qkv_proj is not None:
            qkv, bias = fused_qkv_proj.weight, fused_qkv_proj.bias
        else:
            projs = [attn.q_proj, attn.k_proj, attn.v_proj]
            qkv = torch.cat([p.weight for p in projs]).contiguous()
            bias = None
            if attn.q_proj.bias is not None:
                bias = torch.cat([p.bias for p in projs]).contiguous()
            if share:
                rebind(projs, qkv, "weight")
                if bias is not None:
                    rebind(projs, bias, "bias")
        if fused_gate_up is not None:
            gate_up = fused_gate_up.weight
        else:
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous()
            if share:
                rebind([mlp.gate_proj, mlp.up_proj], gate_up, "weight")
        probe = torch.empty((1, gate_up.shape[1]), dtype=gate_up.dtype, device=gate_up.device)
        fused_qkv = (qkv_rope and not family.qk_norm
                     and mm.qkv_fusable(probe, qkv, num_q_heads, num_kv_heads, head_dim))
    q_norm = attn.q_norm.weight if family.qk_norm else None
    k_norm = attn.k_norm.weight if family.qk_norm else None
    if family.post_norms:  # OLMo2: post_attention_layernorm norms the attention output
        norms = {"ln1": None, "ln2": None, "post_attn": layer.post_attention_layernorm.weight,
                 "post_mlp": layer.post_feedforward_layernorm.weight}
    else:
        norms = {"ln1": norm_weight(layer.input_layernorm.weight, family),
                 "ln2": norm_weight(layer.post_attention_layernorm.weight, family)}
    return FusedLayer(qkv=qkv, qkv_bias=bias, qkv_rope=fused_qkv, o=attn.o_proj.weight, gate_up=gate_up,
                      down=mlp.down_proj.weight, q_norm=q_norm, k_norm=k_norm, **norms)


def rebind(modules: list[torch.nn.Module], fused: torch.Tensor, name: str) -> None:
    row = 0
    for m in modules:
        p = getattr(m, name)
        n = p.shape[0]
        p.data = fused[row : row + n]
        row += n
