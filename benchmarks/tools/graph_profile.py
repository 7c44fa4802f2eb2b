"""Where the engine's graph-replay time goes, kernel by kernel, in context: CUPTI records every
kernel inside the replayed CUDA graph; per kernel kind (by name) the time per forward, and the
idle time between consecutive kernels (launch gaps and ramp-downs). Each variant is also
checked against HF: the K and V of prompt 0 at the first, middle and last layer (relative
error; a layer computed wrong shows at the last one even where random-weight logits agree).
Usage (one GPU): python benchmarks/tools/graph_profile.py MODEL [VARIANT...], a variant
being `default` or PrefillEngine keyword settings such as `fused_qkv=0,fused_mlp=0`
(integers are booleans). benchmarks/README.md shows its output for the H100 engine."""
import json
import os
import sys
import tempfile
from collections import defaultdict

import numpy as np
import torch

from gpu_runner.bench import build_model, draw_prompts, load_lengths
from gpu_runner.engine import PrefillEngine
from gpu_runner.bench.timing import time_calls

dev = torch.device("cuda")
name = sys.argv[1]
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]
model = build_model(name, device="cuda", dtype="bfloat16")
prompts = draw_prompts(lengths, model.config.vocab_size, 0)
REPLAYS = 5
with torch.no_grad():
    ref = model(torch.tensor([prompts[0]], device=dev), use_cache=True).past_key_values
n_layers = model.config.num_hidden_layers
check_layers = (0, n_layers // 2, n_layers - 1)


def kind(kernel: str) -> str:
    k = kernel.lower()
    for key, label in (("nvjet", "cublas gemm"), ("gemm_kernel", "triton gemm"), ("attention", "attention"),
                       ("rmsnorm", "rmsnorm"), ("silu_mul", "silu_mul"),
                       ("flash", "attention")):
        if key in k:
            return label
    return "other: " + kernel[:40]


def options(spec: str) -> dict:
    if spec == "default":
        return {}
    return {k: bool(int(v)) for k, v in (kv.split("=") for kv in spec.split(","))}


for spec in sys.argv[2:] or ["default"]:
    eng = PrefillEngine(model, **options(spec))
    out = eng.prefill(prompts)
    errs = []
    for li in check_layers:
        k, v = out.prompt_kv(0)[li]
        rk, rv = ref.layers[li].keys[0], ref.layers[li].values[0]
        errs.append(max(((k.float() - rk.float()).norm() / rk.float().norm()).item(),
                        ((v.float() - rv.float()).norm() / rv.float().norm()).item()))
    graph, _ = next(iter(eng._graphs.values()))
    replay_ms = time_calls(graph.replay, device=dev, warmup=3, reps=20).median_ms
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(REPLAYS):
            graph.replay()
        torch.cuda.synchronize()
    path = os.path.join(tempfile.mkdtemp(), "trace.json")
    prof.export_chrome_trace(path)
    events = [e for e in json.load(open(path))["traceEvents"] if e.get("cat") == "kernel" and e.get("ph") == "X"]
    events.sort(key=lambda e: e["ts"])
    per = defaultdict(float)
    count = defaultdict(int)
    for e in events:
        per[kind(e["name"])] += e["dur"] / 1e3 / REPLAYS
        count[kind(e["name"])] += 1
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in zip(events, events[1:])]
    gaps = [g for g in gaps if g < 1000]  # drop the pauses between replays
    busy = sum(per.values())
    print(f"{name} {spec}: K/V rel err vs HF at layers {check_layers}: {' '.join(f'{e:.2e}' for e in errs)}")
    print(f"{name} {spec}: graph replay median {replay_ms:.2f} ms; kernels {busy:.2f} ms per forward, "
          f"{len(events) // REPLAYS} kernels, gaps {sum(gaps) / 1e3 / REPLAYS:.2f} ms "
          f"(median {np.median(gaps):.2f} us, p90 {np.percentile(gaps, 90):.2f} us)", flush=True)
    for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
        print(f"    {k:28s} {v:8.2f} ms  {count[k] // REPLAYS:4d} kernels  {v * 1e3 / max(1, count[k] // REPLAYS):8.1f} us each")
    eng = out = graph = None
    torch.cuda.empty_cache()
