"""GPU parity of the prepacked prefill (marked `gpu`, skipped without CUDA): the CPU checks
in bf16 for dense, flex and varlen (and auto), generate parity, budget splitting, a real
out-of-memory.

bf16 tolerances: packed and unpadded runs use different kernels and reduction orders, so
results differ by bf16 rounding (eps 2^-8 = 0.0039) amplified through the layers. Each check
is a loose elementwise bound (BF16_TOL) plus a relative one: the packed error against an fp32
reference of the same weights may be at most twice plain transformers' own bf16 error plus
BF16_SLACK.
`PREPACK_TEST_DEVICE` overrides the device (for dry runs of this file's logic elsewhere).
"""

from __future__ import annotations

import os

import pytest
import torch
from test_runner_support import hf_greedy, model_config, random_lengths, random_prompts, reference

import gpu_runner
from gpu_runner.result import PrefillOutOfMemoryError

pytestmark = pytest.mark.gpu

DEVICE = os.environ.get("PREPACK_TEST_DEVICE", "cuda")
BF16_TOL = {"atol": 5e-2, "rtol": 5e-2}
BF16_SLACK = 1e-2
GPU_VOCAB = 512
FAMILIES = ("llama", "mistral", "qwen2")
BACKENDS = ("dense", "flex", "varlen", "auto")

_MODELS: dict = {}


def gpu_model(family: str, dtype: torch.dtype):
    """A small random GQA model (head_dim 64, as flash kernels like), same weights per family."""
    key = (family, dtype)
    if key not in _MODELS:
        from transformers import AutoModelForCausalLM

        torch.manual_seed(10 + FAMILIES.index(family))
        cfg = model_config(
            family, vocab_size=GPU_VOCAB, hidden_size=256, intermediate_size=512, num_attention_heads=4,
            num_key_value_heads=2, num_hidden_layers=3, max_position_embeddings=1024,
        )  # fmt: skip
        base = AutoModelForCausalLM.from_config(cfg).to(dtype=torch.bfloat16).eval()
        _MODELS[key] = base.to(device=DEVICE, dtype=dtype)  # fp32 copy = upcast bf16 weights
    return _MODELS[key]


def prompts_for(seed: int, n: int = 16, longest: int = 300):
    return random_prompts(random_lengths(n, longest=longest, seed=seed), seed=seed, vocab=GPU_VOCAB)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


@pytest.fixture
def exact_fp32():
    """Full-precision fp32 matmuls for the test (TF32 would blur greedy parity)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_bf16_prefill_matches_each_prompt_alone(family, backend, exact_fp32):
    model = gpu_model(family, torch.bfloat16)
    exact = gpu_model(family, torch.float32)
    prompts = prompts_for(seed=FAMILIES.index(family))
    result = gpu_runner.prefill(model, prompts, backend=backend)
    if backend == "auto":  # varlen or dense, as the cost model prices this packing
        assert result.backend == gpu_runner.attention.auto_backend_name(
            torch.device(DEVICE), torch.bfloat16, config=model.config, packing=result.packing
        )
    else:
        assert result.backend == backend
    assert result.logits.shape == (len(prompts), GPU_VOCAB)
    for i, prompt in enumerate(prompts):
        logits, kv = reference(model, prompt)
        true_logits, true_kv = reference(exact, prompt)
        torch.testing.assert_close(result.logits[i].float(), logits.float(), **BF16_TOL)
        assert _max_err(result.logits[i], true_logits) <= 2 * _max_err(logits, true_logits) + BF16_SLACK, i
        for (k, v), (rk, rv), (tk, tv) in zip(result.kv[i], kv, true_kv):
            assert k.shape == rk.shape == (2, len(prompt), 64)
            torch.testing.assert_close(k.float(), rk.float(), **BF16_TOL)
            torch.testing.assert_close(v.float(), rv.float(), **BF16_TOL)
            assert _max_err(k, tk) <= 2 * _max_err(rk, tk) + BF16_SLACK
            assert _max_err(v, tv) <= 2 * _max_err(rv, tv) + BF16_SLACK


@pytest.mark.parametrize("backend", ["dense", "flex"])
def test_fp32_generate_matches_hf_on_each_prompt_alone(backend, exact_fp32):
    model = gpu_model("llama", torch.float32)
    prompts = prompts_for(seed=5, n=10, longest=120)
    got = gpu_runner.generate(model, prompts, 8, backend=backend)
    assert got == [hf_greedy(model, p, 8) for p in prompts]


def test_bf16_varlen_generate_first_tokens_where_the_choice_is_clear(exact_fp32):
    model = gpu_model("qwen2", torch.bfloat16)
    exact = gpu_model("qwen2", torch.float32)
    prompts = prompts_for(seed=6, n=12, longest=200)
    got = gpu_runner.generate(model, prompts, 4, backend="varlen")
    clear = 0
    for prompt, tokens in zip(prompts, got):
        assert 1 <= len(tokens) <= 4
        true_logits, _ = reference(exact, prompt)
        top2 = true_logits.float().topk(2).values
        if float(top2[0] - top2[1]) > 0.05:  # about 5x the bf16 error of these logits
            clear += 1
            assert tokens[0] == int(true_logits.argmax())
    assert clear > 0


def test_auto_picks_dense_for_fp32_on_cuda():
    model = gpu_model("llama", torch.float32)
    assert gpu_runner.prefill(model, prompts_for(seed=7, n=4, longest=50)).backend == "dense"


@pytest.mark.parametrize("backend", ["dense", "varlen"])
def test_budget_split_equals_one_forward(backend):
    model = gpu_model("mistral", torch.bfloat16)
    prompts = prompts_for(seed=8, n=24)
    whole = gpu_runner.prefill(model, prompts, backend=backend)
    budget = max(f.estimated_bytes for f in whole.forwards) // 3
    split = gpu_runner.prefill(model, prompts, backend=backend, memory_budget_bytes=budget)
    assert len(split.forwards) > 1 and all(f.estimated_bytes <= budget for f in split.forwards)
    torch.testing.assert_close(split.logits.float(), whole.logits.float(), **BF16_TOL)
    for a, b in zip(split.kv, whole.kv):
        for (ka, va), (kb, vb) in zip(a, b):
            torch.testing.assert_close(ka.float(), kb.float(), **BF16_TOL)
            torch.testing.assert_close(va.float(), vb.float(), **BF16_TOL)


@pytest.mark.skipif(DEVICE != "cuda", reason="needs the CUDA caching allocator")
def test_real_out_of_memory_names_the_forward():
    model = gpu_model("llama", torch.bfloat16)
    prompts = random_prompts([1000] * 64, seed=9, vocab=GPU_VOCAB)
    torch.cuda.empty_cache()
    used = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (used + (64 << 20)) / total))
    try:
        with pytest.raises(PrefillOutOfMemoryError, match=r"forward 1/1: 64 rows x 1000 tokens"):
            gpu_runner.prefill(model, prompts, backend="dense")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert gpu_runner.prefill(model, prompts[:2], backend="dense").logits.shape == (2, GPU_VOCAB)


@pytest.mark.parametrize("backend", ["dense", "flex"])
def test_fp32_sliding_window_prefill_and_generate_match_each_prompt_alone(backend, exact_fp32):
    """Prompts longer than a Mistral sliding window (16 tokens): the windowed packed masks
    (gpu_runner.windows) on CUDA, flex's compiled BlockMask included; prefill logits and K/V
    (HF's kept tail of them) and greedy continuation (runner prefill + HF generate) equal each prompt run alone."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(7)
    cfg = model_config(
        "mistral", vocab_size=GPU_VOCAB, hidden_size=256, intermediate_size=512, num_attention_heads=4,
        num_key_value_heads=2, num_hidden_layers=3, max_position_embeddings=1024, sliding_window=16,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).to(DEVICE).eval()
    prompts = prompts_for(seed=9, n=8, longest=100)
    assert max(map(len, prompts)) > 16
    result = gpu_runner.prefill(model, prompts, backend=backend)
    for i, prompt in enumerate(prompts):
        logits, kv = reference(model, prompt)
        torch.testing.assert_close(result.logits[i], logits, atol=1e-4, rtol=1e-4)
        for (k, v), (rk, rv) in zip(result.kv[i], kv):  # HF's sliding cache keeps the last window - 1
            torch.testing.assert_close(k[:, -rk.shape[1] :], rk, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(v[:, -rv.shape[1] :], rv, atol=1e-4, rtol=1e-4)
    got = gpu_runner.generate(model, prompts, 6, backend=backend, path="hf", min_new_tokens=6)
    for prompt, tokens in zip(prompts, got):
        assert tokens == hf_greedy(model, prompt, 6, min_new_tokens=6), prompt
