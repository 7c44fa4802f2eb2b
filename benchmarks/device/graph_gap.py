"""Where does the engine's graph-mode time exceed its eager kernel sum? For one shape: the
timed `prefill` call, the bare graph replay, and the per-kernel totals of graph replays
(CUPTI sees kernels inside graphs) next to eager ones. Usage: graph_gap.py MODEL"""
import sys
from collections import defaultdict
from functools import partial

import numpy as np
import torch

from gpu_runner.bench import build_model, draw_prompts, load_lengths
from gpu_runner.engine import PrefillEngine
from gpu_runner.timing import kernel_times, time_calls

dev = torch.device("cuda")
name = sys.argv[1]
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]
model = build_model(name, device="cuda", dtype="bfloat16")
prompts = draw_prompts(lengths, model.config.vocab_size, 0)


def kernel_totals(fn, n=5):
    cats = defaultdict(float)
    for key, kt in kernel_times(fn, device=dev, warmup=2, reps=n).items():
        k = key.lower()
        cat = "gemm" if "nvjet" in k or "gemm" in k else "triton" if k.startswith("_") else "other"
        cats[cat] += kt.ms
    return {k: round(v, 3) for k, v in cats.items()}, round(sum(cats.values()), 3)


for graphs in (True, False):
    eng = PrefillEngine(model, cuda_graphs=graphs)
    t = time_calls(partial(eng.prefill, prompts), device=dev, warmup=3, reps=30)
    print(f"{name} graphs={graphs}: prefill median {t.median_ms:.3f} ms min {t.min_ms:.3f}")
    if graphs:
        graph, _ = next(iter(eng._graphs.values()))
        r = time_calls(graph.replay, device=dev, warmup=3, reps=30)
        print(f"{name}: bare graph.replay median {r.median_ms:.3f} ms min {r.min_ms:.3f}")
    print(f"{name} graphs={graphs}: kernel ms per call by category", *kernel_totals(partial(eng.prefill, prompts)))
    eng = None
    torch.cuda.empty_cache()
