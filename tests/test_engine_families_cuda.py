"""GPU checks of the engine's families beyond Llama (Qwen3's QK-norm, Granite's multipliers,
Phi-3's fused weights and head_dim 96, Gemma's GeLU-tanh MLP, (1 + w) norms and scaled
embedding, OLMo2's post-norms and whole-projection QK-norm; Ministral 3's yarn table, Arcee's
ReLU^2 and Apertus's xIELU non-gated MLPs, SmolLM3's NoPE layers, OLMo 3 / EXAONE 4 / Gemma 3's
sliding layers and per-layer tables, Helium / ERNIE 4.5 / GLM / GLM-4's permuted (interleaved,
partial) RoPE, GLM-4 / Gemma 3 / HyperCLOVA X's extra norms, HunYuan's QK-norm after RoPE, NanoChat's
weightless norms, negated-sin RoPE and logit soft-cap): prefill logits and K/V (CUDA
graphs, the default attention) against HF run on each prompt alone, and generate's engine
path against HF generate, in bf16 with bf16 tolerances. The exact fp32 proof is the
model-zoo test (tests/test_model_zoo.py)."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

_SMALL = {"vocab_size": 512, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 3,
          "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048, "pad_token_id": 0}
# sliding layers (exact while a prompt fits the window: every prompt here does)
_SLIDING = {"layer_types": ["sliding_attention", "sliding_attention", "full_attention"], "sliding_window": 512}
FAMILIES = {
    "qwen3": {"head_dim": 64},
    "granite": {"embedding_multiplier": 12.0, "residual_multiplier": 0.22, "attention_multiplier": 0.0078125,
                "logits_scaling": 8.0},
    "phi3": {"hidden_size": 384},  # head_dim 96: the Triton tiles padded to 128 lanes
    "gemma": {"head_dim": 64, "hidden_act": "gelu_pytorch_tanh"},
    "olmo2": {},
    "ministral3": {"head_dim": 64},
    "arcee": {"head_dim": 64},
    "apertus": {"head_dim": 64},
    "apertus1p5_text": {"head_dim": 64},
    "smollm3": {"head_dim": 64, "no_rope_layers": [1, 0, 1]},
    "olmo3": {"head_dim": 64, **_SLIDING},
    "exaone4": {"head_dim": 64, **_SLIDING},
    "helium": {"head_dim": 64},
    "ernie4_5": {"head_dim": 64},
    "glm": {"head_dim": 64},  # partial_rotary_factor 0.5
    "glm4": {"head_dim": 64},
    "gemma3_text": {"head_dim": 64, "query_pre_attn_scalar": 64, **_SLIDING},
    "hyperclovax": {"head_dim": 64, "embedding_multiplier": 2.0, "residual_multiplier": 0.5,
                    "attention_multiplier": 0.125, "logits_scaling": 0.5, "use_post_norm": True},
    "hunyuan_v1_dense": {"head_dim": 64},  # QK-norm after RoPE: rope_store, the norm, packed_attention
    "nanochat": {"head_dim": 64},  # weightless norms, -sin table, embedding norm, logit soft-cap 15
}
_NORM_OFFSET = ("gemma", "gemma3_text")  # norms applied as (1 + w)
# decode with a per-head QK-norm is not proven on CUDA (generate_engine): HF's loop runs for them
_PER_HEAD_QK_NORM = ("qwen3", "apertus", "apertus1p5_text", "exaone4", "gemma3_text", "hunyuan_v1_dense",
                     "nanochat")


def _model(model_type: str):
    from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM

    if model_type not in CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers_version()} has no {model_type}")
    cfg = AutoConfig.for_model(model_type, **{**_SMALL, **FAMILIES[model_type]})
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    with torch.no_grad():  # norm weights away from their init, so that they are tested
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5) if model_type in _NORM_OFFSET else p.uniform_(0.5, 1.5)
    return model


def transformers_version() -> str:
    import transformers

    return transformers.__version__


def _prompts(lengths, vocab=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


def _close_bf16(got: torch.Tensor, want: torch.Tensor) -> None:
    """K / V within bf16 noise: elementwise within atol 6e-2 + rtol 6e-2, but for at most 0.1%
    of the values, each at most 0.1 beyond (after a QK-norm a lone small value lands a few bf16
    steps off: 0.076 where 0.069 was allowed, in one of 10^4, EXAONE 4 and Gemma 3 on the H200;
    a wrong kernel misses by far more, and far more often)."""
    got, want = got.float(), want.float()
    diff = (got - want).abs()
    over = diff - (6e-2 + 6e-2 * want.abs())
    assert float((over > 0).float().mean()) <= 1e-3 and float(over.max()) <= 0.1, float(diff.max())


def _parts_only_on_a_near_tie(model, prompt: list[int], tokens: list[int], ref: list[int], tol: float = 0.1) -> None:
    """Greedy tokens equal HF's run alone up to the first difference, and there HF's own logits
    (given the prompt and its tokens so far) rate ours within `tol` of its argmax: a bf16 near
    tie (tiny random models have nearly flat next-token distributions), not a wrong step."""
    j = next((i for i, (a, b) in enumerate(zip(tokens, ref)) if a != b), None)
    if j is None:
        return
    with torch.no_grad():
        logits = model(torch.tensor([prompt + ref[:j]], device="cuda")).logits[0, -1].float()
    gap = float(logits.max() - logits[tokens[j]])
    assert gap <= tol, (j, gap, tokens, ref)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_engine_family_matches_hf_per_prompt(model_type):
    from gpu_runner.engine import PrefillEngine

    model = _model(model_type)
    prompts = _prompts([5, 1, 300, 77, 2, 128], seed=1)
    with torch.no_grad():
        refs = [model(torch.tensor([p], device="cuda"), use_cache=True) for p in prompts]
    eng = PrefillEngine(model, token_bucket=64)
    assert eng.attention == "packed"  # phi3's head_dim 96 too: the Triton tiles are padded
    for _ in range(2):  # second pass replays the captured graph
        res = eng.prefill(prompts)
        for i, r in enumerate(refs):
            torch.testing.assert_close(res.logits[i].float(), r.logits[0, -1].float(), atol=6e-2, rtol=6e-2)
            cache = getattr(r, "past_key_values", None) or r.cache
            for layer, (k, v) in enumerate(res.prompt_kv(i)):
                _close_bf16(k, cache.layers[layer].keys[0])
                _close_bf16(v, cache.layers[layer].values[0])


@pytest.mark.parametrize("model_type", ["qwen3", "phi3", "gemma"])
def test_engine_flash_path_per_family(model_type):
    """The flash attention path (rope_store: Qwen3's fused QK-norm, Phi-3's head_dim 96)
    against the packed path (rope_attention) on one model."""
    from gpu_runner.engine import PrefillEngine

    model = _model(model_type)
    prompts = _prompts([5, 1, 300, 77, 2, 128], seed=3)
    packed = PrefillEngine(model, token_bucket=64, attention="packed").prefill(prompts).clone()
    flash = PrefillEngine(model, token_bucket=64, attention="flash").prefill(prompts)
    torch.testing.assert_close(flash.logits.float(), packed.logits.float(), atol=6e-2, rtol=6e-2)
    for i in range(len(prompts)):
        for (k1, v1), (k2, v2) in zip(flash.prompt_kv(i), packed.prompt_kv(i)):
            _close_bf16(k1, k2)
            _close_bf16(v1, v2)  # not bit-equal: layers after the first see the two attention kernels' outputs


@pytest.mark.parametrize("model_type", ["qwen3", "phi3"])
def test_decode_step_per_family_matches_hf(model_type):
    """The engine's decode step on CUDA (Qwen3: QK-norm fused into rope_store; Phi-3: head_dim
    96 in the padded decode kernels) through BatchGenerator directly, against HF greedy: first
    token equal, later ones parting only on a bf16 near tie. gpu_runner.generate still routes both to
    HF's loop (generate_engine's refusals); this is the evidence to lift them."""
    from gpu_runner.engine.batch_generate import BatchGenerator

    model = _model(model_type)
    prompts = _prompts([7, 30, 3, 64], seed=2)
    gen = BatchGenerator(model, max_batch=4, page_tokens=16, prefill_tokens=256, token_bucket=64)
    got = gen.generate(prompts, 6).tokens
    for p, tokens in zip(prompts, got):
        ids = torch.tensor([p], device="cuda")
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                             do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        assert tokens[0] == ref[0], (tokens, ref)
        _parts_only_on_a_near_tie(model, p, tokens, ref)


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_generate_engine_path_per_family(model_type):
    import gpu_runner

    model = _model(model_type)
    prompts = _prompts([7, 30, 3, 64], seed=2)
    # phi3 (head_dim 96) and the per-head QK-norms (Qwen3's decode parted from HF on the H200) fall back
    path = "hf" if model_type in ("phi3", *_PER_HEAD_QK_NORM) else "engine"
    if model_type in _PER_HEAD_QK_NORM:
        with pytest.raises(ValueError, match="QK-norm"):
            gpu_runner.generate(model, prompts, 6, path="engine", pad_token_id=0)
    options = {"eos_token_id": []} if path == "engine" else {"min_new_tokens": 6}  # no early stop either way
    got = gpu_runner.generate(model, prompts, 6, path=path, pad_token_id=0, **options)
    for p, tokens in zip(prompts, got):
        ids = torch.tensor([p], device="cuda")
        ref = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, min_new_tokens=6,
                             do_sample=False, pad_token_id=0)[0, len(p):].tolist()
        assert tokens[0] == ref[0]
        _parts_only_on_a_near_tie(model, p, tokens, ref)  # bf16: later tokens may part on near ties
    gpu_runner.clear_generation_cache(model)
