"""CPU parity of the prepacked prefill: every prompt's logits and every layer's K/V equal a
plain unpadded transformers run of that prompt alone (fp32, tiny random GQA models)."""

from __future__ import annotations

import pytest
import torch
from test_runner_support import (
    FAMILIES,
    assert_matches_reference,
    random_lengths,
    random_prompts,
    register_reference_varlen_backends,
    tiny_model,
)

import gpu_runner

register_reference_varlen_backends()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("packer", ["pad", "ffd"])
@pytest.mark.parametrize("seed", [0, 1])
def test_dense_matches_each_prompt_alone(family, packer, seed):
    model = tiny_model(family)
    lengths = random_lengths(9, longest=40, seed=seed)
    prompts = random_prompts(lengths, seed=seed)
    result = gpu_runner.prefill(model, prompts, packer=packer, backend="dense")
    assert result.backend == "dense"
    assert result.packing.lengths == tuple(lengths)
    if packer == "ffd":
        assert result.packing.num_bins < len(prompts)  # prompts really share rows
    assert_matches_reference(model, prompts, result)


@pytest.mark.parametrize("backend", ["varlen-reference", "varlen-legacy"])
@pytest.mark.parametrize("family", FAMILIES)
def test_varlen_plumbing_matches_each_prompt_alone(family, backend):
    # The real kernel is CUDA-only; these backends run the same attention function
    # (flattening, cu_seqlens, causality/scale/GQA by signature) with reference kernels.
    model = tiny_model(family)
    prompts = random_prompts(random_lengths(8, longest=33, seed=3), seed=3)
    result = gpu_runner.prefill(model, prompts, backend=backend)
    assert_matches_reference(model, prompts, result)
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("family", FAMILIES)
def test_flex_matches_each_prompt_alone(family):
    # On CPU the flex backend runs flex_attention eagerly (gpu_runner.attention.flex says why).
    model = tiny_model(family)
    prompts = random_prompts(random_lengths(7, longest=48, seed=4), seed=4)
    result = gpu_runner.prefill(model, prompts, backend="flex", row_len="capacity")
    assert result.backend == "flex"
    assert_matches_reference(model, prompts, result)
    assert model.config._attn_implementation == "sdpa"


def test_capacity_int_with_a_prompt_that_fills_it_and_static_shapes():
    model = tiny_model("llama")
    lengths = [30, 1, 12, 18, 1, 29, 7, 23]
    prompts = random_prompts(lengths, seed=5)
    result = gpu_runner.prefill(model, prompts, capacity=30, backend="dense", row_len=32, num_rows=3)
    assert result.packing.capacity == 30
    assert all(f.num_rows == 3 and f.row_len == 32 for f in result.forwards)
    assert sum(len(f.bins) for f in result.forwards) == result.packing.num_bins
    assert_matches_reference(model, prompts, result)


def test_order_is_the_callers_order():
    model = tiny_model("qwen2")
    prompts = random_prompts([5, 9, 2, 14, 3], seed=6)
    forward = gpu_runner.prefill(model, prompts, backend="dense")
    backward = gpu_runner.prefill(model, prompts[::-1], backend="dense")
    torch.testing.assert_close(forward.logits, backward.logits.flip(0), atol=1e-5, rtol=1e-5)
    for i in range(len(prompts)):
        k, _ = forward.kv[i][1]
        assert k.shape[1] == len(prompts[i])


def test_memory_budget_splits_into_several_forwards_with_equal_results():
    model = tiny_model("mistral")
    prompts = random_prompts(random_lengths(12, longest=40, seed=7), seed=7)
    whole = gpu_runner.prefill(model, prompts, backend="dense")
    assert len(whole.forwards) == 1
    largest_bin = max(
        gpu_runner.estimate_forward_bytes(
            model.config, num_rows=1, row_len=whole.packing.max_load, num_prompts=len(b),
            backend="dense", dtype=torch.float32, device=torch.device("cpu"), return_kv=True,
        )
        for b in whole.packing.bins
    )  # fmt: skip
    budget = largest_bin + largest_bin // 2
    split = gpu_runner.prefill(model, prompts, backend="dense", memory_budget_bytes=budget)
    assert len(split.forwards) > 1
    assert all(f.estimated_bytes <= budget for f in split.forwards)
    assert sorted(b for f in split.forwards for b in f.bins) == list(range(split.packing.num_bins))
    torch.testing.assert_close(split.logits, whole.logits, atol=1e-5, rtol=1e-5)
    for a, b in zip(split.kv, whole.kv):
        for (ka, va), (kb, vb) in zip(a, b):
            torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)
    assert_matches_reference(model, prompts, split)


def test_return_kv_false_gives_same_logits_and_no_caches():
    model = tiny_model("llama")
    prompts = random_prompts([4, 11, 1, 8], seed=8)
    with_kv = gpu_runner.prefill(model, prompts, backend="dense")
    without = gpu_runner.prefill(model, prompts, backend="dense", return_kv=False)
    assert without.kv is None
    torch.testing.assert_close(without.logits, with_kv.logits, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="return_kv=False"):
        without.cache_for(0)


def test_prepared_packing_and_packer_object_are_used():
    model = tiny_model("llama")
    prompts = random_prompts([6, 3, 9, 2], seed=9)
    packing = gpu_runner.runner.packers.make_packer("pad").pack([6, 3, 9, 2], 9)
    result = gpu_runner.prefill(model, prompts, packing=packing, backend="dense")
    assert result.packing == packing  # rebuilt through Packing's validation, same content
    obj = gpu_runner.runner.packers.make_packer("ffd")
    assert gpu_runner.prefill(model, prompts, packer=obj, backend="dense").packing.packer == "ffd"


def test_eager_model_runs_dense_and_keeps_its_implementation():
    model = tiny_model("llama", attn="eager")
    prompts = random_prompts([7, 1, 12], seed=10)
    result = gpu_runner.prefill(model, prompts, backend="auto")
    assert result.backend == "dense"  # the CPU rule
    assert model.config._attn_implementation == "eager"
    assert_matches_reference(model, prompts, result)


def test_auto_is_dense_on_cpu_and_varlen_refuses_cpu():
    model = tiny_model("llama")
    prompts = random_prompts([3, 4], seed=11)
    assert gpu_runner.prefill(model, prompts).backend == "dense"
    with pytest.raises(ValueError, match="varlen.*CUDA"):
        gpu_runner.prefill(model, prompts, backend="varlen")


@pytest.mark.parametrize(
    "family, extra",
    [
        ("cohere", {"logit_scale": 0.25}),  # logits multiplied
        (
            "granite",
            {"logits_scaling": 4.0, "embedding_multiplier": 2.0, "attention_multiplier": 0.3},
        ),  # divided
    ],
)
def test_models_with_logit_scaling(family, extra):
    from transformers import AutoModelForCausalLM, CohereConfig, GraniteConfig

    cls = {"cohere": CohereConfig, "granite": GraniteConfig}[family]
    torch.manual_seed(0)
    cfg = cls(
        vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, eos_token_id=2, bos_token_id=1, pad_token_id=0, **extra,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg).eval()
    prompts = random_prompts([5, 1, 13, 8], seed=3)
    assert_matches_reference(model, prompts, gpu_runner.prefill(model, prompts, backend="dense"))


def test_lm_head_sees_last_tokens_only_and_padding_is_inert():
    model = tiny_model("llama")
    prompts = random_prompts([9, 2, 14, 5, 1], seed=14)
    seen = []
    handle = model.lm_head.register_forward_pre_hook(lambda mod, args: seen.append(tuple(args[0].shape)))
    try:
        a = gpu_runner.prefill(model, prompts, backend="dense", row_len=20, num_rows=4, pad_token_id=0)
    finally:
        handle.remove()
    assert seen == [(len(prompts), model.config.hidden_size)]  # one row of hidden state per prompt
    b = gpu_runner.prefill(model, prompts, backend="dense", row_len=20, num_rows=4, pad_token_id=95)
    torch.testing.assert_close(a.logits, b.logits, atol=0, rtol=0)
