"""What `PrefillEngine` implements, as an allowlist of modules, parameters and config values.

The engine runs its own kernels instead of the model's modules, so anything in a model
that those kernels do not compute would be silently skipped. It is therefore accepted
only when every piece is one it implements, read from the model itself:

  - the decoder layer's family (its class name less "DecoderLayer") is one of
    `ENGINE_FAMILIES` and its attention, MLP, every norm of the family's layout, its
    QK-norms and the final norm are that family's own classes; or the model type is one the
    model-zoo test proved exact through the engine (`support_table.PROVEN["engine"]`: a
    modular copy of a family under its own names); any other subclass or copy may change
    the math: refused;
  - every parameter of a layer is one of: input / post-attention RMSNorm weights, Q/K/V
    projection weights and biases, O projection weight, gate / up / down weights, plus
    what the layer's family adds (`_FAMILY_PARAMS`: QK-norms, fused projections, extra
    norms, xIELU's parameters), so other QK-norms, extra norms, sinks, O or MLP biases,
    experts are refused by name;
  - an MLP activation of `family.ACTIVATIONS` (probed from the activation module) or
    `family.PARAM_ACTIVATIONS` (by class); static RoPE (`_STATIC_ROPE`; over the full head
    except the `_PARTIAL_ROPE` families), no tensor-parallel pretraining split, no logit
    scaling, multipliers or soft-capping except those the family applies (`_FAMILY_FIELDS`),
    no switch of `_OFF_FIELDS` on.

Sliding-window layers are exact only while every prompt fits the window: that is checked per
call (`validate.validate_prompts`, the scorer's request checks, generate's engine path).
`engine_refusal(model)` returns (feature, detail) for the first thing that is not allowed.
"""

from __future__ import annotations

from typing import Any

import torch

from gpu_runner.engine.family import (
    ACTIVATIONS,
    FAMILY_NORMS,
    NORM_LAYOUTS,
    PARAM_ACTIVATIONS,
    QK_NORM_NAMES,
    mlp_activation,
)

__all__ = ["ENGINE_FAMILIES", "engine_refusal"]

ENGINE_FAMILIES = ("Llama", "Mistral", "Qwen2", "Qwen3", "Granite", "Phi3", "Gemma", "Olmo2", "Olmo3", "Exaone4",
                   "Gemma3", "Arcee", "SmolLM3", "Helium", "Ernie4_5", "Glm", "Glm4", "Apertus", "Apertus1p5Text",
                   "HyperCLOVAX", "HunYuanDenseV1", "NanoChat")
_QK_NORM = frozenset({"self_attn.q_norm.weight", "self_attn.k_norm.weight"})
_APERTUS = _QK_NORM | {"attention_layernorm.weight", "feedforward_layernorm.weight",  # pre-norms renamed,
                       "mlp.act_fn.alpha_p", "mlp.act_fn.alpha_n"}  # xIELU's parameters
# what a family adds to the Llama layer (`family.EngineFamily`, `weights.fuse_layer` apply it): parameters ...
_FAMILY_PARAMS = {
    "Qwen3": frozenset({"self_attn.q_norm.weight", "self_attn.k_norm.weight"}),  # per-head QK-norm
    "Phi3": frozenset({"self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight"}),  # stored fused
    "Olmo2": _QK_NORM | {"post_feedforward_layernorm.weight"},  # whole-projection QK-norm, norms after
    "Olmo3": _QK_NORM | {"post_feedforward_layernorm.weight"},  # attention and MLP (OLMo 3, EXAONE 4 alike)
    "Exaone4": _QK_NORM | {"post_feedforward_layernorm.weight"},
    "Gemma3": _QK_NORM | {"pre_feedforward_layernorm.weight", "post_feedforward_layernorm.weight"},
    "Glm": frozenset({"mlp.gate_up_proj.weight"}),
    "Apertus": _APERTUS, "Apertus1p5Text": _APERTUS,
    "HyperCLOVAX": frozenset({"post_norm1.weight", "post_norm2.weight"}),
    "NanoChat": frozenset({"mlp.fc1.weight", "mlp.fc2.weight"}),  # ReLU^2 MLP, weightless norms
    "HunYuanDenseV1": frozenset({"self_attn.query_layernorm.weight", "self_attn.key_layernorm.weight"}),  # after RoPE  # norms of the attention / MLP outputs
    "Glm4": frozenset({"mlp.gate_up_proj.weight", "post_self_attn_layernorm.weight", "post_mlp_layernorm.weight"}),
}
# ... config fields whose values it applies (elsewhere a value other than 1 is refused) ...
_FAMILY_FIELDS = {"Granite": frozenset({"embedding_multiplier", "residual_multiplier", "attention_multiplier",
                                        "logits_scaling"}),
                  "Gemma3": frozenset({"query_pre_attn_scalar"}),
                  "NanoChat": frozenset({"final_logit_softcapping"}),
                  "HyperCLOVAX": frozenset({"embedding_multiplier", "residual_multiplier", "attention_multiplier",
                                            "logits_scaling"})}
# ... families whose base model applies constants of its own (embedding scaling): the base
# model's class must be this one ...
_FAMILY_MODEL = {"Granite": "GraniteModel", "Gemma": "GemmaModel", "Gemma3": "Gemma3TextModel",
                 "HyperCLOVAX": "HyperCLOVAXModel", "NanoChat": "NanoChatModel"}
# ... and those whose RoPE covers part of the head (the rest passes through: `engine.rope`)
_PARTIAL_ROPE = frozenset({"Glm", "Glm4"})
_LAYER_PARAMS = frozenset({
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
    "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
})  # fmt: skip
# RoPE types whose frequencies do not depend on the sequence (dynamic / longrope rescale with
# the length: refused); the engine's tables come from the model's own rotary module (`engine.rope`)
_STATIC_ROPE = {None, "default", "linear", "llama3", "yarn"}
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
_OFF_FIELDS = ("use_bidirectional_attention",)  # must be unset or False


def _rope_params(cfg: Any) -> list[dict]:
    """The config's RoPE parameter dicts: one, or one per layer type (Gemma 3, OLMo 3)."""
    rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
    if not isinstance(rope, dict):
        return []
    nested = [v for v in rope.values() if isinstance(v, dict)]
    return nested if nested and len(nested) == len(rope) else [rope]


def _rotary_dims(rotary: torch.nn.Module | None) -> set[int]:
    """Rotary dims of the model's RoPE module: twice each of its inv_freq buffers' sizes."""
    if rotary is None:
        return set()
    return {b.numel() * 2 for name, b in rotary.named_buffers()
            if name.endswith("inv_freq") and "original" not in name}


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
        known = ", ".join([*ACTIVATIONS, *PARAM_ACTIVATIONS])
        return ("non-SiLU MLP", f"the engine's MLP activations are {known}, this model uses {act!r}")
    for rope in _rope_params(cfg):
        rope_type = rope.get("rope_type", rope.get("type"))
        if rope_type not in _STATIC_ROPE:
            return ("RoPE scaling", f"RoPE type {rope_type!r}: the engine needs static frequencies")
        partial = float(rope.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)) or 1.0)
        if partial != 1.0 and family not in _PARTIAL_ROPE:
            return ("partial RoPE", f"RoPE over part of the head is implemented for {', '.join(sorted(_PARTIAL_ROPE))} only")
    if getattr(cfg, "rope_interleave", False):  # a config switch: interleaving is known per family here
        return ("interleaved RoPE", "the engine interleaves RoPE pairs only for the families that always do")
    for field in _OFF_FIELDS:
        if getattr(cfg, field, False):
            return (field, f"the engine does not implement {field}=True")
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
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
        found = _class_refusal(family, layer, inner)
        if found is not None:
            return found
    if family in _FAMILY_MODEL and type(inner).__name__ != _FAMILY_MODEL[family]:
        return (f"base model {type(inner).__name__}", f"the engine applies {_FAMILY_MODEL[family]}'s constants only")
    dims = _rotary_dims(getattr(inner, "rotary_emb", None))
    if not dims:
        return ("RoPE", "no rotary_emb with inv_freq to build the engine's RoPE tables from")
    others = [n for n, _ in inner.named_children() if "rotary" in n and n != "rotary_emb"]
    if others:  # e.g. a separate local-layer RoPE module: the engine reads rotary_emb only
        return ("RoPE", f"rotary modules besides rotary_emb ({', '.join(others)}) are not read by the engine")
    try:
        from gpu_runner.engine.family import engine_family, layer_ropes

        layer_ropes(model, engine_family(model))
    except (AttributeError, TypeError, ValueError) as exc:  # a NoPE rule this version's modules do not fit
        return ("RoPE", f"which layers apply RoPE cannot be read from the modules ({exc})")
    if dims != {head_dim} and family not in _PARTIAL_ROPE:
        return ("partial RoPE", f"RoPE over {sorted(dims)} of {head_dim} head dims: the engine ropes the whole head")
    return None


def _class_refusal(family: str, layer: torch.nn.Module, inner: torch.nn.Module) -> tuple[str, str] | None:
    """(feature, detail) unless the layer's modules are all of the family's own classes (the
    decoder layer, attention, MLP, every norm of its layout, QK-norms, the final norm)."""
    if family not in ENGINE_FAMILIES:
        name = type(layer).__name__
        return (f"decoder layer {name}", f"the engine implements {' / '.join(ENGINE_FAMILIES)} decoder layers only")
    norms = [n for n in NORM_LAYOUTS[FAMILY_NORMS.get(family, "pre")] if n is not None]
    roles = {"attention": (layer.self_attn, "Attention"), "MLP": (layer.mlp, "MLP"),
             "final norm": (getattr(inner, "norm", None), "RMSNorm")}
    roles |= {f"norm {n}": (getattr(layer, n, None), "RMSNorm") for n in norms}
    roles |= {f"norm {n}": (getattr(layer.self_attn, n), "RMSNorm") for pair in QK_NORM_NAMES for n in pair
              if hasattr(layer.self_attn, n)}
    for role, (module, suffix) in roles.items():
        name = type(module).__name__
        if name != family + suffix:
            return (f"{role} {name}", f"the engine implements {family}'s {family + suffix} there, not {name}")
    return None
