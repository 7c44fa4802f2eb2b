"""Per-family constants of the engine's layer math (`EngineFamily`), read once from a model
that `engine.support` accepted: multipliers, norm placement and offsets, the MLP's shape and
activation, QK-norm, and what the RoPE needs (interleaved pairs, layers without RoPE).
`weights.fuse_layer` and `rope.rope_plan` apply them; `forward` and `decode` run them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ACTIVATIONS", "FAMILY_NORMS", "NORM_LAYOUTS", "PARAM_ACTIVATIONS", "QK_NORM_NAMES", "EngineFamily", "act_params",
           "engine_family", "layer_ropes", "mlp_activation", "mlp_gated", "mlp_projections", "norm_weight", "qk_norms", "xielu"]

# the engine's MLP activations: act(gate) * up where the MLP is gated, act(up) where not
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu2": lambda x: torch.square(F.relu(x)),
}
# activations with learned per-layer parameters, known by their module's class: name -> class
PARAM_ACTIVATIONS = {"xielu": "XIELUActivation"}  # Apertus

# Where a layer's norms sit, by the layer's attribute names: (before attention, after
# attention (on its output, before the residual add), before the MLP, after the MLP); None = no norm there.
NORM_LAYOUTS: dict[str, tuple[str | None, str | None, str | None, str | None]] = {
    "pre": ("input_layernorm", None, "post_attention_layernorm", None),  # Llama
    "post": (None, "post_attention_layernorm", None, "post_feedforward_layernorm"),  # OLMo 2 / 3, EXAONE 4
    "sandwich": ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                 "post_feedforward_layernorm"),  # Gemma 3
    "glm4": ("input_layernorm", "post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm"),
    "apertus": ("attention_layernorm", None, "feedforward_layernorm", None),
    "peri": ("input_layernorm", "post_norm1", "post_attention_layernorm", "post_norm2"),  # HyperCLOVA X
}
FAMILY_NORMS = {"Olmo2": "post", "Olmo3": "post", "Exaone4": "post", "Gemma3": "sandwich", "Glm4": "glm4",
                "Apertus": "apertus", "Apertus1p5Text": "apertus", "HyperCLOVAX": "peri"}
_INTERLEAVED = frozenset({"Helium", "Ernie4_5", "Glm", "Glm4"})  # RoPE pairs (2i, 2i + 1)
_QK_NORM_AFTER_ROPE = frozenset({"HunYuanDenseV1", "NanoChat"})  # QK-norm of the roped q and k
_NEGATED_SIN = frozenset({"NanoChat"})  # rotate_half as (x2, -x1): RoPE by -angle
QK_NORM_NAMES = (("q_norm", "k_norm"), ("query_layernorm", "key_layernorm"))  # attention attributes


def _exaone4_ropes(attn: torch.nn.Module) -> bool:  # with a sliding window, only the sliding layers rope
    return attn.sliding_window is None or bool(attn.is_sliding)


# families with layers that apply no RoPE: whether a layer's attention does, read from the module
_LAYER_ROPES: dict[str, Callable[[torch.nn.Module], bool]] = {
    "SmolLM3": lambda attn: bool(attn.use_rope),
    "Exaone4": _exaone4_ropes,
}


@dataclass(frozen=True)
class EngineFamily:
    """Per-family constants of the layer math, read once from the model (`engine_family`);
    the defaults are Llama's (Mistral, Qwen2 alike). What the engine's forward and decode
    step apply on top of the Llama layer:

    embed_scale:    the embedding output times this (Granite's / HyperCLOVA X's embedding_multiplier;
                    Gemma's sqrt(hidden), rounded to the model dtype as HF does)
    residual_scale: the attention and MLP outputs times this before the residual add
                    (Granite's residual_multiplier; the alpha of the O / down addmm_)
    attn_scale:     the attention softmax scale (Granite's attention_multiplier, Gemma 3's
                    query_pre_attn_scalar ** -0.5); None = head_dim ** -0.5
    logits_divisor: logits divided by this (Granite's logits_scaling)
    logits_multiplier: logits times this (HyperCLOVA X's logits_scaling)
    norm_offset:    RMSNorm weights applied as (offset + w) (Gemma, Gemma 3: 1), QK-norms included
    activation:     the MLP's activation (`ACTIVATIONS`, probed from its module, or one of
                    `PARAM_ACTIVATIONS` with the layer's own parameters: `mlp_activation`)
    gated:          act(gate) * up (gate_proj or gate_up_proj); False: act(up) (Arcee's ReLU^2)
    qk_norm:        RMSNorm of q and k before RoPE, with `qk_eps`: over each head (Qwen3,
                    EXAONE 4, Gemma 3) or over the whole projection (OLMo 2 / 3), as the norm
                    weight's size says
    qk_norm_after_rope: the QK-norm is applied to roped q and k instead (HunYuan, per head)
    norms:          where the layer's norms sit (`NORM_LAYOUTS`)
    interleaved_rope: RoPE over pairs (2i, 2i + 1) (computed through a head-dim permutation: `rope`)
    rope_sin_negated: RoPE rotates by minus the angle (NanoChat's rotate_half): the tables' sin negated
    embed_norm:     the embeddings RMS-normed by the final norm before the first layer (NanoChat)
    final_softcap:  logits soft-capped as cap * tanh(logits / cap) (NanoChat's
                    final_logit_softcapping; torch ops on the last positions only); None = not
    eps:            the decoder norms' epsilon
    """

    name: str = "Llama"
    embed_scale: float = 1.0
    residual_scale: float = 1.0
    attn_scale: float | None = None
    logits_divisor: float = 1.0
    logits_multiplier: float = 1.0
    norm_offset: float = 0.0
    activation: str = "silu"
    gated: bool = True
    qk_norm: bool = False
    qk_norm_after_rope: bool = False
    qk_eps: float = 1e-6
    eps: float = 1e-6
    norms: str = "pre"
    interleaved_rope: bool = False
    rope_sin_negated: bool = False
    embed_norm: bool = False
    final_softcap: float | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS and self.activation not in PARAM_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS) + sorted(PARAM_ACTIVATIONS)}, "
                             f"got {self.activation!r}")
        if self.norms not in NORM_LAYOUTS:
            raise ValueError(f"norms must be one of {sorted(NORM_LAYOUTS)}, got {self.norms!r}")
        for field in ("embed_scale", "residual_scale", "logits_divisor", "logits_multiplier", "eps", "qk_eps"):
            if not getattr(self, field) > 0:
                raise ValueError(f"{field} must be > 0, got {getattr(self, field)!r}")
        if self.final_softcap is not None and not self.final_softcap > 0:
            raise ValueError(f"final_softcap must be > 0 or None, got {self.final_softcap!r}")
        if self.attn_scale is not None and not self.attn_scale > 0:
            raise ValueError(f"attn_scale must be > 0 or None, got {self.attn_scale!r}")


def mlp_activation(mlp: torch.nn.Module) -> str | None:
    """Which of `ACTIVATIONS` the MLP's activation module computes (probed on a grid of
    values, whatever the config calls it: hidden_act, activation_function, ...), or which of
    `PARAM_ACTIVATIONS` its class is; None for any other."""
    fn = getattr(mlp, "act_fn", None) or getattr(mlp, "activation_fn", None)
    if not callable(fn):
        return None
    named = next((name for name, cls in PARAM_ACTIVATIONS.items() if type(fn).__name__ == cls), None)
    if named is not None:
        return named
    x = torch.linspace(-6.0, 6.0, 97)
    with torch.no_grad():
        try:
            y = fn(x)
        except Exception:  # noqa: BLE001 - an activation we cannot probe is one we do not know
            return None
    return next((name for name, ref in ACTIVATIONS.items()
                 if isinstance(y, torch.Tensor) and y.shape == x.shape and torch.allclose(y, ref(x))), None)


def xielu(x: torch.Tensor, alpha_p: torch.Tensor, alpha_n: torch.Tensor, beta: torch.Tensor,
          eps: torch.Tensor) -> torch.Tensor:
    """xIELU (Apertus) with a layer's parameters, as transformers' XIELUActivation computes it
    in Python: x > 0: a_p x^2 + beta x; else (expm1(min(x, eps)) - x) a_n + beta x, with
    a_p = softplus(alpha_p), a_n = beta + softplus(alpha_n)."""
    a_p = F.softplus(alpha_p)
    a_n = beta + F.softplus(alpha_n)
    return torch.where(x > 0, a_p * x * x + beta * x, (torch.expm1(torch.min(x, eps)) - x) * a_n + beta * x)


def act_params(mlp: torch.nn.Module, family: EngineFamily) -> tuple[torch.Tensor, ...] | None:
    """The layer's own activation parameters where the family's activation has some (xIELU:
    alpha_p, alpha_n, beta, eps), else None."""
    if family.activation != "xielu":
        return None
    act = mlp.act_fn
    return (act.alpha_p, act.alpha_n, act.beta, act.eps)


def mlp_projections(mlp: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The MLP's (up, down) projections: up_proj / down_proj, or NanoChat's fc1 / fc2."""
    if hasattr(mlp, "fc1"):
        return mlp.fc1, mlp.fc2
    return mlp.up_proj, mlp.down_proj


def mlp_gated(mlp: torch.nn.Module) -> bool:
    """Whether the MLP is gated (act(gate) * up): it has a gate projection, alone or fused."""
    return hasattr(mlp, "gate_proj") or hasattr(mlp, "gate_up_proj")


def qk_norms(attn: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The attention's (query, key) norm modules, under either name pair (`QK_NORM_NAMES`), or None."""
    for q_name, k_name in QK_NORM_NAMES:
        if hasattr(attn, q_name):
            return getattr(attn, q_name), getattr(attn, k_name)
    return None


def _eps(norm: torch.nn.Module) -> float:
    return float(getattr(norm, "variance_epsilon", None) or norm.eps)


def family_name(model: torch.nn.Module) -> str:
    """The family of `model`: its decoder layer's class name without "DecoderLayer"."""
    return type(model.model.layers[0]).__name__.removesuffix("DecoderLayer")


def engine_family(model: torch.nn.Module) -> EngineFamily:
    """The constants of `model`'s family (`engine.support` has already accepted the model)."""
    cfg, inner = model.config, model.model
    layer = inner.layers[0]
    name = family_name(model)
    dtype = inner.embed_tokens.weight.dtype
    kw: dict[str, Any] = {"norms": FAMILY_NORMS.get(name, "pre"), "interleaved_rope": name in _INTERLEAVED,
                          "rope_sin_negated": name in _NEGATED_SIN}
    if name == "Granite":
        kw |= {"embed_scale": float(cfg.embedding_multiplier), "residual_scale": float(cfg.residual_multiplier),
               "attn_scale": float(cfg.attention_multiplier), "logits_divisor": float(cfg.logits_scaling)}
    elif name == "HyperCLOVAX":  # Granite's multipliers, but logits are multiplied
        kw |= {"embed_scale": float(cfg.embedding_multiplier), "residual_scale": float(cfg.residual_multiplier),
               "attn_scale": float(cfg.attention_multiplier), "logits_multiplier": float(cfg.logits_scaling)}
    elif name == "NanoChat":
        kw |= {"embed_norm": True, "final_softcap": cfg.final_logit_softcapping}
    elif name == "Gemma":
        kw |= {"embed_scale": float(torch.tensor(cfg.hidden_size**0.5, dtype=dtype)), "norm_offset": 1.0}
    elif name == "Gemma3":  # the embedding's own scale buffer, in the weight dtype as it multiplies
        kw |= {"embed_scale": float(inner.embed_tokens.embed_scale.to(dtype)), "norm_offset": 1.0,
               "attn_scale": float(cfg.query_pre_attn_scalar) ** -0.5}
    norms = qk_norms(layer.self_attn)
    if norms is not None:
        kw |= {"qk_norm": True, "qk_eps": _eps(norms[0]), "qk_norm_after_rope": name in _QK_NORM_AFTER_ROPE}
    act = mlp_activation(layer.mlp)
    if act is None:
        raise ValueError(f"the engine's MLP activations are {', '.join([*ACTIVATIONS, *PARAM_ACTIVATIONS])}; "
                         f"{type(layer.mlp).__name__}'s is not")
    return EngineFamily(name=name, activation=act, gated=mlp_gated(layer.mlp), eps=_eps(inner.norm), **kw)


def layer_ropes(model: torch.nn.Module, family: EngineFamily) -> list[bool]:
    """For each decoder layer, whether its attention applies RoPE (all but the NoPE layers
    of the families in `_LAYER_ROPES`)."""
    rule = _LAYER_ROPES.get(family.name)
    return [True if rule is None else rule(layer.self_attn) for layer in model.model.layers]


def norm_weight(norm: torch.nn.Module, family: EngineFamily, like: torch.Tensor) -> torch.Tensor:
    """An RMSNorm module's weight as the engine's kernels apply it (weight * normed): its
    weight, or a new (offset + weight) tensor for families that store the offset apart
    (Gemma), or ones for a norm without a weight (NanoChat: times 1 is exact), sized by the
    norm's input: [hidden], [D] or [H D], like `like`'s last dim, dtype and device."""
    weight = getattr(norm, "weight", None)
    if weight is None:
        return torch.ones(like.shape[-1], dtype=like.dtype, device=like.device)
    if family.norm_offset == 0.0:
        return weight
    with torch.no_grad():
        return (weight.float() + family.norm_offset).to(weight.dtype)
