"""Bad input to prefill / generate: one clear ValueError, raised before the model runs."""

from __future__ import annotations

import pytest
import torch
from test_runner_support import (
    MAX_POS,
    VOCAB,
    model_config,
    random_prompts,
    register_reference_varlen_backends,
    tiny_model,
)

import gpu_runner
import packers
from gpu_runner.result import PrefillOutOfMemoryError


@pytest.fixture
def model():
    """The tiny Llama with a hook that fails the test if its decoder runs at all."""
    m = tiny_model("llama")
    calls = []
    handle = m.model.register_forward_pre_hook(lambda mod, args: calls.append(1))
    yield m
    handle.remove()
    assert not calls, "the model ran before the bad input was rejected"


GOOD = random_prompts([5, 3, 8], seed=0)


@pytest.mark.parametrize(
    "prompts, options, match",
    [
        ([], {}, "empty"),
        ([[1, 2], []], {}, "prompt 1 is empty"),
        ([[1, 2], [3] * (MAX_POS + 1)], {}, f"prompt 1 has {MAX_POS + 1} tokens, over the model's context"),
        ([[1, 2], [3, -1]], {}, "prompt 1 has token id -1 outside the vocabulary"),
        ([[1, 2], [3], [4, VOCAB]], {}, f"prompt 2 has token id {VOCAB} outside"),
        ([[1, 2.5]], {}, "token ids must be integers"),
        ("hello", {}, "list of token-id lists"),
        ([[[1, 2]]], {}, "integers"),
        (GOOD, {"backend": "nope"}, "unknown attention backend 'nope'; valid: auto, dense, flex, varlen"),
        (GOOD, {"packer": "nope"}, "unknown packer 'nope'; valid names: .*ffd"),
        (GOOD, {"capacity": 4}, "capacity 4 is below the longest prompt"),
        (GOOD, {"capacity": 0}, "capacity must be a positive integer"),
        (GOOD, {"capacity": "min"}, "capacity must be a positive integer"),
        (GOOD, {"row_len": 4}, "row_len 4 is shorter than the fullest bin"),
        (GOOD, {"num_rows": 0}, "positive integer"),
        (GOOD, {"pad_token_id": VOCAB}, "pad_token_id"),
        (GOOD, {"memory_budget_bytes": 1000}, r"bin \d+ \(prompts .*\) alone needs about \d+ bytes"),
        (GOOD, {"backend": "varlen"}, "'varlen' cannot run here: .*CUDA"),
    ],
)
def test_prefill_rejects_bad_input_before_running(model, prompts, options, match):
    with pytest.raises(ValueError, match=match):
        gpu_runner.prefill(model, prompts, **options)


@pytest.mark.parametrize("lengths", [[5, 3], [5, 3, 8, 1], [5, 8, 3]])
def test_packing_that_does_not_match_the_prompts(model, lengths):
    packing = packers.make_packer("pad").pack(lengths, 8)
    with pytest.raises(ValueError, match="packing does not match the prompts"):
        gpu_runner.prefill(model, GOOD, packing=packing)


def test_packing_must_be_a_packing(model):
    with pytest.raises(ValueError, match="packers.Packing"):
        gpu_runner.prefill(model, GOOD, packing=[[0, 1, 2]])


def test_pack_inputs_rejects_mismatch():
    packing = packers.make_packer("pad").pack([5, 3, 9], 9)
    with pytest.raises(ValueError, match="first difference at prompt 2"):
        gpu_runner.pack_inputs(GOOD, packing)


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((GOOD, -1), {}, "max_new_tokens"),
        ((GOOD, 2), {"attention_mask": None}, "generate sets"),
        ((GOOD, 2), {"num_beams": 2}, "num_beams"),
        ((GOOD, 2), {"decode_batch_size": 0}, "decode_batch_size"),
        (([[1], []], 2), {}, "prompt 1 is empty"),
        ((GOOD, 2), {"backend": "nope"}, "unknown attention backend"),
    ],
)
def test_generate_rejects_bad_input_before_running(model, args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gpu_runner.generate(model, *args, **kwargs)


def test_prompt_longer_than_the_sliding_window_runs_windowed_where_proven():
    """Mistral with an 8-token window: a 10-token prompt runs dense under a windowed mask
    (logits equal the prompt alone; HF's sliding cache keeps the last 7 tokens, result.kv
    every token, whose tail matches); the varlen path, not proven with windows, is refused
    naming the paths that work."""
    from transformers import AutoModelForCausalLM

    from gpu_runner.cache import cache_layers_kv, output_cache
    from gpu_runner.support import UnsupportedModelError

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_config(model_config("mistral", sliding_window=8)).eval()
    prompts = [list(range(3, 13)), [2] * 3, list(range(20, 37))]
    result = gpu_runner.prefill(m, prompts, backend="dense")
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            alone = m(input_ids=torch.tensor([prompt]), use_cache=True)
        torch.testing.assert_close(result.logits[i], alone.logits[0, -1], rtol=1e-4, atol=1e-4)
        for (k, v), (rk, rv) in zip(result.kv[i], cache_layers_kv(output_cache(alone))):
            assert k.shape[1] == len(prompt) and rk.shape[2] == min(len(prompt), 7)
            torch.testing.assert_close(k[:, -rk.shape[2] :], rk[0], rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(v[:, -rv.shape[2] :], rv[0], rtol=1e-4, atol=1e-4)
    register_reference_varlen_backends()
    with pytest.raises(UnsupportedModelError, match=r"'varlen' .*local attention.*proven exact for it: dense, flex"):
        gpu_runner.prefill(m, prompts, backend="varlen-reference")


def test_result_index_errors():
    result = gpu_runner.prefill(tiny_model("llama"), GOOD, backend="dense")
    for bad in (-1, 3, "0"):
        with pytest.raises(ValueError, match="outside"):
            result.cache_for(bad)
    with pytest.raises(ValueError, match="empty"):
        result.cache_for_batch([])


def test_out_of_memory_becomes_an_error_naming_the_forward(monkeypatch):
    m = tiny_model("llama")
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)

    def boom(*args, **kwargs):
        raise oom("CUDA out of memory. Tried to allocate 1 GiB")

    handle = m.model.register_forward_pre_hook(lambda mod, args, kwargs: boom(), with_kwargs=True)
    try:
        with pytest.raises(
            PrefillOutOfMemoryError, match=r"forward 1/1: \d+ rows x 8 tokens, bins .*prompts \["
        ) as info:
            gpu_runner.prefill(m, GOOD, backend="dense")
        assert isinstance(info.value.__cause__, oom)
    finally:
        handle.remove()
