"""The fused SwiGLU matmul (`engine_kernels.swiglu`: persistent Triton GEMM with TMA tensor
descriptors and SiLU * up in its epilogue, no [T, 2 I] intermediate) against cuBLAS gate/up +
the silu_mul kernel, for several tile configurations. Both are timed as a graph of one
product per layer over that many distinct weight tensors (as in the forward: no weight reuse
in L2), at the MMLU batch-64 token count. Usage: swiglu_tma_probe.py

Call 10 (H100, results/logs/h100_call10_probes.log): the kernel first ran two matmuls per K
step (gate and up tiles): 0.94-1.02x of cuBLAS + silu_mul at the 7B shape, 1.02-1.13x at
1.3B. One TMA load of the [2, I, hidden] weight view and one [BM, 2 BN] matmul: 1.03-1.06x
(7B), 1.07-1.14x (1.3B). 128x128x64 tiles, 8 warps, 3 stages; GROUP_M 12-13 best (11-16
within 2%); warp specialization no gain; 2-CTA clusters (num_ctas=2) do not compile.
An earlier pointer-based (non-TMA, non-persistent) version reached 564-576 TFLOP/s (call 6).
"""
import torch
import torch.nn.functional as F

from gpu_runner.engine_kernels import silu_mul, swiglu
from gpu_runner.timing import time_graph

dev = torch.device("cuda")
t = 4352
base_cfg = dict(block_m=128, block_n=128, block_k=64, num_warps=8, num_stages=3)
configs = [dict(base_cfg, group_m=gm) for gm in (12, 16, 13, 11, 10, 8)]
for name, hidden, inter, layers in (("7b", 4096, 11008, 32), ("1.3b", 2048, 5504, 24)):
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(t, hidden, device=dev, dtype=torch.bfloat16, generator=gen)
    ws = torch.randn(layers, 2 * inter, hidden, device=dev, dtype=torch.bfloat16, generator=gen) * hidden**-0.5
    flops = 2 * t * hidden * 2 * inter
    expect = silu_mul(F.linear(x, ws[0])).float()
    for rep in range(2):
        base = time_graph(lambda: [silu_mul(F.linear(x, ws[i])) for i in range(layers)], device=dev).median_ms / layers
        print(f"{name}: cublas gate_up + silu_mul {base * 1e3:.0f} us ({flops / base / 1e9:.0f} TFLOP/s effective)",
              flush=True)
        for cfg in configs if rep == 0 else configs[:1]:
            tag = " ".join(f"{k}={v}" for k, v in cfg.items())
            try:
                got = swiglu(x, ws[0], **cfg).float()
                err = ((got - expect).norm() / expect.norm()).item()
                ms = time_graph(lambda: [swiglu(x, ws[i], **cfg) for i in range(layers)], device=dev).median_ms / layers
                print(f"{name}: swiglu {tag}: {ms * 1e3:.0f} us ({flops / ms / 1e9:.0f} TFLOP/s) "
                      f"{base / ms:.3f}x of cublas+silu, rel err {err:.1e}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a configuration that does not compile or fit
                print(f"{name}: swiglu {tag}: {type(exc).__name__} {str(exc)[:160]}", flush=True)
    x = ws = None
    torch.cuda.empty_cache()
