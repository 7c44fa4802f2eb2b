"""Tiny random-weight models of every causal-LM type the installed transformers knows
(no tests here): `causal_lm_types()`, `build_tiny(model_type) -> model | skip reason`.

Shrinking is generic: every size field a config may carry under any of its usual names
(hidden size, layers, heads, intermediate sizes, vocabulary, experts, LoRA ranks, windows,
...) is set small, and every per-layer list (layer_types, mlp_layer_types, ...) is cut to
the layers kept, one layer of each distinct kind, so hybrid models keep every kind of
layer. A few types need per-type overrides (`_OVERRIDES`). Types that cannot be built this
way offline (missing packages, remote code, composite configs that do not build) come back
as a skip reason string, never an exception.
"""

from __future__ import annotations

import copy
import warnings
import zlib
from functools import cache
from typing import Any

import torch

VOCAB = 128
MAX_POS = 256
WINDOW = 64  # small windows, still longer than every zoo prompt
TINY_WINDOW = 4  # windows shorter than the zoo's windowed prompts (zoo_check.WINDOWED_LENGTHS)
SPECIAL_IDS = 8  # special token ids (image, audio, ...) moved into the top 8 ids; prompts avoid them

# field -> tiny value, for whichever of these names a config carries
_SHRINK: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 64, "n_embd": 64, "d_model": 64, "dim": 64, "embedding_size": 64,
    "num_attention_heads": 4, "n_head": 4, "num_heads": 4, "n_heads": 4,
    "decoder_attention_heads": 4, "encoder_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "kv_channels": 16,
    "intermediate_size": 128, "n_inner": 128, "ffn_dim": 128, "decoder_ffn_dim": 128,
    "encoder_ffn_dim": 128, "ffn_hidden_size": 128,
    "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32, "shared_intermediate_size": 32,
    "max_position_embeddings": MAX_POS, "n_positions": MAX_POS, "max_seq_len": MAX_POS,
    "num_experts": 4, "n_routed_experts": 4, "num_local_experts": 4, "moe_num_experts": 4,
    "num_experts_per_tok": 2, "num_experts_per_token": 2, "moe_topk": 2, "moe_k": 2,
    "num_layers_per_stack": 1, "zero_expert_num": 2, "expert_ffn_hidden_size": 32,
    "unpadded_vocab_size": VOCAB - SPECIAL_IDS, "shape_vocab_size": VOCAB, "pronunciation_vocab_size": VOCAB,
    "shape_embed_dim": 16, "pronunciation_embed_dim": 16,
    "n_group": 1, "topk_group": 1, "num_expert_group": 1,
    "q_lora_rank": 16, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
    "v_head_dim": 16, "qk_head_dim": 16,
    "sliding_window": WINDOW, "attention_chunk_size": WINDOW, "window_size": WINDOW,
    "sliding_window_size": WINDOW,
    "linear_key_head_dim": 16, "linear_value_head_dim": 16, "linear_num_key_heads": 2,
    "linear_num_value_heads": 4, "linear_head_dim": 16, "linear_num_heads": 4,
    "mamba_d_state": 16, "mamba_n_heads": 4, "mamba_d_head": 16, "mamba_n_groups": 1,
    "mamba_expand": 2, "state_size": 16, "mamba_chunk_size": 16, "chunk_size": 16,
    "index_topk": 16, "index_head_dim": 16, "index_n_heads": 2,
    "hidden_size_per_layer_input": 8, "intermediate_size_mlp": 128, "vocab_size_per_layer_input": VOCAB,
    "swa_num_attention_heads": 4, "swa_num_key_value_heads": 2, "swa_head_dim": 16,
    "attention_hidden_size": 64, "num_dense_layers": 1, "first_k_dense_replace": 1,
    "num_nextn_predict_layers": 0, "num_kv_shared_layers": 0, "rotary_dim": 8,
}
_LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "decoder_layers", "encoder_layers")
_SEED = 0
_MAX_PARAMS = 5_000_000


def causal_lm_types() -> list[str]:
    """Every model type in the installed transformers' causal-LM auto mapping, sorted."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _num_layers(values: dict[str, Any]) -> tuple[str, int] | None:
    for name in _LAYER_FIELDS:
        if isinstance(values.get(name), int) and values[name] > 0:
            return name, values[name]
    return None


def _shrink(values: dict[str, Any]) -> dict[str, Any]:
    """Tiny values for one config's fields (a dict from `to_dict()`), sub-configs included."""
    out = dict(values)
    for key, tiny in _SHRINK.items():
        if isinstance(out.get(key), int) and not isinstance(out.get(key), bool) and out[key] > 0:
            out[key] = min(out[key], tiny) if key in ("num_nextn_predict_layers",) else tiny
        elif isinstance(out.get(key), list) and out[key] and all(isinstance(v, int) for v in out[key]):
            out[key] = [tiny] * len(out[key])  # per-layer sizes (Gemma 3n's intermediate_size)
    for key in ("head_dim", "num_key_value_heads"):  # None = derived from the default sizes
        if key in out and out[key] is None and "num_attention_heads" in out:
            out[key] = _SHRINK[key]
    if "n_routed_experts" in out and out["n_routed_experts"] is None and out.get("moe_intermediate_size"):
        out["n_routed_experts"] = _SHRINK["n_routed_experts"]  # dots1: set by real configs
        if out.get("n_shared_experts", 0) is None:
            out["n_shared_experts"] = 1
    if out.get("num_experts_per_tok", 0) is None and out.get("n_routed_experts"):  # DeepSeek-V2: set by real configs
        out["num_experts_per_tok"] = _SHRINK["num_experts_per_tok"]
    layers = _num_layers(values)
    if layers is not None:
        _, n = layers
        # lists of layer indices (Llama 4's moe_layers = [0, 1, ..., 47]): renumbered below, not kinds
        index_lists = {
            k: v for k, v in values.items()
            if k.endswith("_layers") and isinstance(v, list) and v and all(type(i) is int for i in v)
            and v[0] >= 0 and all(a < b for a, b in zip(v, v[1:] + [n]))
        }  # fmt: skip
        per_layer = {
            k: v for k, v in values.items() if isinstance(v, list) and len(v) == n and n > 1 and k not in index_lists
        }
        keep: list[int] = []
        for v in per_layer.values():
            firsts: dict[Any, int] = {}
            for i, kind in enumerate(v):
                firsts.setdefault(repr(kind), i)
            if len(firsts) > len(keep):
                keep = sorted(firsts.values())
        keep = keep or [0, 1]
        if len(keep) < 2:
            keep = [keep[0], keep[0] + 1 if keep[0] + 1 < n else keep[0]]
        for name in _LAYER_FIELDS:
            if isinstance(out.get(name), int) and out[name] > 0:
                out[name] = len(keep)
        for k, v in per_layer.items():
            out[k] = [out[k][i] for i in keep]  # out: per-layer sizes already shrunk
        for k, v in index_lists.items():
            out[k] = [j for j, i in enumerate(keep) if i in v]
        for k, v in values.items():  # {layer index: settings} maps (Gemma 4's per_layer_config)
            if isinstance(v, dict) and v and all(str(i).isdigit() for i in v):
                out[k] = {j: v[i] for j, i in enumerate(keep) if i in v or str(i) in v for i in [i if i in v else str(i)]}
    for key, value in values.items():
        if key.endswith(("_token_id", "_token_index")) and isinstance(value, int) and value >= VOCAB:
            out[key] = VOCAB - 1 - zlib.crc32(key.encode()) % SPECIAL_IDS  # stable across processes
        elif key.endswith(("_token_id", "_token_ids")) and isinstance(value, list):
            out[key] = [v if not isinstance(v, int) or v < VOCAB else VOCAB - 1 for v in value]
        if isinstance(value, dict) and "model_type" in value:
            out[key] = _shrink(value)
    return out


def _overrides(model_type: str, values: dict[str, Any]) -> dict[str, Any]:
    fix = dict(_OVERRIDES.get(model_type, {}))
    if "is_decoder" in values and not values.get("is_encoder_decoder"):
        fix.setdefault("is_decoder", True)  # BERT-style *ForCausalLM / *LMHeadModel need it
    if values.get("kv_lora_rank"):  # multi-head latent attention: no GQA grouping
        fix.setdefault("num_key_value_heads", values.get("num_attention_heads"))
        fix.setdefault("head_dim", _SHRINK["qk_rope_head_dim"])  # RoPE runs over the rope part
    return {**values, **fix}


# Types not even tried: building them (on the meta device) alone costs seconds.
_SKIP: dict[str, str] = {
    "blt": "cannot build tiny: 192645376 parameters after shrinking (nested patcher / encoder / decoder configs)",
}

# Per-type fixes the generic shrink cannot guess.
_OVERRIDES: dict[str, dict[str, Any]] = {
    "xmod": {"default_language": "en_XX"},  # X-MOD's forward needs a language for its adapters
    # HRM's cache has num_layers_per_stack * H_cycles * (L_cycles + 1) slots = num_hidden_layers
    "hrm_text": {"H_cycles": 1, "L_cycles": 1, "L_bp_cycles": [1]},
}


def _config_and_size(cls: type, values: dict[str, Any]) -> tuple[Any, int]:
    """The config from `values` and its model's parameter count (built on the meta device)."""
    from transformers import AutoModelForCausalLM

    config = cls(**copy.deepcopy(values))
    with torch.device("meta"):
        return config, sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())


def _with_window(values: dict[str, Any], window: int) -> dict[str, Any]:
    """`values` with every window field the shrink set to WINDOW set to `window` (sub-configs too)."""
    out = dict(values)
    for key, value in values.items():
        if key in _WINDOW_FIELDS and value == WINDOW:
            out[key] = window
        elif isinstance(value, dict) and "model_type" in value:
            out[key] = _with_window(value, window)
    return out


_WINDOW_FIELDS = ("sliding_window", "attention_chunk_size", "window_size", "sliding_window_size")


@cache
def build_tiny(model_type: str, window: int = WINDOW) -> torch.nn.Module | str:
    """A tiny fp32 eval-mode model of `model_type` (fixed seed), or why it cannot be built;
    `window`: the local-attention span its window fields get (TINY_WINDOW: shorter than the
    zoo's windowed prompts)."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    if model_type in _SKIP:
        return _SKIP[model_type]
    try:
        cls = CONFIG_MAPPING[model_type]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                values = cls().to_dict()
            except Exception:  # noqa: BLE001 - some defaults do not validate; start from nothing
                values = {}
            tiny = _overrides(model_type, _shrink(values))
            if window != WINDOW:
                tiny = _with_window(tiny, window)
            for k in ("transformers_version", "architectures", "model_type", "_name_or_path", "dtype"):
                tiny.pop(k, None)
            try:
                config, params = _config_and_size(cls, tiny)
            except Exception:  # noqa: BLE001 - some configs do not round-trip to_dict(): pass only what changed
                config, params = _config_and_size(cls, {k: v for k, v in tiny.items() if values.get(k) != v})
            if params > _MAX_PARAMS:
                return f"cannot build tiny: {params} parameters after shrinking"
            torch.manual_seed(_SEED)
            model = AutoModelForCausalLM.from_config(config)
    except ImportError as exc:
        return f"needs a package: {str(exc).splitlines()[0][:120]}"
    except Exception as exc:  # noqa: BLE001 - any failure to build is a skip with its reason
        return f"cannot build tiny: {type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return model.float().eval()
