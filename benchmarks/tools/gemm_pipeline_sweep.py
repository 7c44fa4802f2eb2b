"""The engine's Triton matmuls (`matmul._gemm_kernel`) at the 1.3B shape, one 32,768-token
scoring row: per GemmConfig variant (Triton's flattened and warp-specialized loops, stages)
the time and whether the outputs equal the plain loop's bit for bit; then the whole 1.3B
MMLU-shaped scoring set with the plain loops against the pipelined defaults (wall, and the
matmul kernels' time under torch.profiler).
Usage (one GPU): python benchmarks/tools/gemm_pipeline_sweep.py OUT.json"""
import json
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from scoring_bench import make_requests, work_of

import gpu_runner
from gpu_runner.bench import build_model, load_lengths
from gpu_runner.bench.timing import kernel_times, matmul_peak_flops, time_calls, wall_clock_s
from gpu_runner.engine import matmul as mm
from gpu_runner.score_engine import clear_score_cache

if len(sys.argv) != 2:
    sys.exit("usage: python benchmarks/tools/gemm_pipeline_sweep.py OUT.json")
dev = torch.device("cuda")
torch.manual_seed(0)
peak = matmul_peak_flops(device=dev)
PLAIN = {"swiglu": mm.GemmConfig(), "qkv": mm.GemmConfig(min_split=2, prefetch_rows=True)}
T, H, I, NH, D = 32768, 2048, 5504, 16, 128
x = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
w = {"swiglu": torch.randn(2 * I, H, device=dev, dtype=torch.bfloat16) * 0.02,
     "qkv": torch.randn(3 * NH * D, H, device=dev, dtype=torch.bfloat16) * 0.02}
cos, sin = (torch.randn(T, D // 2, device=dev, dtype=torch.bfloat16) for _ in range(2))
k_out, v_out = (torch.empty(T, NH, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
counters = torch.zeros(mm.counter_slots(dev), dtype=torch.int32, device=dev)
flops = {"swiglu": 2 * T * H * 2 * I, "qkv": 2 * T * H * 3 * NH * D}


def run(kind: str, cfg: mm.GemmConfig) -> tuple[torch.Tensor, ...]:
    if kind == "swiglu":
        return (mm.swiglu(x, w[kind], cfg, counters=counters),)
    return mm.qkv_rope(x, w[kind], cos, sin, k_out, v_out, NH, cfg, counters=counters), k_out, v_out


def ms_of(fn) -> float:
    return time_calls(fn, device=dev, warmup=3, reps=20).median_ms


rec = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "peak_tflops": peak / 1e12, "rows": []}
for kind in ("swiglu", "qkv"):
    ms = ms_of(lambda kind=kind: F.linear(x, w[kind]))
    rec[f"cublas_{kind}_ms"], rec[f"cublas_{kind}_of_peak"] = ms, flops[kind] / (ms * 1e-3) / peak
    ref = [t.clone() for t in run(kind, PLAIN[kind])]
    for variant in ({}, {"flatten": True}, {"warp_specialize": True}, {"flatten": True, "warp_specialize": True},
                    {"flatten": True, "num_stages": 4}, {"num_stages": 4}):
        cfg = mm.GemmConfig(**{**PLAIN[kind].__dict__, **variant})
        row = {"kind": kind, "variant": variant}
        try:
            mm._PLAIN_ONLY.clear()  # a variant that does not compile is an error here, not a fallback
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)
                out = run(kind, cfg)
            ms = ms_of(lambda kind=kind, cfg=cfg: run(kind, cfg))
            row |= {"ms": ms, "of_peak": flops[kind] / (ms * 1e-3) / peak,
                    "bit_equal": all(torch.equal(a, b) for a, b in zip(out, ref))}
        except Exception as exc:  # noqa: BLE001 - record the compiler's refusal
            row["error"] = (str(exc).strip().splitlines() or ["?"])[-1][:300]
        rec["rows"].append(row)
        print(row, flush=True)

model = build_model("sheared-llama-1.3b", device="cuda", dtype="bfloat16")
requests = make_requests("mmlu", load_lengths("mmlu"), model.config.vocab_size)
rec["roofline_s"] = work_of(model.config, requests)["roofline_flops"] / peak
swiglu, qkv_rope = mm.swiglu, mm.qkv_rope


def use(plain: bool) -> None:
    """The engine's matmuls with the plain loops (plain) or their defaults; graphs recaptured."""
    mm.swiglu = (lambda x, w, cfg=None, **kw: swiglu(x, w, PLAIN["swiglu"], **kw)) if plain else swiglu
    mm.qkv_rope = (lambda *a, cfg=None, **kw: qkv_rope(*a, PLAIN["qkv"], **kw)) if plain else qkv_rope
    clear_score_cache(model)
    call()  # compiles, captures


def call() -> None:
    gpu_runner.score(model, requests, path="engine", batch_tokens=32768)


rec["whole_set"] = {}
for rep in range(2):
    for name, plain in (("plain", True), ("default", False)):
        use(plain)
        entry = rec["whole_set"].setdefault(name, {"walls_s": []})
        entry["walls_s"].append(wall_clock_s(call, device=dev)[1])
        if rep == 0:
            times = kernel_times(call, device=dev, warmup=0, reps=1)
            entry["gemm_kernel_s"] = sum(t.ms for k, t in times.items() if "_gemm_kernel" in k) / 1e3
            entry["busy_s"] = sum(t.ms for t in times.values()) / 1e3
        print(name, entry, flush=True)
with open(sys.argv[1], "w") as f:
    json.dump(rec, f, indent=1)
