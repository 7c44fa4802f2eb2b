"""A/B of the engine's MLP: cuBLAS gate/up + silu_mul against the fused SwiGLU matmul
(`engine_kernels.swiglu`, GROUP_M 12 and 16), alternated 6 times per model on the MMLU batch
of 64 (seed 0), 20 graph replays each. Usage: fused_mlp_ab.py MODEL...

Call 10 (H100): two-matmul kernel (since replaced by one [BM, 2 BN] matmul), GROUP_M 16:
1.3B 19.20 vs 19.93 ms, 7B 94.80 vs 94.74. Again with the one-matmul kernel, GROUP_M chosen
as round(sqrt(132)) = 11 (since fixed at 12): 1.3B 18.99 vs 19.74, 7B 91.94 vs 92.83 ms.
Logs: results/logs/h100_call10_probes.log."""
import statistics
import sys
from functools import partial

import numpy as np
import torch

import gpu_runner.engine as engine_mod
from gpu_runner.bench import build_model, draw_prompts, load_lengths, real_token_flops
from gpu_runner.engine import PrefillEngine
from gpu_runner.engine_kernels import swiglu
from gpu_runner.timing import matmul_peak_flops, time_calls

dev = torch.device("cuda")
peak = matmul_peak_flops(device=dev)
print(f"matmul peak {peak / 1e12:.1f} TFLOP/s (20 reps)", flush=True)
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]
for name in sys.argv[1:]:
    model = build_model(name, device="cuda", dtype="bfloat16")
    prompts = draw_prompts(lengths, model.config.vocab_size, 0)
    roof = real_token_flops(model.config, lengths) / peak * 1e3
    variants = {"cublas+silu": (False, 12), "fused gm12": (True, 12), "fused gm16": (True, 16)}
    engines, results = {}, {k: [] for k in variants}
    for key, (fused, gm) in variants.items():
        engine_mod.swiglu = partial(swiglu, group_m=gm)  # captured into this engine's graph
        engines[key] = PrefillEngine(model, fused_mlp=fused)
        engines[key].prefill(prompts)
    engine_mod.swiglu = swiglu
    for _ in range(6):
        for key, eng in engines.items():
            results[key].append(time_calls(partial(eng.prefill, prompts), device=dev, warmup=2, reps=20).median_ms)
    for key, ms in results.items():
        med = statistics.median(ms)
        print(f"{name} {key}: medians {' '.join(f'{m:.2f}' for m in ms)} -> median {med:.2f} ms, "
              f"roofline {roof / med:.3f}", flush=True)
    engines = model = None
    torch.cuda.empty_cache()
