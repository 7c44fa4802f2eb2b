"""Does cuBLAS pick faster kernels for the 7B layer matmuls when the product is computed
transposed (out^T = W @ x^T: tokens as the column dimension)? Each shape at T = 4352, as a
graph of 32 products over 32 distinct weights. Usage: gemm_layout_probe.py"""
import torch
import torch.nn.functional as F

from gpu_runner.timing import time_graph

dev = torch.device("cuda")
T, L = 4352, 32
g = torch.Generator(device=dev).manual_seed(0)


def rnd(*shape):
    return torch.randn(shape, device=dev, dtype=torch.bfloat16, generator=g) * 0.02


def kernels(fn):
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [ev.key[:60] for ev in prof.key_averages() if "nvjet" in ev.key or "gemm" in ev.key.lower()]


for sname, n, k, acc in (("qkv", 12288, 4096, False), ("o", 4096, 4096, True), ("gate_up", 22016, 4096, False),
                         ("down", 4096, 11008, True)):
    ws = rnd(L, n, k)
    x = rnd(T, k)
    xt = x.t().contiguous()
    h = rnd(T, n)
    ht = h.t().contiguous()
    if acc:
        variants = {"h += x W^T": lambda w: h.addmm_(x, w.t()),
                    "hT += W x^T(view)": lambda w: ht.addmm_(w, x.t()),
                    "hT += W xT": lambda w: ht.addmm_(w, xt)}
    else:
        variants = {"x W^T": lambda w: F.linear(x, w),
                    "W x^T(view)": lambda w: torch.mm(w, x.t()),
                    "W xT": lambda w: torch.mm(w, xt)}
    for vname, call in variants.items():
        ms = time_graph(lambda: [call(ws[i]) for i in range(L)], device=dev).median_ms / L
        print(f"{sname:8s} {vname:18s} {ms * 1e3:7.1f} us {2.0 * T * n * k / ms / 1e9:6.1f} TFLOP/s "
              f"{kernels(lambda: call(ws[0]))}", flush=True)
    ws = x = xt = h = ht = None
    torch.cuda.empty_cache()
