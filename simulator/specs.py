"""Model shapes: the `ModelSpec` dataclass, the built-in table of real shapes, and
`ModelSpec.from_hf_config`.

A `ModelSpec` holds only what the prefill cost depends on: layer count, widths, head
counts (GQA), MLP size and kind, vocabulary and the bytes of parameters and activations.
Nothing here imports torch; `from_hf_config` duck-types a transformers config or a dict.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Mapping

from simulator.lookup import lookup

__all__ = ["ModelSpec", "MODELS", "get_model", "available_models"]

# HF `model_type`s whose MLP is a plain up/down projection (no gate). Everything else
# we accept (llama, mistral, qwen2, ...) uses a gated (SwiGLU) MLP.
_UNGATED_MODEL_TYPES = frozenset({"gpt2", "opt", "gpt_neox", "bloom", "falcon", "gptj", "phi"})
# "auto" (load as the checkpoint says) is taken as bf16, what current checkpoints ship.
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4, "float8_e4m3fn": 1, "auto": 2}


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a decoder-only transformer, as the prefill cost model sees it.

    Fields: num_layers, hidden_size, num_heads, num_kv_heads (GQA: divides num_heads),
    head_dim, intermediate_size, gated_mlp (SwiGLU: 3 matrices, else 2), vocab_size,
    tie_word_embeddings, max_position_tokens, param_bytes and activation_bytes (bytes
    per element: 2 for bf16). All positive; `ValueError` otherwise.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_mlp: bool = True
    tie_word_embeddings: bool = False
    max_position_tokens: int = 4096
    param_bytes: int = 2
    activation_bytes: int = 2

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"ModelSpec.{f.name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"ModelSpec {self.name!r}: num_heads {self.num_heads} is not a multiple of "
                f"num_kv_heads {self.num_kv_heads}"
            )

    # -- derived sizes (cached: the spec is frozen) -----------------------------------
    @cached_property
    def q_width(self) -> int:
        """num_heads x head_dim (the query / attention-output width)."""
        return self.num_heads * self.head_dim

    @cached_property
    def kv_width(self) -> int:
        """num_kv_heads x head_dim (the width of K and of V)."""
        return self.num_kv_heads * self.head_dim

    @cached_property
    def layer_matmul_params(self) -> int:
        """Weights one token multiplies in one layer:
        h*q_width (Q) + 2*h*kv_width (K, V) + q_width*h (O) + (3 if gated else 2)*h*I (MLP)."""
        h = self.hidden_size
        attn = 2 * h * self.q_width + 2 * h * self.kv_width
        mlp = (3 if self.gated_mlp else 2) * h * self.intermediate_size
        return attn + mlp

    @cached_property
    def num_params(self) -> int:
        """All parameters: layers (matmuls + 2 norms) + final norm + embeddings (+ untied LM head)."""
        h = self.hidden_size
        embed = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (self.layer_matmul_params + 2 * h) + h + embed

    @cached_property
    def weight_bytes(self) -> int:
        return self.num_params * self.param_bytes

    @cached_property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer for one token: 2 * layers * kv_width * activation_bytes."""
        return 2 * self.num_layers * self.kv_width * self.activation_bytes

    # -- construction ----------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, config: Any, name: str | None = None) -> "ModelSpec":
        """Build a spec from a transformers `PretrainedConfig` (LlamaConfig, MistralConfig,
        Qwen2Config, ...) or a plain dict of its fields. Reads attributes only, so it
        never imports torch. Missing required fields raise `ValueError` naming them."""
        get = config.get if isinstance(config, Mapping) else lambda k, d=None: getattr(config, k, d)
        missing = [
            k
            for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
            if get(k) is None
        ]
        if missing:
            raise ValueError(f"config lacks {', '.join(missing)}: not a decoder config this simulator understands")
        hidden = int(get("hidden_size"))
        heads = int(get("num_attention_heads"))
        head_dim = get("head_dim") or hidden // heads
        # transformers 5 names it `dtype` (reading the deprecated `torch_dtype` warns)
        has_dtype = "dtype" in config if isinstance(config, Mapping) else hasattr(config, "dtype")
        dtype = (get("dtype") if has_dtype else get("torch_dtype")) or "bfloat16"
        dtype_name = str(dtype).removeprefix("torch.")
        if dtype_name not in _DTYPE_BYTES:
            raise ValueError(f"config dtype {dtype!r} is not one of {sorted(_DTYPE_BYTES)}")
        model_type = str(get("model_type", "") or "")
        return cls(
            name=name or get("name_or_path") or get("_name_or_path") or model_type or "hf-config",
            num_layers=int(get("num_hidden_layers")),
            hidden_size=hidden,
            num_heads=heads,
            num_kv_heads=int(get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            intermediate_size=int(get("intermediate_size")),
            vocab_size=int(get("vocab_size")),
            gated_mlp=model_type not in _UNGATED_MODEL_TYPES,
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            max_position_tokens=int(get("max_position_embeddings") or 4096),
            param_bytes=_DTYPE_BYTES[dtype_name],
            activation_bytes=_DTYPE_BYTES[dtype_name],
        )


def _spec(name: str, layers: int, hidden: int, heads: int, kv: int, inter: int, vocab: int, ctx: int) -> ModelSpec:
    return ModelSpec(
        name=name,
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=hidden // heads,
        intermediate_size=inter,
        vocab_size=vocab,
        max_position_tokens=ctx,
    )


# Shapes from each model's published config.json (bf16, gated SwiGLU MLP, untied LM head).
MODELS: dict[str, ModelSpec] = {
    s.name: s
    for s in (
        _spec("sheared-llama-1.3b", 24, 2048, 16, 16, 5504, 32000, 4096),
        _spec("llama-2-7b", 32, 4096, 32, 32, 11008, 32000, 4096),
        _spec("llama-2-13b", 40, 5120, 40, 40, 13824, 32000, 4096),
        _spec("mistral-7b", 32, 4096, 32, 8, 14336, 32000, 32768),
        _spec("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, 8192),
        _spec("qwen2.5-7b", 28, 3584, 28, 4, 18944, 152064, 32768),
        _spec("llama-2-70b", 80, 8192, 64, 8, 28672, 32000, 4096),
        _spec("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, 8192),
    )
}


def available_models() -> list[str]:
    return sorted(MODELS)


def get_model(name: str | ModelSpec) -> ModelSpec:
    """Look a model up in `MODELS` (case-insensitive); a `ModelSpec` passes through.
    Unknown names raise `ValueError` listing the known ones."""
    return name if isinstance(name, ModelSpec) else lookup(MODELS, name, "model")
