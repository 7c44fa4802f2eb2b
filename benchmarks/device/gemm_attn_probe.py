"""Where the 7B engine's last milliseconds are (issue #4's 80% roofline target), one call:

1. the matmul peak (20 and 400 back-to-back 8192^3 products);
2. each layer matmul of the 7B shape at the MMLU batch's token count (T = 4352), timed as a
   graph of 32 products over 32 distinct weight tensors (as the 32 layers: no L2 reuse of
   weights), with cuBLAS (torch's default) and with cuBLASLt preferred; the kernel picked;
3. the whole engine (graph replay) with each BLAS library preference;
4. the fused RoPE attention alone at that shape for several tile configurations;
5. the per-kernel totals of one eager engine forward.
Usage: gemm_attn_probe.py [MODEL]   (default llama2-7b)
"""
import sys
from collections import defaultdict
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from gpu_runner.bench import build_model, draw_prompts, load_lengths, real_token_flops
from gpu_runner.engine import PrefillEngine
from gpu_runner.engine_kernels import rope_attention
from gpu_runner.timing import kernel_times, matmul_peak_flops, time_calls, time_graph

dev = torch.device("cuda")
name = sys.argv[1] if len(sys.argv) > 1 else "llama2-7b"
peak = matmul_peak_flops(device=dev)
sustained = matmul_peak_flops(device=dev, reps=400)
print(f"matmul peak {peak / 1e12:.1f} TFLOP/s (20 reps), sustained {sustained / 1e12:.1f} (400 reps)", flush=True)

lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]
model = build_model(name, device="cuda", dtype="bfloat16")
cfg = model.config
prompts = draw_prompts(lengths, cfg.vocab_size, 0)
T = -(-int(lengths.sum()) // 128) * 128
H, I, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
hq, hkv = cfg.num_attention_heads, cfg.num_key_value_heads
D = H // hq
roof_ms = real_token_flops(cfg, lengths) / peak * 1e3
print(f"{name}: T={T} real={int(lengths.sum())} roofline {roof_ms:.2f} ms at the 20-rep peak", flush=True)


def kernel_names(fn):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sorted({ev.key[:90] for ev in prof.key_averages() if ev.device_time_total > 0})


g = torch.Generator(device=dev).manual_seed(0)


def rnd(*shape):
    return torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=g) * 0.02


x = rnd(T, H)
h = rnd(T, H)
gu_out = rnd(T, 2 * I)
shapes = {  # name: (weights [L, N, K], call)
    "qkv": (rnd(L, (hq + 2 * hkv) * D, H), lambda w: F.linear(x, w)),
    "o": (rnd(L, H, hq * D), lambda w: h.addmm_(x[:, : hq * D], w.t())),
    "gate_up": (rnd(L, 2 * I, H), lambda w: F.linear(x, w)),
    "down(strided)": (rnd(L, H, I), lambda w: h.addmm_(gu_out[:, :I], w.t())),
    "down(contig)": (None, None),
}
shapes["down(contig)"] = (shapes["down(strided)"][0], (lambda a: (lambda w: h.addmm_(a, w.t())))(gu_out[:, :I].contiguous()))
total = defaultdict(float)
for lib in ("cublas", "cublaslt"):
    try:
        torch.backends.cuda.preferred_blas_library(lib)
    except Exception as exc:  # noqa: BLE001
        print(f"preferred_blas_library({lib}) failed: {exc}")
        continue
    for sname, (ws, call) in shapes.items():
        n, k = ws.shape[1], ws.shape[2]
        try:
            ms = time_graph(lambda: [call(ws[i]) for i in range(L)], device=dev).median_ms / L
            tf = 2.0 * T * n * k / (ms * 1e-3) / 1e12
            if sname != "down(contig)":
                total[lib] += ms * L
            print(f"{lib:9s} {sname:14s} [{T}x{k}]x[{k}x{n}] {ms * 1e3:8.1f} us/layer {tf:6.1f} TFLOP/s "
                  f"kernels {kernel_names(lambda: call(ws[0]))}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"{lib} {sname}: FAILED {type(exc).__name__}: {exc}", flush=True)
    print(f"{lib}: matmuls of the {L} layers {total[lib]:.2f} ms", flush=True)
torch.backends.cuda.preferred_blas_library("cublas")
shapes = x = h = gu_out = None

for lib in ("cublas", "cublaslt"):
    torch.backends.cuda.preferred_blas_library(lib)
    eng = PrefillEngine(model)
    t = time_calls(partial(eng.prefill, prompts), device=dev, warmup=3, reps=20)
    print(f"engine blas={lib}: median {t.median_ms:.2f} ms (min {t.min_ms:.2f}) -> roofline {roof_ms / t.median_ms:.3f}",
          flush=True)
    eng = None
    torch.cuda.empty_cache()
torch.backends.cuda.preferred_blas_library("cublas")

# attention alone, the engine's inputs at this shape
cu = np.zeros(len(lengths) + 1, dtype=np.int64)
np.cumsum(lengths, out=cu[1:])
real = int(cu[-1])
pos = np.zeros(T, dtype=np.int64)
pos[:real] = np.arange(real) - np.repeat(cu[:-1], lengths)
seg = np.full(T, real, dtype=np.int64)
seg[:real] = np.repeat(cu[:-1], lengths)
pos_t, seg_t = torch.from_numpy(pos).to(dev), torch.from_numpy(seg).to(dev)
eng = PrefillEngine(model, cuda_graphs=False)
qkv = rnd(T, (hq + 2 * hkv) * D) * 50
k_out = torch.empty(T, hkv, D, device=dev, dtype=torch.bfloat16)
v_out = torch.empty_like(k_out)
ref = rope_attention(qkv, pos_t, eng.cos, eng.sin, seg_t, k_out, v_out, hq, D**-0.5)
floor_bytes = qkv.numel() * 2 + ref.numel() * 2 + 2 * k_out.numel() * 2
print(f"attention bytes floor {floor_bytes / 1e6:.1f} MB per layer", flush=True)
for bm, bn, warps, stages in ((64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 3), (128, 128, 8, 2), (64, 32, 4, 3),
                              (128, 64, 4, 3), (64, 64, 8, 3)):
    fn = partial(rope_attention, qkv, pos_t, eng.cos, eng.sin, seg_t, k_out, v_out, hq, D**-0.5,
                 block_m=bm, block_n=bn, num_warps=warps, num_stages=stages)
    try:
        out = fn()
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        ms = time_graph(fn, device=dev, calls=L).median_ms
        print(f"attention BM={bm} BN={bn} warps={warps} stages={stages}: {ms * 1e3:.1f} us/layer "
              f"({ms * L:.2f} ms for {L} layers, {floor_bytes / (ms * 1e-3) / 1e12:.2f} TB/s of the floor bytes) "
              f"rel err {err:.1e}", flush=True)
    except Exception as exc:  # noqa: BLE001
        print(f"attention BM={bm} BN={bn}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
copy_src = torch.empty(floor_bytes // 4, device=dev, dtype=torch.bfloat16)
copy_dst = torch.empty_like(copy_src)
ms = time_graph(lambda: copy_dst.copy_(copy_src), device=dev, calls=L).median_ms
print(f"device copy of the same bytes (read + write): {ms * 1e3:.1f} us/layer", flush=True)

# per-kernel totals of one eager forward
kernels = kernel_times(partial(eng.prefill, prompts), device=dev, warmup=2, reps=1)
print(f"eager forward kernels: total {sum(k.ms for k in kernels.values()):.2f} ms")
for key, k in list(kernels.items())[:14]:
    print(f"  {k.ms:8.2f} ms  x{int(k.count):4d}  {key[:80]}")
