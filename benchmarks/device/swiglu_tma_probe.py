"""The fused SwiGLU matmul (`engine_kernels.swiglu`: persistent Triton GEMM with TMA tensor
descriptors and SiLU * up in its epilogue, no [T, 2 I] intermediate) against cuBLAS gate/up +
the silu_mul kernel, for several tile configurations. Both are timed as a graph of one
product per layer over that many distinct weight tensors (as in the forward: no weight reuse
in L2), at the MMLU batch-64 token count. Usage: swiglu_tma_probe.py

Call 10 (H100, results/logs/h100_call10_probes.log): 128x128x64 tiles, 8 warps, 3 stages,
GROUP_M 16 fastest: alone 0.94-1.02x of cuBLAS + silu_mul at the 7B shape and 1.02-1.13x at
1.3B (its matmul runs about 8% under cuBLAS's rate); in the engine, fused_mlp_ab.py.
An earlier pointer-based (non-TMA, non-persistent) version reached 564-576 TFLOP/s (call 6).
"""
import torch
import torch.nn.functional as F

from gpu_runner.engine_kernels import silu_mul, swiglu
from gpu_runner.timing import time_graph

dev = torch.device("cuda")
t = 4352
configs = [dict(block_m=128, block_n=128, block_k=64, group_m=gm, num_warps=8, num_stages=st)
           for gm, st in ((16, 3), (8, 3), (4, 3), (32, 3), (16, 4), (1, 3))]
configs += [dict(block_m=128, block_n=128, block_k=128, group_m=16, num_warps=8, num_stages=2),
            dict(block_m=128, block_n=64, block_k=64, group_m=16, num_warps=4, num_stages=4),
            dict(block_m=64, block_n=128, block_k=64, group_m=16, num_warps=4, num_stages=4)]
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
