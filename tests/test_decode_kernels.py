"""The decode attention kernel (`gpu_runner.engine.decode_kernels`) on CPU through Triton's
interpreter (TRITON_INTERPRET=1, in a subprocess: Triton reads it when kernels are defined):
both kernels (head; split at several split counts, float32 and float16) against the torch
reference (GQA and MHA, several page sizes, rows sharing pages' tables, one-key rows, whole
pages), and batch generation with every Triton kernel of the step equal to HF greedy.
Skipped where Triton is not installed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gpu_runner.engine.decode_kernels import decode_attention, decode_attention_torch, decode_splits
from tests.conftest import REPO_ROOT

_SCRIPT = textwrap.dedent(
    """
    import torch
    from gpu_runner.engine import decode_kernels as dk
    from gpu_runner.engine.batch_generate import BatchGenerator

    assert dk.use_triton(torch.empty(1)), "interpreter not active"
    torch.manual_seed(0)
    # (Hq, Hkv, D, page): GQA groups of 2, 3 and 16 (no query-row padding), MHA, pages of 4..32
    for hq, hkv, d, page in ((4, 2, 16, 8), (4, 4, 32, 16), (6, 2, 16, 4), (2, 1, 32, 32), (32, 2, 16, 16)):
        k, v = torch.randn(9, page, hkv, d), torch.randn(9, page, hkv, d)
        table = torch.tensor([[3, 1, 7], [0, 2, 5], [8, 8, 8], [6, 4, 0]], dtype=torch.int32)
        seq = torch.tensor([1, 0, 3, 2, 1])
        lengths = torch.tensor([1, 3 * page, page + 1, page, 2 * page - 1])  # one key, whole pages, partial
        q = torch.randn(5, hq, d)
        ref = dk.decode_attention_torch(q, k, v, table, seq, lengths, 0.3)
        out = dk.decode_attention(q, k, v, table, seq, lengths, 0.3, kernel="head")
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        # split kernel, float32 (exact products): the rule's S, no split, and more splits than pages
        for splits in (None, 1, 2, 3, 5):
            out = dk.decode_attention(q, k, v, table, seq, lengths, 0.3, splits=splits)
            torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        # float16 tensor-core inputs against the reference on the same rounded inputs (bf16 is
        # checked on the GPU below: the interpreter's tl.dot multiplies bf16 bit patterns)
        h = [t.half() for t in (q, k, v)]
        ref16 = dk.decode_attention_torch(*(t.float() for t in h), table, seq, lengths, 0.3)
        for splits in (1, 2):
            out = dk.decode_attention(*h, table, seq, lengths, 0.3, splits=splits)
            torch.testing.assert_close(out.float(), ref16, atol=2e-3, rtol=2e-3)
    print("kernel ok")

    from transformers import AutoModelForCausalLM, LlamaConfig
    cfg = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    prompts = [[5, 9, 1, 33, 2, 7, 40, 8, 3], [17], [60, 4, 4, 21]]
    with torch.no_grad():
        ref = [model.generate(torch.tensor([p]), max_new_tokens=3, do_sample=False, eos_token_id=None)[0, len(p):].tolist()
               for p in prompts]
    gen = BatchGenerator(model, max_batch=2, page_tokens=4, prefill_tokens=16, token_bucket=16)
    assert gen.engine.attention == "packed"
    got = gen.generate(prompts, 3).tokens
    assert got == ref, (got, ref)
    print("generate ok")
    """
)


_OPTIONS_SCRIPT = textwrap.dedent(
    """
    import torch
    from gpu_runner.engine import decode_kernels as dk
    from gpu_runner.engine.batch_generate import BatchGenerator

    assert dk.use_triton(torch.empty(1)), "interpreter not active"
    torch.manual_seed(0)
    # head dims 96 and 80 (tiles padded to 128 lanes, the reduce too) and the Gemma-2 soft-cap,
    # both kernels, split counts 1 (no reduce) and 2, 3 (reduce)
    for hq, hkv, d, page in ((4, 2, 96, 8), (6, 2, 80, 4), (4, 4, 32, 16)):
        k, v = torch.randn(9, page, hkv, d) * 2, torch.randn(9, page, hkv, d)
        table = torch.tensor([[3, 1, 7], [0, 2, 5], [8, 8, 8], [6, 4, 0]], dtype=torch.int32)
        seq = torch.tensor([1, 0, 3, 2, 1])
        lengths = torch.tensor([1, 3 * page, page + 1, page, 2 * page - 1])
        q = torch.randn(5, hq, d) * 2
        for cap in (0.0, 1.5) if d != 80 else (0.0,):
            ref = dk.decode_attention_torch(q, k, v, table, seq, lengths, 0.3, softcap=cap)
            if cap:  # the cap changes the result at these scores: the option is not a no-op
                assert (ref - dk.decode_attention_torch(q, k, v, table, seq, lengths, 0.3)).abs().max() > 1e-2
            for kernel, splits in (("head", None), ("split", 1), ("split", 2), ("split", 3)):
                out = dk.decode_attention(q, k, v, table, seq, lengths, 0.3, kernel=kernel, splits=splits, softcap=cap)
                torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    print("kernel options ok")

    # generation through the engine's decode step: Qwen3 (per-head QK-norm fused into rope_store)
    # and Phi-3 (head_dim 96), equal to HF greedy
    from transformers import AutoConfig, AutoModelForCausalLM
    small = dict(vocab_size=64, hidden_size=64, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, max_position_embeddings=64, pad_token_id=0)
    for model_type, extra in (("qwen3", dict(head_dim=32)), ("phi3", dict(hidden_size=192))):
        cfg = AutoConfig.for_model(model_type, **{**small, **extra})
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(cfg).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
        prompts = [[5, 9, 1, 33, 2, 7, 40, 8, 3], [17], [60, 4, 4, 21]]
        with torch.no_grad():
            ref = [model.generate(torch.tensor([p]), max_new_tokens=3, do_sample=False, eos_token_id=None,
                                  pad_token_id=0)[0, len(p):].tolist() for p in prompts]
        gen = BatchGenerator(model, max_batch=2, page_tokens=4, prefill_tokens=16, token_bucket=16)
        assert gen.engine.attention == "packed"
        got = gen.generate(prompts, 3).tokens
        assert got == ref, (model_type, got, ref)
    print("generate options ok")
    """
)


def test_decode_kernel_options_and_generation_in_the_interpreter():
    """Head dims 96 / 80 and the soft-cap in both decode kernels against the torch reference,
    and Qwen3 (fused QK-norm) and Phi-3 (head_dim 96) generation equal to HF greedy."""
    pytest.importorskip("triton")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _OPTIONS_SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "generate options ok" in proc.stdout, proc.stdout + proc.stderr


def test_decode_kernel_and_generation_in_the_interpreter():
    pytest.importorskip("triton")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "generate ok" in proc.stdout, proc.stdout + proc.stderr


def test_torch_reference_equals_per_row_attention_and_rejects_bad_shapes():
    torch.manual_seed(1)
    k, v = torch.randn(4, 4, 2, 8), torch.randn(4, 4, 2, 8)
    table = torch.tensor([[2, 0, 3], [1, 1, 1]], dtype=torch.int32)
    q = torch.randn(2, 4, 8)
    lengths = torch.tensor([10, 3])
    out = decode_attention_torch(q, k, v, table, torch.tensor([0, 1]), lengths, 0.5)
    for b, (pages, n) in enumerate(((table[0], 10), (table[1], 3))):
        kk = k[pages.long()].reshape(-1, 2, 8)[:n].repeat_interleave(2, dim=1)  # [n, Hq, D]
        vv = v[pages.long()].reshape(-1, 2, 8)[:n].repeat_interleave(2, dim=1)
        p = torch.einsum("hd,nhd->hn", q[b], kk).mul(0.5).softmax(-1)
        torch.testing.assert_close(out[b], torch.einsum("hn,nhd->hd", p, vv))
    with pytest.raises(ValueError, match="Hkv dividing Hq"):
        decode_attention(torch.randn(2, 3, 8), k, v, table, torch.tensor([0, 1]), lengths, 0.5)
    with pytest.raises(ValueError, match="seq and lengths"):
        decode_attention(q, k, v, table, torch.tensor([0]), lengths, 0.5)
    with pytest.raises(ValueError, match="unknown decode attention kernel"):
        decode_attention(q, k, v, table, torch.tensor([0, 1]), lengths, 0.5, kernel="rows")
    with pytest.raises(ValueError, match="splits"):
        decode_attention(q, k, v, table, torch.tensor([0, 1]), lengths, 0.5, splits=0)


def test_split_rule_fills_a_wave_within_the_table():
    cpu = torch.device("cpu")  # 4 stand-in SMs: target 16 programs
    assert decode_splits(64, 32, 20, cpu) == 1
    assert decode_splits(1, 2, 20, cpu) == 8
    assert decode_splits(1, 1, 3, cpu) == 3  # never more splits than the table has pages
    assert decode_splits(3, 1, 64, cpu) == 8


@pytest.mark.gpu
def test_decode_kernel_on_cuda_bf16_matches_the_reference():
    torch.manual_seed(2)
    for hq, hkv, d, page in ((32, 32, 128, 64), (32, 8, 128, 64), (16, 2, 64, 16), (32, 32, 96, 16), (16, 2, 80, 16)):
        k = torch.randn(40, page, hkv, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn_like(k)
        table = torch.randperm(40, device="cuda").to(torch.int32).view(4, 10)
        seq = torch.tensor([0, 1, 2, 3, 1, 0], device="cuda")
        lengths = torch.tensor([1, 10 * page, 3 * page + 5, page, 17, 2], device="cuda")
        q = torch.randn(6, hq, d, device="cuda", dtype=torch.bfloat16)
        for cap in (0.0, 5.0):  # the Gemma-2 soft-cap off and on
            ref = decode_attention_torch(q.float(), k.float(), v.float(), table, seq, lengths, d**-0.5, softcap=cap)
            for kernel, splits in (("head", None), ("split", None), ("split", 1), ("split", 4), ("split", 16)):
                out = decode_attention(q, k, v, table, seq, lengths, d**-0.5, kernel=kernel, splits=splits, softcap=cap)
                torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
