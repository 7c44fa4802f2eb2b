"""Unit tests of the runner's parts: masks, the varlen call built from a kernel's signature,
cache compatibility helpers, forward planning, and the backend registry."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_runner_support import random_prompts, tiny_model

import gpu_runner
import packers
from gpu_runner import cache
from gpu_runner.attention import masks, registry as backends, varlen
from gpu_runner.plan import plan_forwards


def test_dense_mask_is_block_diagonal_causal_with_padding_apart():
    seg = torch.tensor([[0, 0, 1, 1, 1, -1], [2, 2, 2, 2, 2, 2]])
    mask = masks.dense_block_causal_mask(seg)
    assert mask.shape == (2, 1, 6, 6) and mask.dtype == torch.bool
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [0, 0, 1, 0, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask[0, 0], expected)
    assert torch.equal(mask[1, 0], torch.ones(6, 6, dtype=torch.bool).tril())
    with pytest.raises(ValueError, match="rows, row_len"):
        masks.dense_block_causal_mask(seg[0])


def test_flex_block_mask_agrees_with_the_dense_mask():
    packing = packers.make_packer("ffd").pack([3, 9, 1, 6, 5, 2], 10)
    inputs = gpu_runner.pack_inputs(random_prompts([3, 9, 1, 6, 5, 2]), packing, row_len=12)
    block = masks.flex_block_mask(inputs.segment_ids, block_size=4)
    dense = masks.dense_block_causal_mask(inputs.segment_ids)
    mod = masks.document_causal_mask_mod(inputs.segment_ids)
    r, q, k = torch.meshgrid(torch.arange(inputs.num_rows), torch.arange(12), torch.arange(12), indexing="ij")
    assert torch.equal(mod(r, 0, q, k), dense[:, 0])
    # Tiles the dense mask never touches are skipped by the block mask.
    touched = dense[:, 0].reshape(inputs.num_rows, 3, 4, 3, 4).any(dim=(2, 4))
    assert torch.equal(block.to_dense()[:, 0].bool(), touched)


class _Recorder:
    """Fake kernels with the signatures of different torch versions; record the call."""

    def __init__(self):
        self.kwargs = None
        self.heads = None

    def new_style(self, query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                  window_size=(-1, -1), enable_gqa=False):  # fmt: skip
        self.kwargs = {"scale": scale, "window_size": window_size, "enable_gqa": enable_gqa}
        self.heads = key.shape[1]
        return varlen.reference_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale,
                                            window_size=window_size, enable_gqa=enable_gqa)  # fmt: skip

    def old_style(
        self, query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None
    ):
        self.kwargs = {"is_causal": is_causal}
        self.heads = key.shape[1]
        return query.new_zeros(query.shape), None  # tuple outputs are unwrapped


def test_varlen_call_follows_the_kernel_signature():
    q, k = torch.randn(7, 4, 8), torch.randn(7, 2, 8)
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    rec = _Recorder()
    out = varlen.call_varlen_kernel(rec.new_style, q, k, k, cu, 4, 0.5)
    assert rec.kwargs == {"scale": 0.5, "window_size": (-1, 0), "enable_gqa": True} and rec.heads == 2
    assert out.shape == (7, 4, 8)
    out = varlen.call_varlen_kernel(rec.old_style, q, k, k, cu, 4, 8**-0.5)
    assert rec.kwargs == {"is_causal": True} and rec.heads == 4  # GQA by repeating K/V heads
    assert out.shape == (7, 4, 8)
    with pytest.raises(RuntimeError, match="scale"):
        varlen.call_varlen_kernel(rec.old_style, q, k, k, cu, 4, 0.5)
    with pytest.raises(RuntimeError, match="causal"):
        varlen.call_varlen_kernel(lambda q, k, v, a, b, c, d: q, q, k, k, cu, 4, 0.5)


def test_reference_varlen_is_causal_per_segment():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 5, 2, 4).unbind(0)
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    out = varlen.reference_varlen_attn(q, k, v, cu, cu, 3, 3, window_size=(-1, 0))
    for a, b in ((0, 2), (2, 5)):
        ref = torch.nn.functional.scaled_dot_product_attention(
            q[a:b].transpose(0, 1), k[a:b].transpose(0, 1), v[a:b].transpose(0, 1), is_causal=True
        ).transpose(0, 1)
        torch.testing.assert_close(out[a:b], ref)


def test_varlen_unavailable_on_cpu_and_in_fp32():
    reason = varlen.varlen_unavailable_reason(torch.device("cpu"), torch.bfloat16)
    assert reason is not None and "CUDA" in reason
    assert backends.auto_backend_name(torch.device("cpu"), torch.float32) == "dense"


def test_cache_helpers_across_layouts():
    k = torch.randn(1, 2, 3, 4)
    new = SimpleNamespace(layers=[SimpleNamespace(keys=k, values=k + 1)])
    old = SimpleNamespace(key_cache=[k], value_cache=[k + 1])
    for c in (new, old, ((k, k + 1),)):
        ((got_k, got_v),) = cache.cache_layers_kv(c)
        assert got_k is k and torch.equal(got_v, k + 1)
    with pytest.raises(ValueError, match="cannot read"):
        cache.cache_layers_kv(object())
    assert cache.output_cache(SimpleNamespace(cache=None, past_key_values=new)) is new
    with pytest.raises(ValueError, match="no cache"):
        cache.output_cache(SimpleNamespace(cache=None))

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None):
            return input_ids

    class Neither(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    assert cache.cache_kwarg_name(Old()) == "past_key_values"
    assert cache.cache_kwarg_name(tiny_model("llama")) in ("cache", "past_key_values")
    with pytest.raises(ValueError, match="neither"):
        cache.cache_kwarg_name(Neither())


def test_left_padded_cache_layout():
    a = [(torch.ones(2, 3, 4), 2 * torch.ones(2, 3, 4))]
    b = [(torch.ones(2, 1, 4), 2 * torch.ones(2, 1, 4))]
    empty = [(torch.ones(2, 0, 4), torch.ones(2, 0, 4))]
    c, mask = cache.left_padded_cache([a, b, empty], length=4)
    assert mask.tolist() == [[0, 1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    ((keys, values),) = cache.cache_layers_kv(c)
    assert keys.shape == (3, 2, 4, 4)
    assert torch.equal(keys[:, 0, :, 0], mask.float())
    assert torch.equal(values[:, 0, :, 0], 2 * mask.float())
    with pytest.raises(ValueError, match="shorter"):
        cache.left_padded_cache([a], length=2)


def test_plan_forwards_respects_budget_rows_and_order():
    packing = packers.make_packer("ffd").pack([9, 8, 7, 5, 4, 3, 2, 1], 10)

    def estimate(rows, width, n):
        return rows * width  # bytes = tokens

    plans = plan_forwards(packing, estimate, memory_budget_bytes=20)
    assert [b for p in plans for b in p.bins] == list(range(packing.num_bins))
    assert all(p.estimated_bytes <= 20 for p in plans) and len(plans) > 1
    fixed = plan_forwards(packing, estimate, row_len=10, num_rows=2)
    assert all(p.num_rows == 2 and p.row_len == 10 and len(p.bins) <= 2 for p in fixed)
    with pytest.raises(ValueError, match="bin 0 .* alone needs about 10 bytes"):
        plan_forwards(packing, estimate, memory_budget_bytes=9)


def test_backend_registry():
    assert gpu_runner.available_backends()[:1] == ["auto"]
    assert {"dense", "flex", "varlen"} <= set(gpu_runner.available_backends())
    with pytest.raises(ValueError, match="already registered"):
        gpu_runner.register_backend(gpu_runner.get_backend("dense"))
    with pytest.raises(ValueError, match="not 'auto'"):
        gpu_runner.AttentionBackend("auto", "sdpa", lambda i: {}, lambda d, t: None)


def test_prefill_texts_tokenizes_then_prefills():
    model = tiny_model("llama")

    def tokenizer(text):
        return {"input_ids": [ord(c) % 90 for c in text]}

    result = gpu_runner.prefill_texts(model, tokenizer, ["hello", "a", "packed rows"], backend="dense")
    direct = gpu_runner.prefill(model, [tokenizer(t)["input_ids"] for t in ["hello", "a", "packed rows"]])
    torch.testing.assert_close(result.logits, direct.logits)
    with pytest.raises(ValueError, match="not one string"):
        gpu_runner.prefill_texts(model, tokenizer, "hello")


def test_prompt_kv_indexing():
    model = tiny_model("qwen2")
    prompts = random_prompts([4, 9, 1, 6], seed=12)
    kv = gpu_runner.prefill(model, prompts, backend="dense").kv
    assert len(kv) == 4 and len(list(kv)) == 4
    assert [layers[0][0].shape[1] for layers in kv[1:3]] == [9, 1]
    assert all(torch.equal(a[0], b[0]) for a, b in zip(kv[-1], kv[3]))
    with pytest.raises(IndexError):
        kv[4]


def test_auto_choice_follows_the_cost_model():
    simulator = pytest.importorskip("simulator")
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                      num_key_value_heads=16, vocab_size=32000)  # fmt: skip
    spec = simulator.ModelSpec.from_hf_config(cfg)
    for lengths in ([40, 300, 90, 12, 150, 64] * 3, list(range(20, 700, 3))):
        packing = packers.make_packer("ffd").pack(lengths, max(lengths))
        times = {
            n: simulator.CostModel(spec, "h100", n).cost(packing).est_time_s for n in ("varlen", "dense")
        }
        expected = min(times, key=times.get)
        assert backends.cheapest_by_cost_model(["varlen", "dense"], cfg, packing, "h100") == expected
    assert backends.cheapest_by_cost_model(["varlen", "dense"], cfg, packing, "no-such-gpu") is None
    assert backends.gpu_table_name(torch.device("cpu")) is None


def test_prompt_kv_left_padded_gather_equals_the_list_version():
    model = tiny_model("mistral")
    prompts = random_prompts([12, 3, 20, 1, 7, 15, 9], seed=13)
    whole = gpu_runner.prefill(model, prompts, backend="dense")
    budget = max(f.estimated_bytes for f in whole.forwards) // 3
    split = gpu_runner.prefill(model, prompts, backend="dense", memory_budget_bytes=budget)
    assert len(split.forwards) > 1
    indices = [4, None, 0, 2, 3, 6]
    empty = [(k[:, :0], v[:, :0]) for k, v in split.kv[0]]
    lists = [empty if i is None else split.kv[i] for i in indices]
    ref_cache, ref_mask = cache.left_padded_cache(lists, length=22)
    layers, mask = split.kv.left_padded(indices, length=22)
    assert torch.equal(mask, ref_mask)
    for (k, v), (rk, rv) in zip(layers, cache.cache_layers_kv(ref_cache)):
        assert torch.equal(k, rk) and torch.equal(v, rv)
    with pytest.raises(IndexError):
        split.kv.left_padded([7])


def test_attention_switch_is_replayed_after_the_first_time(monkeypatch):
    from test_runner_support import model_config, register_reference_varlen_backends
    from transformers import AutoModelForCausalLM

    register_reference_varlen_backends()
    model = AutoModelForCausalLM.from_config(model_config("llama")).eval()
    calls = []
    original = model.set_attn_implementation
    monkeypatch.setattr(model, "set_attn_implementation", lambda impl: (calls.append(impl), original(impl)))
    prompts = random_prompts([5, 8, 2], seed=15)
    results = [gpu_runner.prefill(model, prompts, backend="varlen-reference") for _ in range(3)]
    assert calls == ["prepack_varlen-reference", "sdpa"]  # then replayed
    assert model.config._attn_implementation == "sdpa"
    seen = []
    handle = model.model.layers[1].self_attn.register_forward_pre_hook(
        lambda mod, args: seen.append(mod.config._attn_implementation)
    )
    gpu_runner.prefill(model, prompts, backend="varlen-reference")
    handle.remove()
    assert seen == ["prepack_varlen-reference"]
    torch.testing.assert_close(results[2].logits, gpu_runner.prefill(model, prompts, backend="dense").logits)
