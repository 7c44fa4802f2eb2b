"""A/B of engine variants on the MMLU batch of 64 (seed 0): cuBLAS gate/up + silu_mul, and the
fused SwiGLU matmul without and with the K split of its last wave (the default `GemmConfig`).
Each variant is an engine whose graph was
captured with that variant's kernels; variants are alternated 6 times, 20 graph replays each;
logits are compared with the first variant's. Usage: engine_ab.py MODEL...

History: fused_mlp_ab.py (call 10) measured cuBLAS + silu_mul against the first fused SwiGLU
kernel: 1.3B 19.74 vs 18.99 ms, 7B 92.83 vs 91.94 ms. Call 14 (this script, then with two more
variants): split rule max_split 6 / min_split_steps 12 (7B split 5, 1.3B split 2) against no
split: 7B 94.87 vs 95.20 ms, 1.3B 19.77 vs 19.67; the attention grid with heads fastest
(a 1-D grid, program m * Hq + h): 7B 94.68 ms, 1.3B 19.81 (not kept: within noise).
Logs: results/logs/h100_call14_split_rules.log."""
import statistics
import sys
from dataclasses import replace
from functools import partial
from types import SimpleNamespace

import numpy as np
import torch

import gpu_runner.engine as engine_mod
from gpu_runner import matmul_kernels as mk
from gpu_runner.bench import build_model, draw_prompts, load_lengths, real_token_flops
from gpu_runner.engine import PrefillEngine
from gpu_runner.timing import matmul_peak_flops, time_calls

dev = torch.device("cuda")
peak = matmul_peak_flops(device=dev)
print(f"matmul peak {peak / 1e12:.1f} TFLOP/s (20 reps)", flush=True)
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]


def gemm(**changes):
    cfg = replace(mk.DEFAULT, **changes)
    return SimpleNamespace(swiglu=partial(mk.swiglu, cfg=cfg), counter_slots=mk.counter_slots)


variants = {  # name: (fused_mlp, matmul namespace); at most ~5 engines for 7B: each holds its own fused weights
    "cublas+silu": (False, mk),
    "fused nosplit": (True, gemm(max_split=1)),
    "fused": (True, mk),
}
for name in sys.argv[1:]:
    model = build_model(name, device="cuda", dtype="bfloat16")
    prompts = draw_prompts(lengths, model.config.vocab_size, 0)
    roof = real_token_flops(model.config, lengths) / peak * 1e3
    engines, results, ref = {}, {k: [] for k in variants}, None
    for key, (fused, namespace) in variants.items():
        engine_mod.mm = namespace  # captured into this engine's graph by its first prefill
        engines[key] = PrefillEngine(model, fused_mlp=fused)
        logits = engines[key].prefill(prompts).logits.float()
        ref = logits.clone() if ref is None else ref
        err = ((logits - ref).norm() / ref.norm()).item()
        same = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"{name} {key}: logits rel err vs {next(iter(variants))} {err:.2e}, same argmax {same:.3f}", flush=True)
    engine_mod.mm = mk
    for _ in range(6):
        for key, eng in engines.items():
            results[key].append(time_calls(partial(eng.prefill, prompts), device=dev, warmup=2, reps=20).median_ms)
    for key, ms in results.items():
        med = statistics.median(ms)
        print(f"{name} {key}: medians {' '.join(f'{m:.2f}' for m in ms)} -> median {med:.2f} ms, "
              f"roofline {roof / med:.3f}", flush=True)
    engines = model = None
    torch.cuda.empty_cache()
