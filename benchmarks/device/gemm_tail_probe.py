"""The fused SwiGLU matmul (`gpu_runner.matmul_kernels.swiglu`) against cuBLAS gate/up +
silu_mul at the engine's shapes (MMLU batch 64: T = 4352), for several rules of the K split of
the last wave's tiles (`GemmConfig.max_split`, `min_split_steps`). Timed as a graph of one
product per layer over that many distinct weights (as in the forward: no weight reuse in L2).
Usage: gemm_tail_probe.py [7b|1.3b ...]

Call 13 (H100, results/logs/h100_call13_gemm_tail.log) also timed Triton versions of the QKV,
O and down matmuls (plain store / residual-add epilogues) in this kernel: QKV 1.01x of cuBLAS
(7B) and 0.87-0.92x (1.3B), O and down 0.68-0.93x: not kept.
"""
import sys
from dataclasses import replace

import torch
import torch.nn.functional as F

from gpu_runner import engine_kernels as ek
from gpu_runner import matmul_kernels as mk
from gpu_runner.timing import time_graph

dev = torch.device("cuda")
t = 4352
shapes = {"7b": (4096, 11008, 32), "1.3b": (2048, 5504, 24)}
rules = [(1, 4), (8, 4), (6, 4), (4, 4), (3, 4), (2, 4), (6, 12), (4, 16), (2, 16)]
counters = torch.zeros(mk.counter_slots(dev), dtype=torch.int32, device=dev)
sms = len(counters)
for name in sys.argv[1:] or list(shapes):
    hidden, inter, layers = shapes[name]
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(t, hidden, device=dev, dtype=torch.bfloat16, generator=g)
    ws = torch.randn(layers, 2 * inter, hidden, device=dev, dtype=torch.bfloat16, generator=g) * hidden**-0.5
    flops = 2 * t * hidden * 2 * inter
    expect = ek.silu_mul(F.linear(x, ws[0])).float()
    tiles = -(-t // mk.DEFAULT.block_m) * -(-inter // mk.DEFAULT.block_n)
    for rep in range(2):
        base = time_graph(lambda: [ek.silu_mul(F.linear(x, ws[i])) for i in range(layers)], device=dev).median_ms / layers
        print(f"{name}: cublas gate_up + silu_mul {base * 1e3:.1f} us ({flops / base / 1e9:.0f} TFLOP/s effective)",
              flush=True)
        for max_split, min_steps in rules:
            cfg = replace(mk.DEFAULT, max_split=max_split, min_split_steps=min_steps)
            split = mk.tail_split(tiles, min(tiles, sms), -(-hidden // cfg.block_k), cfg)
            got = mk.swiglu(x, ws[0], cfg, counters=counters).float()
            err = ((got - expect).norm() / expect.norm()).item()
            ms = time_graph(lambda: [mk.swiglu(x, ws[i], cfg, counters=counters) for i in range(layers)],
                            device=dev).median_ms / layers
            print(f"{name}: swiglu max_split={max_split} min_steps={min_steps} (split {split}): {ms * 1e3:.1f} us "
                  f"({flops / ms / 1e9:.0f} TFLOP/s) {base / ms:.3f}x of cublas+silu, rel err {err:.1e}", flush=True)
    x = ws = None
    torch.cuda.empty_cache()
