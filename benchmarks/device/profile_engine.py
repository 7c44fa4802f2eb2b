"""Where the engine's time goes on the GPU: per-kernel-category totals of one forward, and
graph-replay medians with and without query chunks. Usage: profile_engine.py MODEL [MODEL...]"""
import sys
from collections import defaultdict

import numpy as np
import torch

from gpu_runner.bench import build_model, draw_prompts, load_lengths, real_token_flops
from gpu_runner.engine import PrefillEngine
from gpu_runner.timing import matmul_peak_flops, time_calls

dev = torch.device("cuda")
peak = matmul_peak_flops(device=dev)
lengths_all = load_lengths("mmlu")
lengths = lengths_all[np.random.default_rng(0).choice(len(lengths_all), 64, replace=False)]
for name in sys.argv[1:]:
    model = build_model(name, device="cuda", dtype="bfloat16")
    prompts = draw_prompts(lengths, model.config.vocab_size, 0)
    roof_ms = real_token_flops(model.config, lengths) / peak * 1e3
    h, i_ = model.config.hidden_size, model.config.intermediate_size
    saved = torch.backends.cuda.preferred_blas_library()
    for label, lib in (("default", None), ("cublaslt", "cublaslt"), ("cublas", "cublas")):
        if lib:
            torch.backends.cuda.preferred_blas_library(lib)
        rates = []
        for n_out, n_in in ((3 * h, h), (h, h), (2 * i_, h), (h, i_)):
            x = torch.randn(4352, n_in, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n_out, n_in, device=dev, dtype=torch.bfloat16)
            tm = time_calls(lambda: torch.nn.functional.linear(x, w), device=dev, warmup=3, reps=20)
            rates.append(f"{n_out}x{n_in}: {2 * 4352 * n_out * n_in / tm.median_ms / 1e9:.0f}")
        print(f"{name} gemm TFLOP/s (blas {torch.backends.cuda.preferred_blas_library()}) at T=4352 ({label}):", ", ".join(rates))
    torch.backends.cuda.preferred_blas_library(saved)
    for q_chunk in (128, 256, 0):
        eng = PrefillEngine(model, q_chunk=q_chunk)
        t = time_calls(lambda: eng.prefill(prompts), device=dev, warmup=3, reps=20)
        print(f"{name} q_chunk={q_chunk}: graph median {t.median_ms:.2f} ms (min {t.min_ms:.2f}) roofline {roof_ms:.2f} ms -> {roof_ms / t.median_ms:.3f}")
        del eng
    eng = PrefillEngine(model, cuda_graphs=False)
    for _ in range(3):
        eng.prefill(prompts)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        eng.prefill(prompts)
        torch.cuda.synchronize()
    cats = defaultdict(float)
    for ev in prof.key_averages():
        n = ev.key.lower()
        cat = ("attention" if "flash" in n else "gemm" if any(k in n for k in ("gemm", "xmma", "cutlass", "nvjet", "cublas"))
               else "triton" if n.startswith("_") and "kernel" in n else "other")
        cats[cat] += ev.device_time_total / 1e3 if hasattr(ev, "device_time_total") else ev.cuda_time_total / 1e3
    print(name, "eager kernel ms by category:", {k: round(v, 2) for k, v in cats.items()}, "total", round(sum(cats.values()), 2))
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
    del eng, model
    torch.cuda.empty_cache()
