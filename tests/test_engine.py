"""CPU checks of the fast prefill engine (`gpu_runner.engine`): logits and per-prompt K/V equal
HF run on each prompt alone (tiny random Llama / Qwen2 / GQA models, float32), bucketing,
the query-chunk layout, bad input, and that the HF model still works after weight fusing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpu_runner.engine import EngineOutput, PrefillEngine, bucket_tokens


def _model(family: str = "llama", kv_heads: int = 2):
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    cfg_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    cfg = cfg_cls(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=kv_heads, max_position_embeddings=256)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg).eval()


def _prompts(lengths, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 97, (n,), generator=g).tolist() for n in lengths]


def _layer_kv(cache, layer):
    if hasattr(cache, "layers"):
        return cache.layers[layer].keys, cache.layers[layer].values
    return cache.key_cache[layer], cache.value_cache[layer]


@pytest.mark.parametrize("family,kv_heads", [("llama", 4), ("llama", 2), ("qwen2", 2), ("mistral", 1)])
def test_matches_each_prompt_alone(family, kv_heads):
    model = _model(family, kv_heads)
    prompts = _prompts([5, 1, 17, 33, 2, 256 - 1])
    eng = PrefillEngine(model, token_bucket=16)
    res = eng.prefill(prompts)
    assert isinstance(res, EngineOutput) and res.logits.shape == (6, 97)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            out = model(torch.tensor([p]), use_cache=True)
            torch.testing.assert_close(res.logits[i], out.logits[0, -1], atol=1e-4, rtol=1e-4)
            for layer, (k, v) in enumerate(res.prompt_kv(i)):
                rk, rv = _layer_kv(out.past_key_values, layer)
                assert k.shape == (kv_heads, len(p), 16)
                torch.testing.assert_close(k, rk[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(v, rv[0], atol=1e-5, rtol=1e-5)


def test_hf_model_unchanged_after_fusing_and_buffers_reused():
    model = _model()
    prompts = _prompts([9, 30, 4])
    with torch.no_grad():
        before = model(torch.tensor([prompts[1]])).logits[0, -1].clone()
    eng = PrefillEngine(model, token_bucket=8)
    first = eng.prefill(prompts).clone()
    eng.prefill(_prompts([50, 60], seed=3))  # a larger batch grows the buffers
    again = eng.prefill(prompts)
    torch.testing.assert_close(again.logits, first.logits)
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([prompts[1]])).logits[0, -1], before)
    # the fused tensors are the module weights' storage: no duplicated weights
    attn = model.model.layers[0].self_attn
    assert attn.q_proj.weight.data_ptr() == eng.layers[0].qkv.data_ptr()


def test_bucketing_and_chunk_layout():
    assert bucket_tokens(1, 128) == 128 and bucket_tokens(128, 128) == 128 and bucket_tokens(129, 128) == 256
    model = _model()
    eng = PrefillEngine(model, token_bucket=16, q_chunk=8, attention="torch")
    eng.attention = "flash"  # stage the flash layout on CPU (staging only, no forward)
    t, p, _, cu = eng._stage([[1] * 5, [2], [3] * 17, [4] * 2])
    lay = eng._layout(t, p, eng._num_chunks(t, p))
    host = eng._in_host.numpy()
    assert t == 32 and list(cu) == [0, 5, 6, 23, 25]
    cu_q, cu_k, used = host[lay["cu_q"]], host[lay["cu_k"]], host[lay["used_k"]]
    # chunks: [0,5) [5,6) [6,14) [14,22) [22,23) [23,25) padding [25,32)
    assert list(cu_q[:8]) == [0, 5, 6, 14, 22, 23, 25, 32]
    assert list(cu_k[:7]) == [0, 5, 6, 6, 6, 23, 25]
    assert list(used[:7]) == [5, 1, 8, 16, 17, 2, 7]
    assert np.all(used[7:] == 0)
    assert list(host[lay["pos"]][:7]) == [0, 1, 2, 3, 4, 0, 0]
    assert list(host[lay["seg"]][20:32]) == [6, 6, 6, 23, 23] + list(range(25, 32))  # a pad token sees itself
    eng.q_chunk = 4  # the 7-token tail in chunks of 4 and 3, each attending within itself (not from 25)
    t, p, _, cu = eng._stage([[1] * 5, [2], [3] * 17, [4] * 2])
    lay = eng._layout(t, p, eng._num_chunks(t, p))
    host = eng._in_host.numpy()
    m = int(np.searchsorted(host[lay["cu_q"]], 32))
    assert list(host[lay["cu_q"]][m - 2 : m + 1]) == [25, 29, 32]
    assert list(host[lay["cu_k"]][m - 2 : m]) == [25, 29] and list(host[lay["used_k"]][m - 2 : m]) == [4, 3]


@pytest.mark.parametrize(
    "prompts,match",
    [([], "empty"), ([[1, 2], []], "prompt 1 is empty"), ([[1, 97]], "outside the vocabulary"),
     ([[1] * 257], "over the model's context")],
)
def test_bad_input_is_a_clear_error(prompts, match):
    eng = PrefillEngine(_model(), token_bucket=16)
    with pytest.raises(ValueError, match=match):
        eng.prefill(prompts)


def test_bad_options():
    model = _model()
    with pytest.raises(ValueError, match="token_bucket"):
        PrefillEngine(model, token_bucket=0)
    with pytest.raises(ValueError, match="attention"):
        PrefillEngine(model, attention="nope")
    with pytest.raises(ValueError, match="CUDA"):
        PrefillEngine(model, attention="flash")


@pytest.mark.parametrize("flag,module", [("attention_bias", "o_proj"), ("mlp_bias", "gate_proj")])
def test_biases_the_engine_cannot_fuse_are_refused(flag, module):
    """The O and down projections add into the residual inside the matmul, and SiLU * up has
    no bias term: a Llama built with those biases is refused, never run without them."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4,
                      max_position_embeddings=256, **{flag: True})
    model = AutoModelForCausalLM.from_config(cfg).eval()
    from gpu_runner.support import UnsupportedModelError

    with pytest.raises(UnsupportedModelError, match=f"bias.*{module}\\.bias"):
        PrefillEngine(model)


def test_prefill_result_is_the_library_type():
    from gpu_runner.result import PrefillResult

    model = _model()
    prompts = _prompts([7, 3, 20])
    res = PrefillEngine(model, token_bucket=16).prefill_result(prompts)
    assert isinstance(res, PrefillResult) and res.backend == "engine"
    assert res.logits.shape == (3, 97) and len(res.kv) == 3 and res.kv[2][0][0].shape == (2, 20, 16)
    cache = res.cache_for(1)  # a transformers cache that generate can continue from
    assert cache is not None


def test_prefill_result_cache_for_batch_matches_the_runner():
    """Both paths hand back one KV type: the engine's result batches caches (left-padded)
    exactly as `gpu_runner.prefill`'s does, and its per-prompt K/V equal the runner's."""
    import gpu_runner

    model = _model()
    prompts = _prompts([7, 3, 20])
    eng = PrefillEngine(model, token_bucket=16, cuda_graphs=False, attention="torch").prefill_result(prompts)
    ref = gpu_runner.prefill(model, prompts, backend="dense")
    assert type(eng.kv) is type(ref.kv)
    (e_cache, e_mask), (r_cache, r_mask) = eng.cache_for_batch([2, 0]), ref.cache_for_batch([2, 0])
    torch.testing.assert_close(e_mask, r_mask, rtol=0, atol=0)
    assert e_mask.tolist()[1] == [0] * 13 + [1] * 7
    for layer in range(2):
        for a, b in zip(_layer_kv(e_cache, layer), _layer_kv(r_cache, layer)):
            assert a.shape == (2, 2, 20, 16)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(eng.logits, ref.logits, rtol=1e-4, atol=1e-4)


def test_engine_applies_the_library_sliding_window_rule():
    from transformers import AutoModelForCausalLM, MistralConfig

    cfg = MistralConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, sliding_window=8)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with pytest.raises(ValueError, match="sliding window"):
        PrefillEngine(model, token_bucket=16).prefill([[1] * 9])
