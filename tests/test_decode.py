"""Batch generation through the engine (`gpu_runner.engine.batch_generate`, the engine path of
`gpu_runner.generate`): greedy tokens equal HF `model.generate` on each prompt alone (fp32,
tiny Llama / Mistral / Qwen2), with early EOS, refills (more prompts than slots), prompts
waiting for KV pages, per-prompt lengths; seeded sampling; the page pool; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_runner_support import FAMILIES, hf_greedy, random_lengths, random_prompts, tiny_model

import gpu_runner
from gpu_runner.engine.batch_generate import BatchGenerator
from gpu_runner.engine.decode import batch_buckets
from gpu_runner.generate_engine import engine_unsupported
from gpu_runner.engine.kv_pages import GenerateOutOfMemoryError, KVLayout, PagedKVCache
from gpu_runner.engine.sampling import SamplingParams, sample
from gpu_runner.schedule import make_policy


def _news(n: int, seed: int) -> list[int]:
    return np.random.default_rng(seed).integers(1, 10, n).tolist()


@pytest.mark.parametrize("family", FAMILIES)
def test_refills_match_hf_on_each_prompt_alone(family):
    # 3 slots for 10 prompts, a 48-token prefill budget, 4-token pages: many refills, prompts
    # over the budget prefilled alone, sequences spanning several pages
    model = tiny_model(family)
    prompts = random_prompts(random_lengths(10, longest=40, seed=30), seed=30)
    news = _news(10, 30)
    gen = BatchGenerator(model, max_batch=3, page_tokens=4, prefill_tokens=64)
    out = gen.generate(prompts, news, policy=make_policy("refill-when-free", token_budget=48))
    assert out.tokens == [hf_greedy(model, p, n, eos_token_id=None) for p, n in zip(prompts, news)]
    s = out.stats
    assert s.max_live == 3 and s.prefills >= 4 and s.decode_rows == sum(news) - len(prompts)
    assert all(t > 0 for t in s.first_token_s)


@pytest.mark.parametrize("family", FAMILIES)
def test_generate_engine_path_with_early_eos(family):
    model = tiny_model(family)
    prompts = random_prompts(random_lengths(5, longest=30, seed=31), seed=31)
    free = [hf_greedy(model, p, 8, eos_token_id=None) for p in prompts]
    eos = free[2][1]  # prompt 2's second token: it (and maybe others) must stop early
    expected = [hf_greedy(model, p, 8, eos_token_id=eos) for p in prompts]
    assert len(expected[2]) <= 2 and any(len(e) < 8 for e in expected)
    got = gpu_runner.generate(model, prompts, 8, path="engine", eos_token_id=eos)
    assert got == expected
    # the model's own EOS by default (as HF generate), a per-prompt list, zeros kept empty
    news = [0, 3, 8, 1, 0]
    old, model.generation_config.eos_token_id = model.generation_config.eos_token_id, eos
    try:
        default = [e[:n] for e, n in zip(expected, news)]
        assert gpu_runner.generate(model, prompts, news, path="engine") == default
    finally:
        model.generation_config.eos_token_id = old


def test_prompts_wait_for_pages_and_stop_ids():
    model = tiny_model("llama")
    prompts = random_prompts([30, 5, 28, 12, 3, 25], seed=32)
    layout = KVLayout(2, 2, 8, 4, 8)
    # room for 6 pages of 8 tokens: two long prompts cannot decode side by side
    gen = BatchGenerator(model, max_batch=8, page_tokens=8, kv_budget_bytes=6 * layout.page_bytes)
    assert gen.cache.num_pages == 6
    out = gen.generate(prompts, 6)
    assert out.tokens == [hf_greedy(model, p, 6, eos_token_id=None) for p in prompts]
    assert out.stats.max_live < len(prompts)
    stop = out.tokens[0][2]
    got = gen.generate(prompts, 6, stop_token_ids=[stop]).tokens
    assert got == [hf_greedy(model, p, 6, eos_token_id=stop) for p in prompts]
    with pytest.raises(ValueError, match="prompt 0: 49 cached tokens"):
        gen.generate(prompts, [20, 1, 1, 1, 1, 1])
    with pytest.raises(GenerateOutOfMemoryError, match="holds no page"):
        BatchGenerator(model, kv_budget_bytes=10)


def test_sampling_seeded_and_top_k_one_is_greedy():
    model = tiny_model("qwen2")
    prompts = random_prompts([9, 3, 14, 6], seed=33)
    greedy = gpu_runner.generate(model, prompts, 6, path="engine", eos_token_id=None)
    assert greedy == [hf_greedy(model, p, 6, eos_token_id=None) for p in prompts]
    opts = dict(path="engine", eos_token_id=None, do_sample=True, temperature=1.3, top_p=0.9, top_k=0)
    a = gpu_runner.generate(model, prompts, 6, seed=7, **opts)
    assert a == gpu_runner.generate(model, prompts, 6, seed=7, **opts)
    assert a != gpu_runner.generate(model, prompts, 6, seed=8, **opts)
    assert gpu_runner.generate(model, prompts, 6, seed=7, **dict(opts, top_k=1)) == greedy
    logits = torch.tensor([[0.0, 3.0, 1.0], [2.0, 0.0, 1.9]])
    g = torch.Generator().manual_seed(0)
    near_greedy = SamplingParams(do_sample=True, top_p=0.01, seed=0)
    assert sample(logits, near_greedy, g).tolist() == [1, 0]
    draws = torch.stack([sample(logits, SamplingParams(do_sample=True, top_k=2), g) for _ in range(400)])
    assert set(draws[:, 0].tolist()) == {1, 2} and set(draws[:, 1].tolist()) == {0, 2}


def test_generate_falls_back_to_hf_path_when_the_engine_path_does_not_apply():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = tiny_model("llama")
    prompts = random_prompts([5, 9], seed=34)
    # an option only HF generate has: today's path, same result as HF with it
    got = gpu_runner.generate(model, prompts, 4, repetition_penalty=1.5)
    assert got == [hf_greedy(model, p, 4, repetition_penalty=1.5) for p in prompts]
    with pytest.raises(ValueError, match="repetition_penalty"):
        gpu_runner.generate(model, prompts, 4, path="engine", repetition_penalty=1.5)
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=64)).eval()
    assert "model_type 'gpt2'" in engine_unsupported(gpt2, prompts, 4, {}, [])
    assert "backend" in engine_unsupported(model, prompts, 4, {}, ["backend"])
    assert "RoPE table" in engine_unsupported(model, [[1] * 120], 20, {}, [])
    assert engine_unsupported(model, prompts, 4, {"do_sample": True, "seed": 1}, []) is None


@pytest.mark.parametrize("prompts,news,kwargs,match", [
    ([], 3, {}, "prompts is empty"),
    ([[1, 2], []], 3, {}, "prompt 1 is empty"),
    ([[1, 2], [96]], 3, {}, "outside the vocabulary"),
    ([[1, 2]], -1, {}, "max_new_tokens"),
    ([[1, 2]], True, {}, "max_new_tokens"),
    ([[1, 2], [3]], [1], {}, "2 prompts"),
    ([[1, 2], [3]], [1, 2.5], {}, r"max_new_tokens\[1\]"),
    ([[1, 2]], 3, {"stop_token_ids": [200]}, "stop token"),
    ([[1, 2]], 3, {"temperature": 0.0, "do_sample": True}, "temperature"),
    ([[1, 2]], 3, {"top_p": 1.5, "do_sample": True}, "top_p"),
    ([[1, 2]], 3, {"policy": "nope"}, "unknown refill policy"),
    ([[1, 2]], 3, {"path": "fast"}, "path"),
])
def test_bad_input_raises_one_clear_error(prompts, news, kwargs, match):
    model = tiny_model("llama")
    with pytest.raises(ValueError, match=match):
        gpu_runner.generate(model, prompts, news, **kwargs)


def test_page_pool_and_buckets():
    assert batch_buckets(1) == (1,) and batch_buckets(5) == (1, 2, 4, 5)
    assert batch_buckets(256) == (1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256)
    with pytest.raises(ValueError):
        batch_buckets(0)
    with pytest.raises(ValueError, match="power of two"):
        KVLayout(2, 2, 8, 4, page_tokens=12)
    layout = KVLayout(2, 2, 8, 4, page_tokens=4)
    assert layout.token_bytes == 2 * 2 * 2 * 8 * 4 and layout.pages_for(9) == 3
    cache = PagedKVCache(layout, num_pages=5, max_seqs=2, max_pages=4, device="cpu", dtype=torch.float32)
    assert cache.pool.shape == (2, 2, 6, 4, 2, 8) and cache.scratch_index() == 20
    a = cache.admit(9)  # pages 0, 1, 2
    assert cache.free_pages == 2 and cache.free_slots == 1
    assert cache.token_index(a, np.array([0, 5, 8])).tolist() == [0, 5, 8]
    with pytest.raises(ValueError, match="no room"):
        cache.admit(9)
    b = cache.admit(8)
    with pytest.raises(ValueError, match="no room"):
        cache.admit(1)  # no slot left
    cache.release(a)
    c = cache.admit(12)
    assert cache.token_index(c, np.array([0, 11])).tolist() == [0, 11] and b != c
    cache.sync_table()
    assert cache.table[c, :3].tolist() == [0, 1, 2] and cache.table[cache.scratch_slot].tolist() == [5] * 4
    with pytest.raises(ValueError, match="over the table"):
        cache.admit(17)


@pytest.mark.gpu
def test_cuda_graphs_match_eager_and_hf():
    # head_dim 32: the engine's Triton prefill kernels need head_dim / 2 >= 16
    from test_runner_support import model_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = model_config("llama", hidden_size=128, intermediate_size=128)
    model = AutoModelForCausalLM.from_config(cfg).to("cuda").eval()
    prompts = random_prompts(random_lengths(12, longest=40, seed=35), seed=35)
    news = _news(12, 35)
    expected = [hf_greedy(model, p, n, eos_token_id=None) for p, n in zip(prompts, news)]
    for graphs in (False, True):
        gen = BatchGenerator(model, max_batch=5, page_tokens=16, prefill_tokens=256, cuda_graphs=graphs)
        assert gen.generate(prompts, news).tokens == expected
    assert gen.step.num_graphs >= 2


def test_out_of_memory_names_what_did_not_fit(monkeypatch):
    model = tiny_model("llama")
    layout = KVLayout(2, 2, 8, 4, 8)

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with monkeypatch.context() as m:
        m.setattr(torch, "zeros", no_memory)
        with pytest.raises(GenerateOutOfMemoryError, match=r"the KV page pool \(5 pages of 8 tokens"):
            PagedKVCache(layout, num_pages=4, max_seqs=2, max_pages=4, device="cpu", dtype=torch.float32)
    gen = BatchGenerator(model, max_batch=4, page_tokens=8, prefill_tokens=64)
    prompts = random_prompts([5, 3, 9, 4, 6], seed=36)
    calls = []
    real_prefill = gen.engine.prefill

    def second_prefill_fails(batch):
        calls.append(len(batch))
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return real_prefill(batch)

    # a 12-token budget: the second refill fails while the first one's prompts decode
    monkeypatch.setattr(gen.engine, "prefill", second_prefill_fails)
    with pytest.raises(GenerateOutOfMemoryError, match=r"the packed prefill of \d+ prompts \(\d+ tokens\) did not fit"):
        gen.generate(prompts, 6, policy=make_policy(token_budget=12))
    assert calls[0] < len(prompts)
    assert gen.cache.free_slots == 4 and gen.cache.free_pages == gen.cache.num_pages  # nothing leaked
    monkeypatch.setattr(gen.engine, "prefill", real_prefill)
    assert gen.generate(prompts, 4).tokens == [hf_greedy(model, p, 4, eos_token_id=None) for p in prompts]
