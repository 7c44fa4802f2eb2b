"""What `PrefillEngine` implements, as an allowlist of modules, parameters and config values.

The engine runs its own kernels instead of the model's modules, so anything in a model
that those kernels do not compute would be silently skipped. It is therefore accepted
only when every piece is one it implements, read from the model itself:

  - the decoder layer, attention, MLP and norm classes are those of `ENGINE_FAMILIES`
    (Llama, Mistral, Qwen2, Qwen3, Granite, Phi3, Gemma, Olmo2), or the model type is one the
    model-zoo test proved exact through the engine (`support_table.PROVEN["engine"]`: a
    modular copy of a family under its own names); any other subclass or copy may change
    the math: refused;
  - every parameter of a layer is one of: input / post-attention RMSNorm weights, Q/K/V
    projection weights and biases, O projection weight, gate / up / down weights, plus
    what the layer's family adds (`_FAMILY_PARAMS`: Qwen3's per-head QK-norm, Phi-3's
    fused qkv_proj / gate_up_proj, OLMo2's whole-projection QK-norm and post-norms), so other QK-norms, extra norms, sinks, O or MLP
    biases, experts are refused by name;
  - SiLU or GeLU-tanh gated MLP (probed from the activation module), static RoPE over the full head (default / linear /
    llama3 scaling), no tensor-parallel pretraining split, no logit scaling, multipliers
    or soft-capping except those the family applies (`_FAMILY_FIELDS`: Granite's).

`engine_refusal(model)` returns (feature, detail) for the first thing that is not allowed.
"""

from __future__ import annotations

from typing import Any

import torch

from gpu_runner.engine.weights import ACTIVATIONS, mlp_activation

__all__ = ["ENGINE_FAMILIES", "engine_refusal"]

ENGINE_FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3", "Granite", "Phi3", "Gemma", "Olmo2")
# what a family adds to the Llama layer (`weights.EngineFamily` applies it): parameters ...
_FAMILY_PARAMS = {
    "Qwen3": frozenset({"self_attn.q_norm.weight", "self_attn.k_norm.weight"}),  # per-head QK-norm
    "Phi3": frozenset({"self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"}),  # stored fused
    "Olmo2": frozenset({"self_attn.q_norm.weight", "self_attn.k_norm.weight",  # whole-projection QK-norm,
                        "post_feedforward_layernorm.weight"}),  # norms after attention and MLP
}
# ... config fields whose values it applies (elsewhere a value other than 1 is refused) ...
_FAMILY_FIELDS = {"Granite": frozenset({"embedding_multiplier", "residual_multiplier", "attention_multiplier",
                                        "logits_scaling"})}
# ... and families whose base model applies constants of its own (embedding scaling): the
# base model's class must be the family's
_FAMILY_MODEL = ("Granite", "Gemma")
_LAYER_PARAMS = frozenset({
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
})  # fmt: skip
_STATIC_ROPE = {None, "default", "linear", "llama3"}
_FEATURE_OF_PARAM = (
    ("q_norm", "QK-norm"), ("k_norm", "QK-norm"), ("q_layernorm", "QK-norm"), ("k_layernorm", "QK-norm"),
    ("sinks", "attention sinks"), ("o_proj.bias", "O-projection bias"), ("experts", "mixture of experts"),
    ("router", "mixture of experts"), ("gate.weight", "mixture of experts"),
    ("feedforward_layernorm", "extra norms"), ("post_feedforward", "extra norms"), ("pre_feedforward", "extra norms"),
    ("mlp.gate_proj.bias", "MLP bias"), ("mlp.up_proj.bias", "MLP bias"), ("mlp.down_proj.bias", "MLP bias"),
)  # fmt: skip
_NO_SCALING_FIELDS = (
    "logit_scale", "logits_scaling", "final_logit_softcapping", "attn_logit_softcapping",
    "embedding_multiplier", "residual_multiplier", "attention_multiplier", "query_pre_attn_scalar",
)  # fmt: skip


def _rope_params(cfg: Any) -> dict:
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    return rope if isinstance(rope, dict) else {}


def engine_refusal(model: torch.nn.Module) -> tuple[str, str] | None:
    """(feature, detail) of the first part of `model` the engine does not implement, or None."""
    cfg = model.config
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or len(layers) == 0:
        return ("architecture", "the engine needs a decoder-only model with .model.layers and an lm_head")
    family = type(layers[0]).__name__.removesuffix("DecoderLayer")
    allowed = _LAYER_PARAMS | _FAMILY_PARAMS.get(family, frozenset())
    for layer in layers:  # named features first: they say what is missing
        for pname, _ in layer.named_parameters():
            if pname not in allowed:
                feature = next((f for key, f in _FEATURE_OF_PARAM if key in pname), f"parameter {pname}")
                return (feature, f"the engine has no kernel for the layer parameter {pname!r}")
    if any(mlp_activation(layer.mlp) is None for layer in layers):
        act = getattr(cfg, "hidden_act", None) or type(getattr(layers[0].mlp, "act_fn", None)).__name__
        return ("non-SiLU MLP", f"the engine's MLPs are {' or '.join(ACTIVATIONS)} gated, this model uses {act!r}")
    rope = _rope_params(cfg)
    rope_type = rope.get("rope_type", rope.get("type"))
    if rope_type not in _STATIC_ROPE:
        return ("RoPE scaling", f"RoPE type {rope_type!r}: the engine needs static frequencies")
    if float(rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) or 1.0) != 1.0:
        return ("partial RoPE", "the engine ropes the whole head")
    if getattr(cfg, "rope_interleave", False):
        return ("interleaved RoPE", "the engine applies half-split (rotate_half) RoPE only")
    if (getattr(cfg, "pretraining_tp", 1) or 1) != 1:
        return ("pretraining_tp", "split projections (pretraining_tp > 1) are not implemented")
    for field in _NO_SCALING_FIELDS:
        if field not in _FAMILY_FIELDS.get(family, ()) and getattr(cfg, field, None) not in (None, 1, 1.0):
            return (field, f"the engine does not apply {field}={getattr(cfg, field)!r}")
    from gpu_runner.support_table import PROVEN

    # A type the model-zoo test proved exact through the engine (a modular copy of a family
    # under its own class names: SeedOss, Cwm, ...) passes with its own classes; the checks
    # above and below read what a config can change (parameters, fields, activation, RoPE).
    cloned = str(getattr(cfg, "model_type", "")) in PROVEN.get("engine", ()) and family not in ENGINE_FAMILIES
    for layer in [] if cloned else layers:
        names = {
            "decoder layer": type(layer).__name__,
            "attention": type(getattr(layer, "self_attn", None)).__name__,
            "MLP": type(getattr(layer, "mlp", None)).__name__,
            "norm": type(getattr(layer, "input_layernorm", None) or getattr(layer, "post_feedforward_layernorm", None)).__name__,
            "post-attention norm": type(getattr(layer, "post_attention_layernorm", None)).__name__,
            "final norm": type(getattr(inner, "norm", None)).__name__,
        }
        expected = {
            "decoder layer": "DecoderLayer", "attention": "Attention", "MLP": "MLP", "norm": "RMSNorm",
            "post-attention norm": "RMSNorm", "final norm": "RMSNorm",
        }  # fmt: skip
        for role, name in names.items():
            if name not in {family + expected[role] for family in ENGINE_FAMILIES}:
                return (
                    f"{role} {name}",
                    f"the engine implements {' / '.join(ENGINE_FAMILIES)} {role}s only, not {name}",
                )
    if family in _FAMILY_MODEL and type(inner).__name__ != family + "Model":
        return (f"base model {type(inner).__name__}", f"the engine applies {family}Model's constants only")
    inv_freq = getattr(getattr(inner, "rotary_emb", None), "inv_freq", None)
    if inv_freq is None:
        return ("RoPE", "no rotary_emb.inv_freq to build the engine's RoPE tables from")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if inv_freq.numel() * 2 != head_dim:
        return ("partial RoPE", f"RoPE over {inv_freq.numel() * 2} of {head_dim} head dims: the engine ropes the whole head")
    return None
