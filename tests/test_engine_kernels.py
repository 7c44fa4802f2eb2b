"""The engine's Triton kernels on CPU, through Triton's interpreter (TRITON_INTERPRET=1, set
in a subprocess because Triton reads it when the kernels are defined): each against its
torch reference in float32. Skipped where Triton is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

pytest.importorskip("triton")

_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import torch
    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk
    from gpu_runner.engine import matmul as mk

    assert ek.use_triton(torch.empty(1)), "interpreter not active"
    torch.manual_seed(0)
    h, w = torch.randn(7, 48), torch.randn(48)
    torch.testing.assert_close(ek.rmsnorm(h, w, 1e-6), rk.rmsnorm_torch(h, w, 1e-6))
    gu = torch.randn(9, 2 * 40)
    ref = torch.nn.functional.silu(gu[:, :40]) * gu[:, 40:]
    torch.testing.assert_close(ek.silu_mul(gu.clone()), ref)
    # the fused SwiGLU matmul (TMA descriptors): ragged T and I, with and without the K split
    # of the last wave's tiles (4 programs in the interpreter)
    assert mk.fusable(torch.empty(4, 64), torch.empty(128, 64))
    counters = torch.zeros(mk.counter_slots(torch.device("cpu")), dtype=torch.int32)
    splits = set()
    small = dict(block_k=16, group_m=2, num_warps=4, num_stages=2, min_split=2)
    for t, k, n, cfg in ((37, 64, 40, mk.GemmConfig(16, 16, **small, max_split=8, min_split_steps=1)),
                         (64, 96, 48, mk.GemmConfig(32, 16, **dict(small, block_k=32), max_split=8, min_split_steps=1)),
                         (50, 160, 24, mk.GemmConfig(16, 8, **dict(small, group_m=3), max_split=3, min_split_steps=2,
                                                     prefetch_rows=True))):
        x, w = torch.randn(t, k), torch.randn(2 * n, k) * k**-0.5
        tiles = -(-t // cfg.block_m) * -(-n // cfg.block_n)
        splits.add(mk.tail_split(tiles, min(tiles, len(counters)), -(-k // cfg.block_k), cfg))
        ref = rk.silu_mul_torch(torch.nn.functional.linear(x, w))
        torch.testing.assert_close(mk.swiglu(x, w, cfg, counters=counters), ref, atol=1e-5, rtol=1e-5)
        assert int(counters.abs().sum()) == 0  # left at zero for the next launch
    assert splits == {1, 2, 4}, splits
    # a pipelined loop (flatten / warp_specialize) that does not compile: one warning, then the
    # plain loop, for this call and the next (no second try), with the same result
    import warnings
    real, tried = mk._gemm_kernel, []

    class NoPipelinedLoop:
        def __getitem__(self, grid):
            def launch(*args, **kw):
                tried.append(kw["FLATTEN"] or kw["WS"])
                if kw["FLATTEN"] or kw["WS"]:
                    raise RuntimeError("PassManager::run failed")
                return real[grid](*args, **kw)
            return launch

    mk._gemm_kernel = NoPipelinedLoop()
    cfg = mk.GemmConfig(16, 16, **small, flatten=True, warp_specialize=True)
    x, w = torch.randn(37, 64), torch.randn(80, 64) * 0.125
    ref = rk.silu_mul_torch(torch.nn.functional.linear(x, w))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            torch.testing.assert_close(mk.swiglu(x, w, cfg, counters=counters), ref, atol=1e-5, rtol=1e-5)
    assert tried == [True, False, False], tried
    assert len(caught) == 1 and "running the plain loop" in str(caught[0].message), caught
    mk._gemm_kernel = real
    hq, hkv, dim = 4, 2, 32
    qkv, pos = torch.randn(11, (hq + 2 * hkv) * dim), torch.randint(0, 100, (11,))
    freqs = torch.arange(100).float()[:, None] * torch.rand(dim // 2)[None, :]
    k1, v1, k2, v2 = (torch.empty(11, hkv, dim) for _ in range(4))
    q1 = ek.rope_store(qkv, pos, freqs.cos(), freqs.sin(), k1, v1, hq)
    q2 = rk.rope_store_torch(qkv, pos, freqs.cos(), freqs.sin(), k2, v2, hq)
    torch.testing.assert_close(q1, q2)
    torch.testing.assert_close(k1, k2)
    torch.testing.assert_close(v1, v2)
    lengths = [5, 1, 40, 3, 30]
    total = sum(lengths)
    t = total + 6
    seg = torch.tensor(np.concatenate([np.repeat(np.cumsum([0] + lengths[:-1]), lengths), np.full(t - total, total)]))
    cos, sin = freqs.cos(), freqs.sin()
    # BM == BN: K/V reach the cache from the loop's diagonal block; BM != BN: a pass of their own
    for (hq, hkv), (bm, bn) in [((4, 4), (16, 16)), ((4, 2), (16, 16)), ((4, 4), (32, 16)), ((4, 2), (32, 16))]:
        d = 32
        qkv = torch.randn(t, (hq + 2 * hkv) * d)
        pos = torch.tensor(np.arange(t) - seg.numpy())
        ka, va, kb, vb = (torch.full((t, hkv, d), float("nan")) for _ in range(4))
        out = ek.rope_attention(qkv, pos, cos, sin, seg, ka, va, hq, 0.25, block_m=bm, block_n=bn)
        q = rk.rope_store_torch(qkv, pos, cos, sin, kb, vb, hq)
        ref = rk.packed_attention_torch(q, kb, vb, seg, 0.25)
        torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(ka, kb)  # every row written (the buffers start as NaN)
        torch.testing.assert_close(va, vb)
    # the QKV matmul with RoPE in its epilogue (q returned, K / V into the cache), with and
    # without a bias, GQA and MHA, ragged T, RoPE rows loaded before or after the K loop;
    # then attention over its outputs
    for (hq, hkv), t, bias in (((4, 2), 45, False), ((2, 2), 33, True), ((6, 2), 64, False)):
        cfg = mk.GemmConfig(16, 32, block_k=16, group_m=2, num_warps=4, num_stages=2, prefetch_rows=bias)
        d, hidden = 32, 48
        x, w = torch.randn(t, hidden), torch.randn((hq + 2 * hkv) * d, hidden) * hidden**-0.5
        b = torch.randn((hq + 2 * hkv) * d) if bias else None
        pos = torch.randint(0, 100, (t,))
        assert mk.qkv_fusable(x, w, hq, hkv, d, cfg)
        ka, va, kb, vb = (torch.full((t, hkv, d), float("nan")) for _ in range(4))
        q = mk.qkv_rope(x, w, cos[pos].contiguous(), sin[pos].contiguous(), ka, va, hq, cfg, bias=b,
                        counters=counters)
        ref = rk.rope_store_torch(torch.nn.functional.linear(x, w, b), pos, cos, sin, kb, vb, hq)
        torch.testing.assert_close(q, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ka, kb, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(va, vb, atol=1e-5, rtol=1e-5)
        assert int(counters.abs().sum()) == 0
        lens = [t // 3, 1, t - t // 3 - 1]
        seg = torch.tensor(np.repeat(np.cumsum([0] + lens[:-1]), lens))
        for bm, bn in ((16, 16), (32, 16)):
            out = ek.packed_attention(q, ka, va, seg, 0.3, tiles=ek.AttentionTiles(bm, bn))
            torch.testing.assert_close(out, rk.packed_attention_torch(q, kb, vb, seg, 0.3), atol=1e-4, rtol=1e-4)
    assert not mk.qkv_fusable(x, w, hq, hkv, d, mk.GemmConfig(16, 48))  # a tile column block of 1.5 heads
    print("kernels ok")
    """
)


_ENGINE_SCRIPT = textwrap.dedent(
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    from gpu_runner.engine import PrefillEngine

    # 8 / 4 heads: the QKV matmul ropes in its epilogue (its 128-column tiles are whole heads);
    # 4 / 2 heads: they are not, so QKV, then RoPE inside the attention kernel
    for heads, kv_heads, qkv_rope in ((8, 4, True), (4, 2, False)):
        cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                          num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=32,
                          max_position_embeddings=128)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():  # norm weights away from one (HF's init), so that they are tested
            for layer in model.model.layers:
                layer.input_layernorm.weight.uniform_(0.5, 1.5)
                layer.post_attention_layernorm.weight.uniform_(0.5, 1.5)
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 1, 40, 17, 128)]
        with torch.no_grad():
            refs = [model(torch.tensor([p]), use_cache=True) for p in prompts]
        eng = PrefillEngine(model, token_bucket=16, cuda_graphs=False)
        assert eng.attention == "packed" and all(w.qkv_rope == qkv_rope for w in eng.layers)
        res = eng.prefill(prompts)
        with torch.no_grad():
            for i, (p, ref) in enumerate(zip(prompts, refs)):
                torch.testing.assert_close(res.logits[i], ref.logits[0, -1], atol=1e-4, rtol=1e-4)
                cache = ref.past_key_values
                for li, (k, v) in enumerate(res.prompt_kv(i)):
                    rk = cache.layers[li].keys if hasattr(cache, "layers") else cache.key_cache[li]
                    rv = cache.layers[li].values if hasattr(cache, "layers") else cache.value_cache[li]
                    torch.testing.assert_close(k, rk[0], atol=1e-5, rtol=1e-5)
                    torch.testing.assert_close(v, rv[0], atol=1e-5, rtol=1e-5)
    print("engine ok")
    """
)


_OPTIONS_SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import torch
    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk

    assert ek.use_triton(torch.empty(1)), "interpreter not active"
    torch.manual_seed(0)
    # the gated activation kernel: SiLU and GeLU-tanh against HF's ops (float32), then float16
    # (the activation rounded to the model dtype before the product: within an ulp)
    gu = torch.randn(9, 2 * 1100) * 3  # a ragged second column block
    for act in ("silu", "gelu_tanh"):
        torch.testing.assert_close(ek.gated_act(gu.clone(), act), rk.gated_act_torch(gu.clone(), act))
        half = gu.half()
        torch.testing.assert_close(ek.gated_act(half.clone(), act), rk.gated_act_torch(half.clone(), act),
                                   atol=1e-5, rtol=1e-3)
    gelu = torch.nn.functional.gelu(gu[:, :1100], approximate="tanh") * gu[:, 1100:]
    torch.testing.assert_close(ek.gated_act(gu.clone(), "gelu_tanh"), gelu)
    # the fused gated matmul with GeLU-tanh in its epilogue (Gemma), with and without the K split
    from gpu_runner.engine import matmul as mk
    counters = torch.zeros(mk.counter_slots(torch.device("cpu")), dtype=torch.int32)
    small = dict(block_k=16, group_m=2, num_warps=4, num_stages=2, min_split=2, min_split_steps=1)
    for t, k, n, split in ((37, 64, 40, 8), (50, 96, 24, 1)):
        x, w = torch.randn(t, k), torch.randn(2 * n, k) * 3 * k**-0.5
        ref = rk.gated_act_torch(torch.nn.functional.linear(x, w), "gelu_tanh")
        got = mk.swiglu(x, w, mk.GemmConfig(16, 16, **small, max_split=split), counters=counters, activation="gelu_tanh")
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        assert int(counters.abs().sum()) == 0

    lengths = [5, 1, 40, 3, 30]
    total = sum(lengths)
    t = total + 6
    seg = torch.tensor(np.concatenate([np.repeat(np.cumsum([0] + lengths[:-1]), lengths), np.full(t - total, total)]))
    pos = torch.tensor(np.arange(t) - seg.numpy())
    hq, hkv = 4, 2

    def qk_norm(d, unit_offset, dtype=torch.float32):
        return ek.QKNorm((torch.rand(d) + 0.5).to(dtype), (torch.rand(d) - 0.5).to(dtype), 1e-6, unit_offset)

    # head dims 96 and 80: tiles padded to 128 lanes (halves to 64); QK-norm with Qwen3's and
    # Gemma's weight conventions; the Gemma-2 soft-cap; BM == BN and BM != BN cache writes
    for d in (96, 80):
        freqs = torch.arange(100).float()[:, None] * torch.rand(d // 2)[None, :]
        cos, sin = freqs.cos(), freqs.sin()
        for norm in (None, False, True):
            qn = None if norm is None else qk_norm(d, norm)
            qkv = torch.randn(t, (hq + 2 * hkv) * d) * 2
            k1, v1, k2, v2 = (torch.full((t, hkv, d), float("nan")) for _ in range(4))
            q1 = ek.rope_store(qkv, pos, cos, sin, k1, v1, hq, qk_norm=qn)
            q2 = rk.rope_store_torch(qkv, pos, cos, sin, k2, v2, hq, qn)
            for got, want in ((q1, q2), (k1, k2), (v1, v2)):
                torch.testing.assert_close(got, want)
        for norm, cap, (bm, bn) in ((None, 0.0, (16, 16)), (False, 0.0, (32, 16)), (True, 0.0, (16, 16)),
                                    (False, 2.0, (16, 16)), (None, 2.0, (32, 16))):
            qn = None if norm is None else qk_norm(d, norm)
            qkv = torch.randn(t, (hq + 2 * hkv) * d) * 2
            ka, va, kb, vb = (torch.full((t, hkv, d), float("nan")) for _ in range(4))
            out = ek.rope_attention(qkv, pos, cos, sin, seg, ka, va, hq, 0.25, qk_norm=qn, softcap=cap,
                                    block_m=bm, block_n=bn)
            q = rk.rope_store_torch(qkv, pos, cos, sin, kb, vb, hq, qn)
            ref = rk.packed_attention_torch(q, kb, vb, seg, 0.25, cap)
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(ka, kb)  # every row written (the buffers start as NaN)
            torch.testing.assert_close(va, vb)
            if cap:  # the cap changes the result at these scores: the option is not a no-op
                assert (ref - rk.packed_attention_torch(q, kb, vb, seg, 0.25)).abs().max() > 1e-2
            out = ek.packed_attention(q, kb, vb, seg, 0.25, softcap=cap, tiles=ek.AttentionTiles(bm, bn))
            torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    # float16: the QK-norm's rounding points (Qwen3: norm cast, then times w in the model dtype;
    # Gemma: float32 norm times (1 + w), cast once): within an ulp of the reference and equal to
    # it almost everywhere (a sum order apart; the other rounding order parts on 26-40% of values)
    d = 96
    freqs = torch.arange(100).float()[:, None] * torch.rand(d // 2)[None, :]
    cos, sin = freqs.cos().half(), freqs.sin().half()
    for unit in (False, True):
        qn = qk_norm(d, unit, torch.float16)
        qkv = (torch.randn(t, (hq + 2 * hkv) * d) * 2).half()
        k1, v1, k2, v2 = (torch.empty((t, hkv, d), dtype=torch.float16) for _ in range(4))
        q1 = ek.rope_store(qkv, pos, cos, sin, k1, v1, hq, qk_norm=qn)
        q2 = rk.rope_store_torch(qkv, pos, cos, sin, k2, v2, hq, qn)
        for got, want in ((q1, q2), (k1, k2), (v1, v2)):
            torch.testing.assert_close(got, want, atol=2e-3, rtol=1e-3)  # an ulp of the RoPE terms
            assert (got != want).float().mean() < 5e-3, (got != want).float().mean()
    print("options ok")
    """
)


_FAMILIES_SCRIPT = textwrap.dedent(
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from gpu_runner.engine import PrefillEngine

    # through PrefillEngine with the Triton kernels: Qwen3 (per-head QK-norm fused into
    # rope_attention), Phi-3 with head_dim 96 (padded tiles), Gemma (GeLU-tanh gated kernel)
    small = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0)
    cases = {"qwen3": dict(head_dim=32), "phi3": dict(hidden_size=192, num_attention_heads=2, num_key_value_heads=1),
             "gemma": dict(head_dim=32, hidden_act="gelu_pytorch_tanh")}
    for model_type, extra in cases.items():
        cfg = AutoConfig.for_model(model_type, **{**small, **extra})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():  # norm weights away from their init, so that they are tested
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.uniform_(-0.5, 0.5) if model_type == "gemma" else p.uniform_(0.5, 1.5)
        g = torch.Generator().manual_seed(1)
        prompts = [torch.randint(0, 97, (n,), generator=g).tolist() for n in (5, 1, 40, 17)]
        with torch.no_grad():
            refs = [model(torch.tensor([p]), use_cache=True) for p in prompts]
        eng = PrefillEngine(model, token_bucket=16, cuda_graphs=False)
        assert eng.attention == "packed", (model_type, eng.attention)
        res = eng.prefill(prompts)
        for i, ref in enumerate(refs):
            torch.testing.assert_close(res.logits[i], ref.logits[0, -1], atol=1e-4, rtol=1e-4)
            cache = ref.past_key_values
            for li, (k, v) in enumerate(res.prompt_kv(i)):
                torch.testing.assert_close(k, cache.layers[li].keys[0], atol=1e-5, rtol=1e-5)
                torch.testing.assert_close(v, cache.layers[li].values[0], atol=1e-5, rtol=1e-5)
        print(model_type, "ok")
    print("families ok")
    """
)


def _interpret(script: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def test_triton_kernels_match_torch_references_in_the_interpreter():
    proc = _interpret(_SCRIPT)
    assert proc.returncode == 0 and "kernels ok" in proc.stdout, proc.stdout + proc.stderr


def test_engine_fused_paths_match_each_prompt_alone_in_the_interpreter():
    """The engine's fused paths (QKV matmul with RoPE epilogue + packed attention, or RoPE in
    the attention kernel; fused SwiGLU) in float32 through the interpreter: logits and K/V
    equal HF on each prompt alone."""
    proc = _interpret(_ENGINE_SCRIPT)
    assert proc.returncode == 0 and "engine ok" in proc.stdout, proc.stdout + proc.stderr


def test_kernel_options_match_torch_references_in_the_interpreter():
    """Head dims 96 and 80 (padded tiles), the per-head QK-norm in both weight conventions
    (float32, and float16 bit for bit), the Gemma-2 soft-cap and the GeLU-tanh gated kernel,
    each against its torch reference."""
    proc = _interpret(_OPTIONS_SCRIPT)
    assert proc.returncode == 0 and "options ok" in proc.stdout, proc.stdout + proc.stderr


def test_engine_qwen3_phi3_gemma_match_hf_in_the_interpreter():
    """A tiny Qwen3, Phi-3 (head_dim 96) and Gemma through PrefillEngine's Triton path in
    float32: logits and K/V equal HF run on each prompt alone."""
    proc = _interpret(_FAMILIES_SCRIPT)
    assert proc.returncode == 0 and "families ok" in proc.stdout, proc.stdout + proc.stderr


def test_attention_tiles_reject_bad_values_and_every_row_takes_the_measured_one():
    from gpu_runner.engine import kernels as ek

    for bad in (dict(block_m=48), dict(block_n=8), dict(block_m=True), dict(num_warps=3), dict(num_stages=0)):
        with pytest.raises(ValueError, match="block_m|block_n|num_warps"):
            ek.AttentionTiles(**bad)
    assert ek.PACKED_TILES == ek.AttentionTiles(64, 32, 4, 3)
    assert ek.packed_tiles(4096, 32) == ek.packed_tiles(16384, 16) == ek.packed_tiles(65536, 32) == ek.PACKED_TILES


def test_kernel_options_reject_bad_values():
    import torch

    from gpu_runner.engine import kernels as ek

    with pytest.raises(ValueError, match="one \\[D\\] shape"):
        ek.QKNorm(torch.ones(8), torch.ones(6), 1e-6)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ek.QKNorm(torch.ones(8), torch.ones(8), 0.0)
    with pytest.raises(ValueError, match="activation must be one of"):
        ek.gated_act(torch.randn(2, 8), "relu")
    q, kv, seg = torch.randn(3, 2, 16), torch.randn(3, 1, 16), torch.zeros(3, dtype=torch.long)
    for bad in (-1.0, True, "50"):
        with pytest.raises(ValueError, match="softcap must be"):
            ek.packed_attention(q, kv, kv, seg, 0.25, softcap=bad)
    assert ek.packed_head_dim(96) and ek.packed_head_dim(80) and ek.packed_head_dim(128)
    assert not ek.packed_head_dim(16) and not ek.packed_head_dim(97)


def test_swiglu_rejects_bad_shapes_and_counters():
    import torch

    from gpu_runner.engine import matmul as mk

    x, w = torch.randn(5, 8), torch.randn(6, 8)
    with pytest.raises(ValueError, match="2 I, hidden"):
        mk.swiglu(x, torch.randn(5, 8))  # odd row count: not a fused gate/up weight
    with pytest.raises(ValueError, match="2 I, hidden"):
        mk.swiglu(x, torch.randn(6, 7))
    with pytest.raises(ValueError, match="counters must be int32"):
        mk.swiglu(x, w, counters=torch.zeros(64, dtype=torch.int64))
    with pytest.raises(ValueError, match="counters must be int32"):
        mk.swiglu(x, w, counters=torch.zeros(1, dtype=torch.int32))
    out = mk.swiglu(x, w)  # CPU without the interpreter: the F.linear + silu_mul fallback
    torch.testing.assert_close(out, torch.nn.functional.silu(x @ w[:3].T) * (x @ w[3:].T))


def test_qkv_rope_and_packed_attention_reject_bad_shapes_and_fall_back():
    """CPU without the interpreter: clear ValueErrors for mismatched shapes, and the F.linear +
    torch RoPE / dense-mask fallbacks with the kernels' contracts (each token's RoPE rows,
    bias added, K / V written to the cache)."""
    import numpy as np
    import torch

    from gpu_runner.engine import kernels as ek
    from gpu_runner.engine import reference as rk
    from gpu_runner.engine import matmul as mk

    torch.manual_seed(0)
    t, hidden, hq, hkv, d = 9, 16, 4, 2, 8
    x, w, b = torch.randn(t, hidden), torch.randn((hq + 2 * hkv) * d, hidden), torch.randn((hq + 2 * hkv) * d)
    pos = torch.tensor([0, 1, 2, 0, 1, 0, 1, 2, 3])
    freqs = torch.arange(16).float()[:, None] * torch.rand(d // 2)[None, :]
    cos, sin = freqs.cos()[pos], freqs.sin()[pos]
    k1, v1, k2, v2 = (torch.full((t, hkv, d), float("nan")) for _ in range(4))
    q = mk.qkv_rope(x, w, cos, sin, k1, v1, hq, bias=b)
    ref = rk.rope_store_torch(torch.nn.functional.linear(x, w, b), pos, freqs.cos(), freqs.sin(), k2, v2, hq)
    torch.testing.assert_close(q, ref)
    torch.testing.assert_close(k1, k2)
    torch.testing.assert_close(v1, v2)
    with pytest.raises(ValueError, match="qkv_rope needs"):
        mk.qkv_rope(x, w[:-1], cos, sin, k1, v1, hq)  # not (Hq + 2 Hkv) D rows
    with pytest.raises(ValueError, match="qkv_rope needs"):
        mk.qkv_rope(x, w, cos, sin, k1[:-1], v1[:-1], hq)  # cache rows != tokens
    with pytest.raises(ValueError, match="per-token rows"):
        mk.qkv_rope(x, w, freqs.cos(), freqs.sin(), k1, v1, hq)  # the tables, not each token's rows
    with pytest.raises(ValueError, match="counters must be int32"):
        mk.qkv_rope(x, w, cos, sin, k1, v1, hq, counters=torch.zeros(1, dtype=torch.int32))
    seg = torch.tensor(np.repeat([0, 3, 5], [3, 2, 4]))
    out = ek.packed_attention(q, k1, v1, seg, 0.5)
    torch.testing.assert_close(out, rk.packed_attention_torch(q, k2, v2, seg, 0.5))
    with pytest.raises(ValueError, match="packed_attention needs"):
        ek.packed_attention(q, k1[:-1], v1[:-1], seg, 0.5)
    with pytest.raises(ValueError, match="packed_attention needs"):
        ek.packed_attention(q[:, :3], k1, v1, seg, 0.5)  # 3 query heads over 2 KV heads


def test_tail_split_rule():
    from gpu_runner.engine.matmul import GemmConfig, tail_split

    cfg = GemmConfig(max_split=6, min_split_steps=8, min_split=2)
    assert tail_split(100, 132, 64, cfg) == 1  # one partial wave only: nothing to balance
    assert tail_split(264, 132, 64, cfg) == 1  # whole waves
    assert tail_split(132 + 80, 132, 64, cfg) == 1  # the last wave is more than half full
    assert tail_split(132 + 20, 132, 64, cfg) == 6  # 132 // 20 = 6 parts, within max_split
    assert tail_split(132 + 40, 132, 64, cfg) == 3  # 132 // 40
    assert tail_split(132 + 20, 132, 24, cfg) == 3  # 24 K steps / 8 per part
    assert tail_split(132 + 20, 132, 8, cfg) == 1  # too short to split
    assert tail_split(132 + 20, 132, 16, cfg) == 2
    assert tail_split(132 + 20, 132, 16, GemmConfig(max_split=6, min_split_steps=8, min_split=3)) == 1
    engine_shapes = GemmConfig()  # the defaults on an H100 (132 SMs), T = 4352: 7B splits, 1.3B does not
    assert tail_split(34 * 86, 132, 64, engine_shapes) == 5
    assert tail_split(34 * 43, 132, 32, engine_shapes) == 1
