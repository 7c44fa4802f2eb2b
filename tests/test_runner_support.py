"""Shared helpers for the gpu_runner tests (no tests here): tiny random-weight GQA models,
random prompts, and the per-prompt reference (plain transformers, unpadded, one prompt)."""

from __future__ import annotations

import random
from functools import cache

import torch

from gpu_runner.attention import BACKENDS, AttentionBackend, register_backend, varlen_forward_kwargs
from gpu_runner.cache import cache_layers_kv, output_cache
from gpu_runner.attention.varlen import reference_varlen_attn, reference_varlen_attn_legacy, register_varlen_attention

VOCAB = 96
MAX_POS = 128
FAMILIES = ("llama", "mistral", "qwen2")

# Tight fp32 tolerances: packed and unpadded runs differ only in summation order.
FP32_TOL = {"atol": 1e-4, "rtol": 1e-4}


def model_config(family: str, **overrides):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    cls = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[family]
    params = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # GQA
        max_position_embeddings=MAX_POS,
        attn_implementation="sdpa",
    )
    params.update(overrides)
    return cls(**params)


@cache
def tiny_model(family: str, attn: str = "sdpa", dtype: torch.dtype = torch.float32, device: str = "cpu"):
    """A tiny random-weight causal LM of `family` (fixed seed), eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed({"llama": 0, "mistral": 1, "qwen2": 2}[family])
    model = AutoModelForCausalLM.from_config(model_config(family, attn_implementation=attn))
    return model.to(device=device, dtype=dtype).eval()


def random_prompts(lengths, seed: int = 0, vocab: int = VOCAB) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(vocab) for _ in range(n)] for n in lengths]


def random_lengths(n: int, longest: int, seed: int) -> list[int]:
    """n lengths in [1, longest] with a 1 and `longest` (fills capacity="max") among them."""
    rng = random.Random(1000 + seed)
    lengths = [rng.randint(1, longest) for _ in range(n - 2)] + [1, longest]
    rng.shuffle(lengths)
    return lengths


def reference(model, prompt: list[int]):
    """(next-token logits [vocab], [(key, value)] per layer each [kv_heads, len, head_dim]) of
    `prompt` run alone, unpadded, through plain transformers."""
    device = model.get_input_embeddings().weight.device
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompt], device=device), use_cache=True)
    kv = [(k[0], v[0]) for k, v in cache_layers_kv(output_cache(out))]
    return out.logits[0, -1], kv


def assert_matches_reference(model, prompts, result, tol=FP32_TOL) -> None:
    assert result.logits.shape == (len(prompts), model.config.vocab_size)
    assert result.kv is not None and len(result.kv) == len(prompts)
    for i, prompt in enumerate(prompts):
        logits, kv = reference(model, prompt)
        torch.testing.assert_close(
            result.logits[i], logits, **tol, msg=lambda m, i=i: f"prompt {i} logits: {m}"
        )
        assert len(result.kv[i]) == len(kv)
        for layer, ((k, v), (rk, rv)) in enumerate(zip(result.kv[i], kv)):
            assert k.shape == rk.shape == (model.config.num_key_value_heads, len(prompt), rk.shape[-1])
            torch.testing.assert_close(
                k, rk, **tol, msg=lambda m, i=i, layer=layer: f"prompt {i} layer {layer} keys: {m}"
            )
            torch.testing.assert_close(
                v, rv, **tol, msg=lambda m, i=i, layer=layer: f"prompt {i} layer {layer} values: {m}"
            )


def hf_greedy(model, prompt: list[int], max_new_tokens: int, **kwargs) -> list[int]:
    device = model.get_input_embeddings().weight.device
    with torch.no_grad():
        out = model.generate(
            input_ids=torch.tensor([prompt], device=device),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **kwargs,
        )
    return out[0, len(prompt) :].tolist()


def register_reference_varlen_backends() -> tuple[str, str]:
    """Test-only backends running the varlen plumbing on CPU with the reference kernels:
    "varlen-reference" (torch 2.13 signature) and "varlen-legacy" (torch 2.9/2.10)."""
    for name, kernel in (
        ("varlen-reference", reference_varlen_attn),
        ("varlen-legacy", reference_varlen_attn_legacy),
    ):
        if name not in BACKENDS:
            impl = register_varlen_attention(f"prepack_{name}", lambda k=kernel: k)
            register_backend(
                AttentionBackend(
                    name=name,
                    attn_implementation=impl,
                    forward_kwargs=varlen_forward_kwargs,
                    unavailable=lambda device, dtype: None,
                    description="TEST ONLY: varlen plumbing with a reference kernel",
                )
            )
    return "varlen-reference", "varlen-legacy"
