"""`prepack-bench`: the prefill benchmark, the end-to-end generation benchmark and the
cost-model sweep from the command line.

This module only parses arguments and calls `scenarios.run_benchmark` (scenarios a, b),
`generate.run_generate_benchmark` (scenario e2e) or `sweep.run_sweep` by keyword. Bad input
(an unknown name, a value out of range, a device other than cpu / cuda, an `--out` that cannot
be written) prints one line and exits with status 2, before any model is built; `--out` is
written atomically, so no partial file is left.
"""

from __future__ import annotations

import argparse
import sys

from simulator.names import BENCH_METHODS, BEST, PADDED, PAPER, SORTED

GENERATE_METHODS = ("ours", "hf-padded", "hf-cb")  # as gpu_runner.bench.generate (which imports torch)
WORKLOADS = ("mmlu-32", "mmlu-256", "azure")

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
scenario e2e (runs alone; gpu_runner/bench/generate.py): batch generation end to end,
workloads mmlu-32, mmlu-256 (--batch MMLU prompts x 32 / 256 new tokens) and azure (the
azure_conv trace with its output lengths), methods ours (BatchGenerator), hf-padded (HF
generate, left-padded), hf-cb (HF continuous batching); plus the batch-64 decode step vs
reading weights and KV once, and first-token agreement; model default llama-2-7b.
examples:
  prepack-bench --smoke                               # tiny random model on CPU, seconds
  prepack-bench --model llama-2-7b --out benchmarks/results/prefill_h100.json
  prepack-bench --sweep --model sheared-llama-1.3b --out benchmarks/results/prefill_sweep_h100.csv
  prepack-bench --scenarios e2e --workloads mmlu-32,mmlu-256 --out benchmarks/results/generate_h200_mmlu.json
  prepack-bench --scenarios e2e --workloads azure --methods ours,hf-cb --time-limit-s 180 --out ...
  prepack-bench --scenarios e2e --smoke               # tiny model on CPU, short outputs
"""


def csv_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in csv_list(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line (no usage block), status 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="prepack-bench", description=__doc__.splitlines()[0], epilog=_EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=csv_list, default=None,
                   help="comma-separated shapes: llama-2-7b, sheared-llama-1.3b, qwen3-8b, gemma-7b, phi-3-mini, tiny "
                        "(default sheared-llama-1.3b; e2e: one shape, default llama-2-7b)")
    p.add_argument("--dataset", default="mmlu", help="length list name: mmlu, alpaca, samsum, wikitext256 (default mmlu)")
    p.add_argument("--batch", type=int, default=64, help="prompts per batch (default 64)")
    p.add_argument("--methods", type=csv_list, default=None,
                   help=f"scenario a methods (default {','.join(BENCH_METHODS)}); e2e: {','.join(GENERATE_METHODS)} (default all)")
    p.add_argument("--stream-methods", type=csv_list, default=STREAM_METHODS, help=f"scenario b methods (default {','.join(STREAM_METHODS)})")
    p.add_argument("--modes", type=csv_list, default=("prefill", "ttft"), help="prefill, ttft (default both)")
    p.add_argument("--scenarios", type=csv_list, default=("a", "b"),
                   help="a (one batch), b (dataset stream), e2e (generation, alone); default a,b")
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
    e = p.add_argument_group("scenario e2e (end-to-end generation)")
    e.add_argument("--workloads", type=csv_list, default=WORKLOADS, help=f"comma list of {', '.join(WORKLOADS)} (default all)")
    e.add_argument("--azure-requests", type=int, default=2048, help="first N requests of the azure_conv trace (default 2048)")
    e.add_argument("--max-new-cap", type=int, default=1000, help="cap on the trace's output lengths (default 1000)")
    e.add_argument("--hf-batch", type=int, default=64, help="prompts per HF generate call, hf-padded (default 64)")
    e.add_argument("--time-limit-s", type=float, default=120.0, help="per workload and method (default 120)")
    e.add_argument("--policy", default="refill-when-free",
                   help="ours: refill policy, NAME or NAME:key=int,... (e.g. batch-refill:min_free=16)")
    e.add_argument("--token-budget", type=int, default=8192, help="ours: tokens per packed refill prefill (default 8192)")
    e.add_argument("--agreement-prompts", type=int, default=512,
                   help="first-token agreement: MMLU prompts compared with HF alone and float32 (default 512)")
    e.add_argument("--max-batch", type=int, default=256, help="ours: most sequences decoding at once (default 256)")
    s = p.add_argument_group("sweep (--sweep): measured ms per (model, dataset, batch, packer, backend)")
    s.add_argument("--sweep", action="store_true", help="run the cost-model sweep instead of the benchmark")
    s.add_argument("--datasets", type=csv_list, default=("mmlu", "wikitext256", "alpaca", "samsum"), help="sweep datasets (default mmlu,wikitext256,alpaca,samsum)")
    s.add_argument("--batches", type=int_list, default=(16, 64, 256), help="sweep batch sizes (default 16,64,256)")
    s.add_argument("--combos", type=csv_list, default=("pad/padded", "ffd/dense", "ffd/varlen", "pad/varlen"),
                   help="packer/backend pairs; backends padded, dense, flex, varlen, graph (packer flat)")
    return p


def _run_e2e(args: argparse.Namespace) -> int:
    """Scenario e2e: `generate.run_generate_benchmark` with the parsed flags."""
    from gpu_runner.bench.generate import GenerateBenchConfig, run_generate_benchmark

    if len(args.model or ("llama-2-7b",)) != 1:
        raise ValueError(f"scenario e2e takes one --model, got {','.join(args.model)}")
    name, _, params = args.policy.partition(":")
    try:
        policy_params = tuple((k.strip(), int(v)) for k, v in (kv.split("=") for kv in csv_list(params)))
    except ValueError:
        raise ValueError(f"--policy takes NAME or NAME:key=int,..., got {args.policy!r}") from None
    opts = dict(model=(args.model or ("llama-2-7b",))[0], workloads=args.workloads,
                methods=args.methods or GENERATE_METHODS, batch=args.batch, azure_requests=args.azure_requests,
                max_new_cap=args.max_new_cap, hf_batch=args.hf_batch, time_limit_s=args.time_limit_s, seed=args.seed,
                device=args.device, dtype=args.dtype, out=args.out, policy=name, policy_params=policy_params,
                token_budget=args.token_budget, token_bucket=args.token_bucket, max_batch=args.max_batch,
                agreement_prompts=args.agreement_prompts)
    if args.smoke:
        opts.update(model="tiny", device="cpu", dtype="float32", batch=min(args.batch, 8), token_bucket=16,
                    azure_requests=min(args.azure_requests, 12), hf_batch=min(args.hf_batch, 4),
                    agreement_prompts=min(args.agreement_prompts, 8),
                    time_limit_s=min(args.time_limit_s, 60.0), scale_new_tokens=1 / 32)
    doc = run_generate_benchmark(GenerateBenchConfig(**opts))
    print(f"{len(doc['records'])} records" + (f" -> {args.out}" if args.out else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a malformed flag (2, one line already printed)
        return int(exc.code or 0)
    try:
        if "e2e" in args.scenarios:
            if len(args.scenarios) > 1 or args.sweep:
                raise ValueError("scenario e2e runs alone (not with a, b or --sweep)")
            return _run_e2e(args)
        args.model = args.model or ("sheared-llama-1.3b",)
        args.methods = args.methods or BENCH_METHODS
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
    except OSError as exc:  # e.g. --out on a full disk: one line, and no partial file (atomic writes)
        print(f"prepack-bench: error: {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
