"""End-to-end generation benchmark (issue 14): HF generate padded, HF continuous batching, ours.

Run from the repository root on one GPU (bf16, random weights, Llama-2 7B shape), each
command within ~8 minutes:
  PYTHONPATH=. python benchmarks/generate_bench.py --workloads mmlu-32,mmlu-256 \\
      --out benchmarks/results/generate_h200_mmlu.json
  PYTHONPATH=. python benchmarks/generate_bench.py --workloads azure --methods ours,hf-cb \\
      --time-limit-s 180 --out benchmarks/results/generate_h200_azure.json
CPU plumbing check (tiny model, seconds):
  python benchmarks/generate_bench.py --smoke --out /tmp/generate_smoke.json

Workloads, methods and the recorded numbers: `gpu_runner/bench_generate.py`. The decode-step
probe and the first-token agreement run after the "ours" method (so `--methods` must
include it). Methods are time-limited (`--time-limit-s`, checked between generate calls for
hf-padded and while collecting hf-cb's results on the trace; a cut run records how many
requests completed and its tokens/s over those). Exit status 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpu_runner.bench.generate import GENERATE_METHODS, WORKLOADS, GenerateBenchConfig, run_generate_benchmark  # noqa: E402


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-2-7b", help="a model shape of gpu_runner.bench.MODEL_SHAPES")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma list of {', '.join(WORKLOADS)}")
    p.add_argument("--methods", default=",".join(GENERATE_METHODS), help=f"comma list of {', '.join(GENERATE_METHODS)}")
    p.add_argument("--batch", type=int, default=64, help="MMLU prompts (and the decode-step probe's batch)")
    p.add_argument("--azure-requests", type=int, default=2048, help="first N requests of the azure_conv trace")
    p.add_argument("--max-new-cap", type=int, default=1000, help="cap on the trace's output lengths")
    p.add_argument("--hf-batch", type=int, default=64, help="prompts per HF generate call (hf-padded)")
    p.add_argument("--time-limit-s", type=float, default=120.0, help="per workload and method")
    p.add_argument("--policy", default="refill-when-free",
                   help="ours: refill policy, NAME or NAME:key=int,... (e.g. batch-refill:min_free=16)")
    p.add_argument("--token-budget", type=int, default=8192, help="ours: tokens per packed refill prefill")
    p.add_argument("--token-bucket", type=int, default=128, help="ours: the prefill engine's token bucket")
    p.add_argument("--max-batch", type=int, default=256, help="ours: most sequences decoding at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default="", help="the result JSON (rewritten after every record)")
    p.add_argument("--smoke", action="store_true", help="tiny model on CPU, float32, short outputs: checks the plumbing")
    args = p.parse_args(argv)
    try:
        name, _, params = args.policy.partition(":")
        try:
            policy_params = tuple((k.strip(), int(v)) for k, v in (kv.split("=") for kv in _csv(params)))
        except ValueError:
            raise ValueError(f"--policy takes NAME or NAME:key=int,..., got {args.policy!r}") from None
        opts = dict(policy=name, policy_params=policy_params, token_budget=args.token_budget,
                    token_bucket=args.token_bucket, max_batch=args.max_batch, model=args.model,
                    workloads=_csv(args.workloads), methods=_csv(args.methods), batch=args.batch,
                    azure_requests=args.azure_requests, max_new_cap=args.max_new_cap, hf_batch=args.hf_batch,
                    time_limit_s=args.time_limit_s, seed=args.seed, device=args.device, dtype=args.dtype, out=args.out)
        if args.smoke:
            opts.update(model="tiny", device="cpu", dtype="float32", batch=min(args.batch, 8), token_bucket=16,
                        azure_requests=min(args.azure_requests, 12), hf_batch=min(args.hf_batch, 4),
                        time_limit_s=min(args.time_limit_s, 60.0), scale_new_tokens=1 / 32)
        cfg = GenerateBenchConfig(**opts)
        run_generate_benchmark(cfg)
    except ValueError as exc:
        print(f"generate_bench: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
