"""Per-layer cost of the family options of the engine's kernels, at one layer of a 7B-class shape.

One flat row of 64 MMLU prompts (the batch `prepack-bench` measures, rounded up to 128 tokens),
random bf16 activations; per variant the median of `triton.testing.do_bench` (us):
  qk_norm (Qwen3-8B: 32 / 8 heads of 128):
    torch_norm:   the per-head QK-norm as torch ops, then rope_attention (the engine before)
    fused_attn:   rope_attention with the QK-norm fused (the engine's packed path now)
    fused_store:  rope_store with the QK-norm fused, then packed_attention (the alternative)
    no_norm:      rope_attention without a norm (the Llama floor)
  head_dim (Phi-3-mini: 32 heads of 96, padded to 128 lanes; against 24 heads of 128, the
    same FLOPs): rope_attention at each
  gelu (Gemma-7B: hidden 3,072, I = 24,576): the gate/up matmul and GeLU-tanh as cuBLAS + torch
    ops (before), cuBLAS + gated_act, the fused gated matmul (now), and its SiLU at that shape
Usage (one GPU, under a minute): python benchmarks/tools/family_kernels_probe.py [--out probe.json]
CPU plumbing check (Triton's interpreter, a small shape): TRITON_INTERPRET=1 python
benchmarks/tools/family_kernels_probe.py --device cpu --dtype float32 --tokens 100 (minutes)
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np
import torch
import torch.nn.functional as F

from gpu_runner.bench.common import load_lengths
from gpu_runner.engine import kernels as ek
from gpu_runner.engine import matmul as mm
from gpu_runner.engine import reference as rk


def _time_us(fn, device: torch.device) -> float:
    """Median microseconds of fn() (do_bench on CUDA; 3 wall-clock calls elsewhere)."""
    if device.type == "cuda":
        import triton.testing

        return 1e3 * triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times)


def _row(tokens: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(seg_start, positions, T) of a flat row of MMLU prompts, T rounded up to 128 (a bucket)."""
    lengths = np.random.default_rng(0).choice(load_lengths("mmlu"), size=64)
    if tokens:  # the prompts that fit, at least one (cut to the cap)
        lengths = np.minimum(lengths, tokens)
        lengths = lengths[: max(1, int((np.cumsum(lengths) <= tokens).sum()))]
    total = int(lengths.sum())
    t = -(-total // 128) * 128
    seg = np.concatenate([np.repeat(np.cumsum(np.concatenate(([0], lengths[:-1]))), lengths), np.full(t - total, total)])
    return torch.tensor(seg, device=device), torch.tensor(np.arange(t) - seg, device=device), t


def _tables(d: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    freqs = torch.arange(4096, device=device).float()[:, None] * (
        10000 ** (-torch.arange(0, d, 2, device=device).float() / d))
    return freqs.cos().to(dtype), freqs.sin().to(dtype)


def probe(device: torch.device, dtype: torch.dtype, tokens: int) -> dict:
    seg, pos, t = _row(tokens, device)
    out: dict = {"tokens": t, "device": str(device)}
    kw = {"device": device, "dtype": dtype}
    # Qwen3-8B attention with its per-head QK-norm
    hq, hkv, d = 32, 8, 128
    cos, sin = _tables(d, device, dtype)
    qkv = torch.randn(t, (hq + 2 * hkv) * d, **kw)
    norm = ek.QKNorm(torch.rand(d, **kw) + 0.5, torch.rand(d, **kw) + 0.5, 1e-6)
    k, v = torch.empty(t, hkv, d, **kw), torch.empty(t, hkv, d, **kw)

    def torch_norm():
        x = qkv.clone()
        for part, w in ((x[:, : hq * d].view(t, hq, d), norm.q_weight), (x[:, hq * d : (hq + hkv) * d].view(t, hkv, d),
                                                                           norm.k_weight)):
            part.copy_(rk.head_rmsnorm_torch(part, w, norm.eps))
        return ek.rope_attention(x, pos, cos, sin, seg, k, v, hq, d**-0.5)

    out["qk_norm_us"] = {
        "torch_norm": _time_us(torch_norm, device),
        "fused_attn": _time_us(lambda: ek.rope_attention(qkv, pos, cos, sin, seg, k, v, hq, d**-0.5, qk_norm=norm),
                               device),
        "fused_store": _time_us(lambda: ek.packed_attention(ek.rope_store(qkv, pos, cos, sin, k, v, hq, qk_norm=norm),
                                                            k, v, seg, d**-0.5), device),
        "no_norm": _time_us(lambda: ek.rope_attention(qkv, pos, cos, sin, seg, k, v, hq, d**-0.5), device),
    }
    # Phi-3-mini's head_dim 96 (padded) against 128 at the same FLOPs
    out["head_dim_us"] = {}
    for heads, d in ((32, 96), (24, 128)):
        cos, sin = _tables(d, device, dtype)
        qkv = torch.randn(t, 3 * heads * d, **kw)
        k, v = torch.empty(t, heads, d, **kw), torch.empty(t, heads, d, **kw)
        out["head_dim_us"][f"{heads}x{d}"] = _time_us(
            lambda qkv=qkv, cos=cos, sin=sin, k=k, v=v, heads=heads, d=d: ek.rope_attention(
                qkv, pos, cos, sin, seg, k, v, heads, d**-0.5), device)
    # Gemma-7B's gate/up projection with its GeLU-tanh (hidden 3,072, I = 24,576)
    hidden, inter = (3072, 24576) if device.type == "cuda" else (64, 128)
    x = torch.randn(t, hidden, **kw)
    w = torch.randn(2 * inter, hidden, **kw) * hidden**-0.5
    counters = torch.zeros(mm.counter_slots(device), dtype=torch.int32, device=device)

    def torch_gelu():
        gate, up = F.linear(x, w).chunk(2, dim=-1)
        return gate.copy_(F.gelu(gate, approximate="tanh") * up)

    out["gelu_us"] = {
        "cublas_torch_ops": _time_us(torch_gelu, device),  # the engine before
        "cublas_gated_act": _time_us(lambda: ek.gated_act(F.linear(x, w), "gelu_tanh"), device),  # fused_mlp=False
        "fused_geglu": _time_us(lambda: mm.swiglu(x, w, counters=counters, activation="gelu_tanh"), device),  # now
        "fused_swiglu": _time_us(lambda: mm.swiglu(x, w, counters=counters), device),  # the Llama path, same shape
    }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--tokens", type=int, default=0, help="cap the row at this many tokens (0: all 64 prompts)")
    p.add_argument("--out", default="", help="the result JSON")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if not ek.use_triton(torch.empty(1, device=device)):
        print("family_kernels_probe: error: needs Triton on a CUDA device (or TRITON_INTERPRET=1)", file=sys.stderr)
        return 2
    result = probe(device, getattr(torch, args.dtype), args.tokens)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
