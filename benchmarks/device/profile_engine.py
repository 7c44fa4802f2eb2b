"""Where the engine's time goes on the GPU: graph-replay medians per attention kernel, and
per-kernel-category totals of one eager forward. Usage: profile_engine.py MODEL [MODEL...]"""
import sys
from collections import defaultdict
from functools import partial

import numpy as np
import torch

from gpu_runner.bench import build_model, draw_prompts, load_lengths, real_token_flops
from gpu_runner.engine import PrefillEngine
from gpu_runner.timing import kernel_times, matmul_peak_flops, time_calls

dev = torch.device("cuda")
peak = matmul_peak_flops(device=dev)
sustained = matmul_peak_flops(device=dev, reps=400)  # ~0.6 s of back-to-back 8192^3 products
print(f"matmul peak {peak / 1e12:.1f} TFLOP/s (20 reps), sustained {sustained / 1e12:.1f} TFLOP/s (400 reps)")
lengths_all = load_lengths("mmlu")
lengths = lengths_all[np.random.default_rng(0).choice(len(lengths_all), 64, replace=False)]
for name in sys.argv[1:]:
    model = build_model(name, device="cuda", dtype="bfloat16")
    prompts = draw_prompts(lengths, model.config.vocab_size, 0)
    roof_ms = real_token_flops(model.config, lengths) / peak * 1e3
    for attention in ("packed", "flash"):
        try:
            eng = PrefillEngine(model, attention=attention)
            t = time_calls(partial(eng.prefill, prompts), device=dev, warmup=3, reps=20)
            print(f"{name} attention={attention}: graph median {t.median_ms:.2f} ms "
                  f"(min {t.min_ms:.2f}) roofline {roof_ms:.2f} ms -> {roof_ms / t.median_ms:.3f}")
        except Exception as exc:  # noqa: BLE001
            print(f"{name} attention={attention}: FAILED {type(exc).__name__}: {exc}")
        eng = None
    eng = PrefillEngine(model, cuda_graphs=False)
    kernels = kernel_times(partial(eng.prefill, prompts), device=dev, warmup=3, reps=1)
    cats = defaultdict(float)
    for key, kt in kernels.items():
        n = key.lower()
        cat = ("attention" if ("flash" in n or "attention" in n) else
               "gemm" if any(k in n for k in ("gemm", "xmma", "cutlass", "nvjet", "cublas")) else
               "triton" if n.startswith("_") and "kernel" in n else "other")
        cats[cat] += kt.ms
    print(name, eng.attention, "eager kernel ms by category:", {k: round(v, 2) for k, v in cats.items()},
          "total", round(sum(cats.values()), 2))
    for key, kt in list(kernels.items())[:10]:
        print(f"  {kt.ms:8.2f} ms  x{int(kt.count):4d}  {key[:60]}")
    eng = model = None
    torch.cuda.empty_cache()
