"""Where a decode step's time goes, and the split-KV attention kernel against the first one.

The batch-64 decode state of the generation benchmark's probe (`gpu_runner.bench.generate.
decode_step_probe`: 64 MMLU prompts of the mmlu-256 workload, each sequence half-way through
its 256 new tokens) under each attention variant: the head kernel (program per row and query
head), the split kernel at the rule's S (`decode_kernels.decode_splits`) and at fixed S. Per
variant: step and graph-replay ms against reading the weights and the live KV once at the
measured copy bandwidth, the attention kernels' ms against reading the KV once, and (for the
head kernel and the rule's S) the replay's per-kernel breakdown (`timing.kernel_times`).
Usage (one GPU, ~2 minutes):
  python benchmarks/tools/decode_profile.py --model llama-2-7b --out benchmarks/results/decode_profile_h200.json
CPU plumbing check: --model tiny --device cpu --dtype float32 (no graphs: no kernel times).
"""
import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch

from gpu_runner.bench import build_model
from gpu_runner.bench.generate import (
    GenerateBenchConfig,
    copy_bandwidth_bytes_per_s,
    decode_step_probe,
    make_workload,
)
from gpu_runner.bench.timing import release_memory


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-2-7b", help="a model shape of gpu_runner.bench.MODEL_SHAPES")
    p.add_argument("--splits", default="1,2,4,8", help="fixed split counts to time besides the rule's (comma list)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default="", help="the result JSON")
    args = p.parse_args(argv)
    try:
        splits = [int(x) for x in args.splits.split(",") if x.strip()]
        if min(splits, default=1) < 1:
            raise ValueError
    except ValueError:
        print(f"decode_profile: error: --splits takes positive integers, got {args.splits!r}", file=sys.stderr)
        return 2
    try:
        cfg = GenerateBenchConfig(model=args.model, workloads=("mmlu-256",), device=args.device, dtype=args.dtype)
    except ValueError as exc:
        print(f"decode_profile: error: {exc}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    model = build_model(cfg.model, device=args.device, dtype=args.dtype)
    w = make_workload("mmlu-256", cfg, model.config.vocab_size, int(model.config.max_position_embeddings))
    copy_bw = copy_bandwidth_bytes_per_s(device, 2**31 if device.type == "cuda" else 2**24)
    doc = {"model": args.model, "dtype": args.dtype, "copy_bandwidth_bytes_per_s": copy_bw, "variants": []}
    print(f"{args.model} batch {len(w.prompts)}: copy {copy_bw / 1e12:.2f} TB/s", flush=True)
    variants = [("head", None, True), ("split", None, True)] + [("split", s, False) for s in splits]
    for kernel, s, with_kernels in variants:
        r = decode_step_probe(model, w, device, copy_bw, attention_kernel=kernel, attention_splits=s,
                               kernels=with_kernels)
        release_memory(device)
        doc["variants"].append(r)
        name = f"{kernel}" + (f" S={s}" if s else " S=rule" if kernel == "split" else "")
        replay = f"replay {r['replay_ms']:.3f} ms ({r['replay_over_read']:.2f}x)" if r["replay_ms"] else "no graph"
        attn = f"; attention {r['attention_ms']:.3f} ms vs KV read {r['kv_read_once_ms']:.3f} ms" if "attention_ms" in r else ""
        print(f"{name:12s} step {r['step_ms']:.3f} ms vs read-once {r['read_once_ms']:.3f} ms "
              f"({r['step_over_read']:.2f}x); {replay}{attn}", flush=True)
        for k, t in list(r.get("kernels", {}).items())[:12]:
            print(f"    {k[:60]:60s} {t['ms']:8.3f} ms {t['count']:6.0f} launches", flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
