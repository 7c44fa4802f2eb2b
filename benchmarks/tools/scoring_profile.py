"""Where the engine path's time goes on a whole MMLU-shaped scoring set: wall time of
`gpu_runner.score(path="engine")` against the roofline (as `scoring_bench.py` counts it),
then one call under torch.profiler: per kernel kind, device time over the whole set and
against the matmul roofline share; kernel-busy time against the wall (what is left is host
work, transfers and launch gaps).
Usage (one GPU): python benchmarks/tools/scoring_profile.py MODEL OUT.json [BATCH_TOKENS]
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoring_bench import make_requests, work_of

import gpu_runner
from gpu_runner.bench import build_model, load_lengths
from gpu_runner.bench.timing import kernel_times, matmul_peak_flops, wall_clock_s

if len(sys.argv) not in (3, 4) or (len(sys.argv) == 4 and not sys.argv[3].isdigit()):
    sys.exit("usage: python benchmarks/tools/scoring_profile.py MODEL OUT.json [BATCH_TOKENS]")
dev = torch.device("cuda")
name, out_path = sys.argv[1], sys.argv[2]
batch_tokens = int(sys.argv[3]) if len(sys.argv) > 3 else 32768
model = build_model(name, device="cuda", dtype="bfloat16")
requests = make_requests("mmlu", load_lengths("mmlu"), model.config.vocab_size)
work = work_of(model.config, requests)
peak = matmul_peak_flops(device=dev)
roofline_s = work["roofline_flops"] / peak


def call() -> None:
    gpu_runner.score(model, requests, path="engine", batch_tokens=batch_tokens)


call()  # compiles, captures
walls = [wall_clock_s(call, device=dev)[1] for _ in range(3)]
wall = sorted(walls)[1]


def kind(kernel: str) -> str:
    k = kernel.lower()
    for key, label in (("nvjet", "cublas gemm"), ("sm90_xmma", "cublas gemm"), ("cutlass", "cublas gemm"),
                       ("gemm", "triton matmul"), ("matmul", "triton matmul"), ("attention", "attention"),
                       ("rmsnorm", "rmsnorm"), ("memcpy", "copies"), ("memset", "copies")):
        if key in k:
            return label
    return "other"


times = kernel_times(call, device=dev, warmup=0, reps=1)
per_kind = defaultdict(float)
for kname, t in times.items():
    per_kind[kind(kname)] += t.ms
busy_ms = sum(t.ms for t in times.values())
report = {
    "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "model": name, "batch_tokens": batch_tokens,
    "fed_tokens": work["fed_tokens"], "peak_flops": peak, "roofline_s": roofline_s, "wall_s": wall,
    "walls_s": walls, "roofline_fraction": roofline_s / wall, "kernel_busy_s": busy_ms / 1e3,
    "by_kind_s": {k: v / 1e3 for k, v in sorted(per_kind.items(), key=lambda kv: -kv[1])},
    "top_kernels": [{"name": k[:120], "ms": round(t.ms, 2), "count": t.count} for k, t in list(times.items())[:25]],
}  # fmt: skip
print(json.dumps({k: v for k, v in report.items() if k != "top_kernels"}, indent=1))
for row in report["top_kernels"]:
    print(f"{row['ms']:10.2f} ms {row['count']:6.0f}  {row['name']}")
with open(out_path, "w") as f:
    json.dump(report, f, indent=1)
