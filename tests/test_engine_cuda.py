"""GPU checks of the fast prefill engine: Triton kernels against the torch references, and
engine logits / K / V (eager and CUDA-graph replay, several shape buckets) against HF run on
each prompt alone, in bf16 with bf16 tolerances."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu


def _model(kv_heads: int = 2, bias: bool = False):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    kw = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=kv_heads, max_position_embeddings=2048)
    cfg = Qwen2Config(**kw) if bias else LlamaConfig(**kw)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16, attn_implementation="sdpa").eval()
    with torch.no_grad():  # norm weights away from one (HF's init), so that they are tested
        for layer in model.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
            layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
    return model


def _prompts(lengths, vocab=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def test_qkv_rope_and_packed_attention_match_references():
    """The QKV matmul with RoPE in its epilogue (bias, GQA, a split last wave at the 7B shape)
    and the attention over its outputs, against F.linear + the torch RoPE / attention."""
    import numpy as np

    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk
    from gpu_runner.engine import matmul as mk

    torch.manual_seed(0)
    counters = torch.zeros(mk.counter_slots(torch.device("cuda")), dtype=torch.int32, device="cuda")
    d = 128
    freqs = torch.arange(2048, device="cuda").float()[:, None] * (10000 ** (-torch.arange(0, d, 2, device="cuda").float() / d))
    cos, sin = freqs.cos().bfloat16(), freqs.sin().bfloat16()
    for t, hidden, hq, hkv, bias in ((300, 256, 4, 2, True), (4352, 4096, 32, 32, False), (1000, 1024, 8, 2, False)):
        x = torch.randn(t, hidden, device="cuda", dtype=torch.bfloat16)
        w = torch.randn((hq + 2 * hkv) * d, hidden, device="cuda", dtype=torch.bfloat16) * hidden**-0.5
        b = torch.randn(w.shape[0], device="cuda", dtype=torch.bfloat16) if bias else None
        lens = np.full(t // 50, 50)
        lens[-1] += t - lens.sum()
        seg = torch.tensor(np.repeat(np.cumsum(np.concatenate(([0], lens[:-1]))), lens), device="cuda")
        pos = torch.arange(t, device="cuda") - seg
        assert mk.qkv_fusable(x, w, hq, hkv, d)
        k1, v1, k2, v2 = (torch.empty(t, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(4))
        q1 = mk.qkv_rope(x, w, cos[pos], sin[pos], k1, v1, hq, bias=b, counters=counters)
        proj = torch.nn.functional.linear(x.float(), w.float())  # one rounding, as in the epilogue
        q2 = rk.rope_store_torch((proj if b is None else proj + b).bfloat16(), pos, cos, sin, k2, v2, hq)
        for got, want in ((q1, q2), (k1, k2), (v1, v2)):
            torch.testing.assert_close(got.float(), want.float(), atol=5e-2, rtol=2e-2)
        assert int(counters.abs().sum()) == 0
        out = ek.packed_attention(q1, k1, v1, seg, d**-0.5)
        ref = rk.packed_attention_torch(q1.float(), k1.float(), v1.float(), seg, d**-0.5)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_kernels_match_torch_reference():
    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk

    torch.manual_seed(0)
    h = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(256, device="cuda", dtype=torch.bfloat16)
    torch.testing.assert_close(ek.rmsnorm(h, w, 1e-6), rk.rmsnorm_torch(h, w, 1e-6), atol=2e-2, rtol=2e-2)
    gu = torch.randn(300, 2 * 384, device="cuda", dtype=torch.bfloat16)
    ref = torch.nn.functional.silu(gu[:, :384].float()) * gu[:, 384:].float()
    out = ek.silu_mul(gu.clone())  # in place over the gate half: compare against the untouched input
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    hq, hkv, dim = 4, 2, 64
    qkv = torch.randn(300, (hq + 2 * hkv) * dim, device="cuda", dtype=torch.bfloat16)
    pos = torch.randint(0, 2000, (300,), device="cuda")
    freqs = torch.arange(2048, device="cuda").float()[:, None] * (10000 ** (-torch.arange(0, dim, 2, device="cuda").float() / dim))
    cos, sin = freqs.cos().bfloat16(), freqs.sin().bfloat16()
    k1, v1 = torch.empty(300, hkv, dim, device="cuda", dtype=torch.bfloat16), torch.empty(300, hkv, dim, device="cuda", dtype=torch.bfloat16)
    k2, v2 = torch.empty_like(k1), torch.empty_like(v1)
    q1 = ek.rope_store(qkv, pos, cos, sin, k1, v1, hq)
    q2 = rk.rope_store_torch(qkv, pos, cos, sin, k2, v2, hq)
    torch.testing.assert_close(q1, q2, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(k1, k2, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(v1, v2)


def test_swiglu_matches_cublas_then_silu_mul():
    """The fused SwiGLU matmul against cuBLAS + silu_mul (same rounding points), on ragged shapes
    and on shapes whose last wave is split along K (checked through tail_split)."""
    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk
    from gpu_runner.engine import matmul as mk

    torch.manual_seed(0)
    counters = torch.zeros(mk.counter_slots(torch.device("cuda")), dtype=torch.int32, device="cuda")
    splits = []
    for t, k, n in ((300, 256, 384), (4352, 2048, 5504), (77, 512, 200), (4352, 4096, 2048), (1000, 1024, 3000)):
        x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(2 * n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
        assert mk.fusable(x, w) == (torch.cuda.get_device_capability() >= (9, 0))
        tiles = -(-t // mk.DEFAULT.block_m) * -(-n // mk.DEFAULT.block_n)
        splits.append(mk.tail_split(tiles, min(tiles, len(counters)), -(-k // mk.DEFAULT.block_k)))
        expect = ek.silu_mul(torch.nn.functional.linear(x, w)).float()
        got = mk.swiglu(x, w, counters=counters)
        torch.testing.assert_close(got.float(), expect, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(mk.swiglu(x, w, counters=counters), got, atol=0, rtol=0)  # deterministic
        assert int(counters.abs().sum()) == 0
    assert max(splits) > 1 and min(splits) == 1, splits


def test_rope_attention_matches_reference():
    import numpy as np

    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk

    lengths = [5, 1, 300, 3, 130, 64, 65, 900, 20]
    total = sum(lengths)
    t = total + 37
    seg = np.concatenate([np.repeat(np.cumsum([0] + lengths[:-1]), lengths), np.full(t - total, total)])
    pos = torch.tensor(np.arange(t) - seg, device="cuda")
    seg = torch.tensor(seg, device="cuda")
    d = 128
    freqs = torch.arange(2048, device="cuda").float()[:, None] * (10000 ** (-torch.arange(0, d, 2, device="cuda").float() / d))
    cos, sin = freqs.cos().bfloat16(), freqs.sin().bfloat16()
    for hq, hkv in [(8, 8), (8, 2)]:
        qkv = torch.randn(t, (hq + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16)
        k1, v1 = (torch.empty(t, hkv, d, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        k2, v2 = torch.empty_like(k1), torch.empty_like(v1)
        out = ek.rope_attention(qkv, pos, cos, sin, seg, k1, v1, hq, d**-0.5)
        q = rk.rope_store_torch(qkv, pos, cos, sin, k2, v2, hq)
        ref = rk.packed_attention_torch(q.float(), k2.float(), v2.float(), seg, d**-0.5)
        torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(k1, k2, atol=2e-2, rtol=2e-2)
        torch.testing.assert_close(v1, v2)


@pytest.mark.parametrize("d", [96, 80, 128, 256])
def test_kernel_options_match_reference_bf16(d):
    """Head dims other than powers of two (96, 80: padded tiles) and the 7B-class ones (128,
    Gemma's 256); the per-head QK-norm fused into rope_store / rope_attention in both weight
    conventions; the soft-cap in rope_attention / packed_attention; the GeLU-tanh gated kernel:
    bf16 against the torch references."""
    import numpy as np

    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk

    torch.manual_seed(0)
    lengths = [5, 1, 300, 3, 130, 64, 65, 20]
    total = sum(lengths)
    t = total + 37
    seg = np.concatenate([np.repeat(np.cumsum([0] + lengths[:-1]), lengths), np.full(t - total, total)])
    pos = torch.tensor(np.arange(t) - seg, device="cuda")
    seg = torch.tensor(seg, device="cuda")
    freqs = torch.arange(2048, device="cuda").float()[:, None] * (10000 ** (-torch.arange(0, d, 2, device="cuda").float() / d))
    cos, sin = freqs.cos().bfloat16(), freqs.sin().bfloat16()
    hq, hkv = 8, 2
    bf = {"device": "cuda", "dtype": torch.bfloat16}
    for unit, cap in ((None, 0.0), (False, 0.0), (True, 0.0), (False, 30.0)):
        qn = None if unit is None else ek.QKNorm(torch.rand(d, **bf) + 0.5, torch.rand(d, **bf) - 0.5, 1e-6, unit)
        # unit-scale inputs: at 3x (|K| up to ~15, one bf16 step 0.0625) the kernels' fp32 RoPE
        # (rounded once) and the reference's bf16 one part by a step in K, which the sharp softmax
        # turned into 0.3 at the output on the H200, for the reference's rounding, not the kernel's
        qkv = torch.randn(t, (hq + 2 * hkv) * d, **bf)
        k1, v1, k2, v2, k3, v3 = (torch.empty(t, hkv, d, **bf) for _ in range(6))
        q1 = ek.rope_store(qkv, pos, cos, sin, k1, v1, hq, qk_norm=qn)
        q2 = rk.rope_store_torch(qkv, pos, cos, sin, k2, v2, hq, qn)
        for got, want in ((q1, q2), (k1, k2), (v1, v2)):
            torch.testing.assert_close(got.float(), want.float(), atol=2e-2, rtol=2e-2)
        scale = d**-0.5
        out = ek.rope_attention(qkv, pos, cos, sin, seg, k3, v3, hq, scale, qk_norm=qn, softcap=cap)
        ref = rk.packed_attention_torch(q2.float(), k2.float(), v2.float(), seg, scale, cap)
        torch.testing.assert_close(out.float(), ref, atol=4e-2, rtol=2e-2)  # H200, 1x: up to 0.025
        torch.testing.assert_close(k3.float(), k2.float(), atol=4e-2, rtol=2e-2)  # up to 0.031
        torch.testing.assert_close(v3, v2)
        out = ek.packed_attention(q2, k2, v2, seg, scale, softcap=cap)
        torch.testing.assert_close(out.float(), ref, atol=4e-2, rtol=2e-2)  # up to 0.010
    gu = torch.randn(300, 2 * 1000, **bf) * 3
    for act in ("silu", "gelu_tanh"):
        want = rk.gated_act_torch(gu.clone(), act).float()
        torch.testing.assert_close(ek.gated_act(gu.clone(), act).float(), want, atol=2e-2, rtol=2e-2)


def test_geglu_matmul_matches_cublas_then_gated_act():
    """The fused gated matmul with GeLU-tanh in its epilogue (Gemma) against cuBLAS + gated_act
    (same rounding points), at Gemma-7B's MLP shape (hidden 3072, I 24,576) and a ragged one."""
    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import matmul as mk

    torch.manual_seed(0)
    counters = torch.zeros(mk.counter_slots(torch.device("cuda")), dtype=torch.int32, device="cuda")
    for t, k, n in ((4352, 3072, 24576), (77, 512, 200)):
        x = torch.randn(t, k, device="cuda", dtype=torch.bfloat16)
        w = torch.randn(2 * n, k, device="cuda", dtype=torch.bfloat16) * k**-0.5
        expect = ek.gated_act(torch.nn.functional.linear(x, w), "gelu_tanh").float()
        got = mk.swiglu(x, w, counters=counters, activation="gelu_tanh")
        torch.testing.assert_close(got.float(), expect, atol=2e-2, rtol=2e-2)
        assert int(counters.abs().sum()) == 0


@pytest.mark.parametrize("attention", ["packed", "flash"])
@pytest.mark.parametrize("graphs", [False, True])
@pytest.mark.parametrize("kv_heads,bias", [(4, False), (2, False), (2, True)])
def test_engine_matches_hf_per_prompt(attention, graphs, kv_heads, bias):
    from gpu_runner.engine import PrefillEngine

    model = _model(kv_heads, bias)
    batches = [_prompts([5, 1, 300, 77, 2, 128], seed=1), _prompts([40] * 20 + [700], seed=2), _prompts([3, 9], seed=3)]
    refs = []
    with torch.no_grad():
        for prompts in batches:
            refs.append([model(torch.tensor([p], device="cuda"), use_cache=True) for p in prompts])
    eng = PrefillEngine(model, token_bucket=64, cuda_graphs=graphs, attention=attention)
    for _ in range(2):  # second pass replays the captured graphs
        for prompts, ref in zip(batches, refs):
            res = eng.prefill(prompts)
            for i, r in enumerate(ref):
                torch.testing.assert_close(res.logits[i].float(), r.logits[0, -1].float(), atol=5e-2, rtol=5e-2)
                kv = res.prompt_kv(i)
                cache = r.past_key_values
                for layer in range(len(kv)):
                    torch.testing.assert_close(kv[layer][0].float(), cache.layers[layer].keys[0].float(), atol=5e-2, rtol=5e-2)
                    torch.testing.assert_close(kv[layer][1].float(), cache.layers[layer].values[0].float(), atol=5e-2, rtol=5e-2)
    if graphs:
        assert eng.num_graphs == 3


def test_graph_replay_equals_eager():
    from gpu_runner.engine import PrefillEngine

    model = _model()
    prompts = _prompts([17, 250, 3, 64, 900, 5])
    eager = PrefillEngine(model, cuda_graphs=False).prefill(prompts).clone()
    graph = PrefillEngine(model, cuda_graphs=True)
    graph.prefill(_prompts([10, 20]))
    out = graph.prefill(prompts)
    torch.testing.assert_close(out.logits, eager.logits, atol=0, rtol=0)
    torch.testing.assert_close(out.kv[:, :, : eager.kv.shape[2]], eager.kv, atol=0, rtol=0)


def test_fused_mlp_matches_cublas_then_silu_mul():
    from gpu_runner.engine import PrefillEngine

    model = _model()
    prompts = _prompts([5, 1, 300, 77, 2, 128, 40], seed=4)
    fused = PrefillEngine(model, fused_mlp=True).prefill(prompts).clone()  # kv cut to the real tokens
    plain = PrefillEngine(model, fused_mlp=False).prefill(prompts)
    total = int(plain.cu_seqlens[-1])
    torch.testing.assert_close(fused.logits, plain.logits, atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(fused.kv, plain.kv[:, :, :total], atol=2e-2, rtol=2e-2)


def test_qkv_rope_path_matches_rope_attention_path():
    """The QKV matmul with RoPE in its epilogue + packed_attention against cuBLAS QKV +
    rope_attention (RoPE inside the attention loop), on one model, with and without GQA."""
    from gpu_runner.engine import PrefillEngine

    for kv_heads in (4, 2):
        model = _model(kv_heads)
        prompts = _prompts([5, 1, 300, 77, 2, 128, 40], seed=5)
        plain_eng = PrefillEngine(model, fused_qkv=False)
        assert not any(w.qkv_rope for w in plain_eng.layers)
        plain = plain_eng.prefill(prompts).clone()
        eng = PrefillEngine(model)
        assert all(w.qkv_rope for w in eng.layers)
        fused = eng.prefill(prompts)
        torch.testing.assert_close(fused.logits, plain.logits, atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(fused.kv[:, :, : plain.kv.shape[2]], plain.kv, atol=5e-2, rtol=5e-2)


def test_query_chunks_match_one_segment_per_prompt():
    from gpu_runner.engine import PrefillEngine

    model = _model()
    prompts = _prompts([17, 250, 3, 64, 900, 5, 129, 128, 127])
    whole = PrefillEngine(model, q_chunk=0, attention="flash").prefill(prompts).clone()
    chunked = PrefillEngine(model, q_chunk=64, attention="flash").prefill(prompts)
    torch.testing.assert_close(chunked.logits.float(), whole.logits.float(), atol=2e-2, rtol=2e-2)
