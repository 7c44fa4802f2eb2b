"""`prepack-bench`: the prefill benchmark and the cost-model sweep from the command line.

This module only parses arguments and calls `scenarios.run_benchmark` or `sweep.run_sweep`
by keyword. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

from simulator.names import BENCH_METHODS, BEST, PADDED, PAPER, SORTED

STREAM_METHODS = (PADDED, SORTED, PAPER, BEST)  # scenario b's default: every method but hf-cb

__all__ = ["main"]

_EPILOG = """\
methods: padded (HF default, left-padded batch), sorted (length-sorted micro-batches),
paper (FFD at capacity = longest, dense 4D mask, sdpa), best (PrefillEngine: one flat row,
token buckets, CUDA graphs, fused matmuls, Triton kernels incl. packed-tile attention),
hf-cb (HF generate_batch, 1 new token; TTFT only).
records: gpu, model, dataset, batch, mode, method, ms, peak_extra_bytes, roofline_fraction,
speedup_vs_padded, speedup_vs_paper, tokens_per_s, ...; merge runs with
benchmarks/merge_results.py.
scenario a: one batch repeated (median ms, CUDA events); b: the whole dataset shuffled in
batches, end-to-end wall time incl. packing and graph capture.
examples:
  prepack-bench --smoke                               # tiny random model on CPU, seconds
  prepack-bench --model llama-2-7b --out benchmarks/results/prefill_h100.json
  prepack-bench --sweep --model sheared-llama-1.3b --out benchmarks/results/prefill_sweep_h100.csv
"""


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prepack-bench", description=__doc__.splitlines()[0], epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=csv_list, default=("sheared-llama-1.3b",),
                   help="comma-separated shapes: llama-2-7b, sheared-llama-1.3b, qwen3-8b, gemma-7b, phi-3-mini, tiny "
                        "(default sheared-llama-1.3b)")
    p.add_argument("--dataset", default="mmlu", help="length list name: mmlu, alpaca, samsum, wikitext256 (default mmlu)")
    p.add_argument("--batch", type=int, default=64, help="prompts per batch (default 64)")
    p.add_argument("--methods", type=csv_list, default=BENCH_METHODS, help=f"scenario a methods (default {','.join(BENCH_METHODS)})")
    p.add_argument("--stream-methods", type=csv_list, default=STREAM_METHODS, help=f"scenario b methods (default {','.join(STREAM_METHODS)})")
    p.add_argument("--modes", type=csv_list, default=("prefill", "ttft"), help="prefill, ttft (default both)")
    p.add_argument("--scenarios", type=csv_list, default=("a", "b"), help="a (one batch), b (dataset stream); default both")
    p.add_argument("--stream-batches", type=int, default=0, help="limit scenario b to this many batches (0 = all)")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before timing (default 2)")
    p.add_argument("--reps", type=int, default=10, help="timed calls, median reported (default 10)")
    p.add_argument("--seed", type=int, default=0, help="prompt draw and shuffle seed (default 0)")
    p.add_argument("--sorted-chunk", type=int, default=16, help="micro-batch size of the sorted method (default 16)")
    p.add_argument("--token-bucket", type=int, default=128, help="best: row length rounded up to this (default 128)")
    p.add_argument("--q-chunk", type=int, default=128, help="best with --attention flash: query chunk, 0 = off (default 128)")
    p.add_argument("--attention", default="auto", help="best: packed (Triton), flash (FA2 varlen), torch, auto (default)")
    p.add_argument("--device", default="cuda", help="cuda or cpu (default cuda)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16, float16, float32 (default bfloat16)")
    p.add_argument("--out", default="", help="JSON records (benchmark) or CSV rows (--sweep), rewritten as results come")
    p.add_argument("--smoke", action="store_true", help="tiny random model on CPU, float32, 2 batches: checks the plumbing")
    s = p.add_argument_group("sweep (--sweep): measured ms per (model, dataset, batch, packer, backend)")
    s.add_argument("--sweep", action="store_true", help="run the cost-model sweep instead of the benchmark")
    s.add_argument("--datasets", type=csv_list, default=("mmlu", "wikitext256", "alpaca", "samsum"), help="sweep datasets (default mmlu,wikitext256,alpaca,samsum)")
    s.add_argument("--batches", type=int_list, default=(16, 64, 256), help="sweep batch sizes (default 16,64,256)")
    s.add_argument("--combos", type=csv_list, default=("pad/padded", "ffd/dense", "ffd/varlen", "pad/varlen"),
                   help="packer/backend pairs; backends padded, dense, flex, varlen, graph (packer flat)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.smoke:
            args.model, args.device, args.dtype = ("tiny",), "cpu", "float32"
            args.batch, args.reps, args.warmup = min(args.batch, 8), 2, 1
            args.stream_batches = args.stream_batches or 2
            args.methods = tuple(m for m in args.methods if m != "hf-cb")
            args.batches = tuple(min(b, 8) for b in args.batches)[:1]
            args.datasets = args.datasets[:1]
        if args.sweep:
            from gpu_runner.bench.sweep import default_grid, run_sweep

            combos = []
            for c in args.combos:
                packer, _, backend = c.partition("/")
                if not backend:
                    raise ValueError(f"combo {c!r} must be packer/backend, e.g. ffd/dense")
                combos.append((packer, backend))
            points = default_grid(args.model, args.datasets, args.batches, combos)
            rows = run_sweep(points, out=args.out, device=args.device, dtype=args.dtype,
                             warmup=1 if args.smoke else max(args.warmup - 1, 1), reps=min(args.reps, 3), seed=args.seed)
            print(f"{len(rows)} sweep points" + (f" -> {args.out}" if args.out else ""))
            return 0
        from gpu_runner.bench.scenarios import BenchConfig, run_benchmark

        cfg = BenchConfig(
            models=args.model, dataset=args.dataset, batch=args.batch, methods=args.methods, modes=args.modes,
            scenarios=args.scenarios, stream_methods=args.stream_methods, stream_batches=args.stream_batches,
            warmup=args.warmup, reps=args.reps, seed=args.seed, sorted_chunk=args.sorted_chunk,
            token_bucket=args.token_bucket, q_chunk=args.q_chunk, attention=args.attention, device=args.device, dtype=args.dtype, out=args.out,
        )
        records = run_benchmark(cfg)
        print(f"{len(records)} records" + (f" -> {args.out}" if args.out else ""))
        return 0
    except ValueError as exc:
        print(f"prepack-bench: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
