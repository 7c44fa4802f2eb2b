"""Continued generation: greedy `gpu_runner.generate` equals HF `model.generate` on each
prompt alone, and the prefill caches (`cache_for`, `cache_for_batch`) continue in HF generate."""

from __future__ import annotations

import pytest
import torch
from test_runner_support import (
    FAMILIES,
    hf_greedy,
    random_lengths,
    random_prompts,
    register_reference_varlen_backends,
    tiny_model,
)

import gpu_runner
from gpu_runner.cache import cache_kwarg_name

register_reference_varlen_backends()
NEW = 6


def until_eos(model, tokens: list[int]) -> list[int]:
    """`tokens` cut after the model's first EOS token, as HF generate on one prompt stops."""
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or ())
    for j, t in enumerate(tokens):
        if t in eos:
            return tokens[: j + 1]
    return tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_matches_hf_on_each_prompt_alone(family):
    model = tiny_model(family)
    prompts = random_prompts(random_lengths(8, longest=30, seed=20), seed=20)
    got = gpu_runner.generate(model, prompts, NEW, backend="dense")
    assert got == [hf_greedy(model, p, NEW) for p in prompts]


@pytest.mark.parametrize("backend", ["flex", "varlen-reference"])
def test_greedy_generate_other_backends(backend):
    model = tiny_model("llama")
    prompts = random_prompts([9, 1, 17, 4, 12], seed=21)
    got = gpu_runner.generate(model, prompts, 4, backend=backend, packer="ffd")
    assert got == [hf_greedy(model, p, 4) for p in prompts]


def test_generate_prefills_once_then_decodes_one_token_per_step():
    # The prompt is never re-run: one packed forward, then HF decode steps of 1 token.
    model = tiny_model("qwen2")
    prompts = random_prompts([6, 13, 2, 9], seed=22)
    shapes = []
    handle = model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        gpu_runner.generate(model, prompts, 3, backend="dense")
    finally:
        handle.remove()
    packed, *decode = shapes
    assert packed[0] < len(prompts) and packed[1] == 12  # FFD rows of the prompts minus their last token
    assert decode == [(len(prompts), 1)] * 3


def test_decode_batches_length_one_prompts_and_zero_tokens():
    model = tiny_model("mistral")
    prompts = random_prompts([1, 7, 1, 3, 15, 2, 1], seed=23)
    expected = [hf_greedy(model, p, NEW) for p in prompts]
    assert gpu_runner.generate(model, prompts, NEW, backend="dense", decode_batch_size=3) == expected
    assert gpu_runner.generate(model, prompts, NEW, backend="dense", memory_budget_bytes=10**6) == expected
    ones = [p for p in prompts if len(p) == 1]  # nothing to prefill at all
    assert gpu_runner.generate(model, ones, NEW) == [hf_greedy(model, p, NEW) for p in ones]
    assert gpu_runner.generate(model, prompts, 0) == [[] for _ in prompts]


def test_eos_stops_each_prompt_like_hf():
    model = tiny_model("llama")
    prompts = random_prompts([5, 11, 8, 3], seed=24)
    free = [hf_greedy(model, p, 8) for p in prompts]
    eos = free[1][2]  # a token prompt 1 emits third: it must stop there
    expected = [hf_greedy(model, p, 8, eos_token_id=eos) for p in prompts]
    assert expected[1] == free[1][:3]
    assert gpu_runner.generate(model, prompts, 8, eos_token_id=eos) == expected


def test_cache_for_continues_in_hf_generate():
    model = tiny_model("llama")
    prompts = random_prompts([7, 1, 12], seed=25)
    result = gpu_runner.prefill(model, prompts, backend="dense")
    kw = cache_kwarg_name(model)
    for i, prompt in enumerate(prompts):
        first = int(result.logits[i].argmax())
        ids = torch.tensor([prompt + [first]])
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, max_new_tokens=4, do_sample=False, **{kw: result.cache_for(i)}
            )
        assert until_eos(model, [first] + out[0, ids.shape[1] :].tolist()) == hf_greedy(model, prompt, 5)


def test_cache_for_batch_continues_left_padded():
    model = tiny_model("qwen2")
    prompts = random_prompts([7, 1, 12, 4], seed=26)
    result = gpu_runner.prefill(model, prompts, backend="dense")
    indices = [3, 0, 2, 1]
    cache, mask = result.cache_for_batch(indices)
    width = max(len(prompts[i]) for i in indices)
    assert mask.tolist()[0] == [0] * (width - 4) + [1] * 4
    ids = torch.zeros(len(indices), width + 1, dtype=torch.long)
    for b, i in enumerate(indices):
        ids[b, width - len(prompts[i]) : width] = torch.tensor(prompts[i])
        ids[b, width] = int(result.logits[i].argmax())
    full_mask = torch.cat([mask, torch.ones(len(indices), 1, dtype=mask.dtype)], dim=1)
    kw = cache_kwarg_name(model)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=full_mask,
            max_new_tokens=3,
            do_sample=False,
            pad_token_id=0,
            **{kw: cache},
        )
    for b, i in enumerate(indices):
        ours = ids[b, width:].tolist() + out[b, width + 1 :].tolist()
        assert until_eos(model, ours) == hf_greedy(model, prompts[i], 4)
