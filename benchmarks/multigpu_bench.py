"""Multi-GPU prepacked prefill benchmark: padded-rr vs packed-rr vs cost-balanced on 1 and N GPUs.

Run under torchrun on one host (NCCL on GPUs, gloo on CPU); without torchrun it runs as a
world of one. This script only parses arguments and calls
`gpu_runner.bench.multigpu.run_multigpu_benchmark` by keyword; bad input prints one line
and exits with status 2.

  torchrun --nproc-per-node 2 benchmarks/multigpu_bench.py \
      --out benchmarks/results/multigpu_{gpu}.json            # 7B, MMLU, b256 + b1024
  torchrun --nproc-per-node 2 benchmarks/multigpu_bench.py --smoke   # CPU, gloo, tiny model
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, when not installed

from gpu_runner.bench.cli import csv_list, int_list  # noqa: E402  (after the path insert)


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="multigpu_bench", description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="llama-2-7b", help="shape: llama-2-7b, sheared-llama-1.3b, tiny (default llama-2-7b)"
    )
    p.add_argument("--dataset", default="mmlu", help="length list name (default mmlu)")
    p.add_argument("--batches", type=int_list, default=(256, 1024), help="prompts per batch (default 256,1024)")
    p.add_argument(
        "--strategies",
        type=csv_list,
        default=("packed-rr", "cost-balanced", "padded-rr", "prompt-balanced"),
        help="packed-rr, cost-balanced, padded-rr, prompt-balanced (default all, in this order; "
        "prompt-balanced only with executors that ignore rows, i.e. engine)",
    )
    p.add_argument(
        "--executors",
        type=csv_list,
        default=("runner",),
        help="runner (prepacked runner, --backends) and/or engine (PrefillEngine) (default runner)",
    )
    p.add_argument(
        "--backends",
        type=csv_list,
        default=("dense",),
        help="runner attention backends, one run each: dense, varlen, flex, auto (default dense)",
    )
    p.add_argument(
        "--padded-runs",
        type=csv_list,
        default=("runner/dense", "engine/varlen"),
        help="executor/backend runs that include padded-rr (default runner/dense,engine/varlen)",
    )
    p.add_argument(
        "--world-sizes", type=int_list, default=(), help="GPU counts to measure (default 1, 2, 4 ... and all)"
    )
    p.add_argument(
        "--max-padded-batch", type=int, default=256, help="run padded-rr only up to this batch (default 256)"
    )
    p.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    p.add_argument("--reps", type=int, default=3, help="timed calls, median reported (default 3)")
    p.add_argument("--seed", type=int, default=0, help="length draw and token seed (default 0)")
    p.add_argument("--dtype", default="bfloat16", help="bfloat16, float16, float32 (default bfloat16)")
    p.add_argument(
        "--memory-fraction",
        type=float,
        default=0.6,
        help="runner memory budget per forward, fraction of free GPU memory (default 0.6)",
    )
    p.add_argument(
        "--out", default="", help="JSON records, '{gpu}' replaced by the card (e.g. multigpu_{gpu}.json)"
    )
    p.add_argument(
        "--smoke", action="store_true", help="CPU + gloo, tiny model, float32, small batches, 1 rep"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        import torch

        from gpu_runner.bench.multigpu import MultiGPUConfig, run_multigpu_benchmark
        from gpu_runner.distributed.launch import init_distributed

        options = dict(
            model=args.model, dataset=args.dataset, batches=args.batches, strategies=args.strategies,
            executors=args.executors, world_sizes=args.world_sizes, backends=args.backends,
            padded_runs=args.padded_runs,
            max_padded_batch=args.max_padded_batch, warmup=args.warmup, reps=args.reps, seed=args.seed,
            dtype=args.dtype, memory_fraction=args.memory_fraction, out=args.out,
        )  # fmt: skip
        if args.smoke:
            options.update(model="tiny", dtype="float32", batches=(24, 64), warmup=0, reps=1,
                           max_padded_batch=64)  # fmt: skip
        cfg = MultiGPUConfig(**options)
        use_cuda = torch.cuda.is_available() and not args.smoke
        if not use_cuda and cfg.dtype != "float32" and not args.smoke:
            raise ValueError("no CUDA device: use --smoke (CPU, gloo) or --dtype float32")
    except (_UsageError, ValueError) as exc:
        print(f"multigpu_bench: error: {exc}", file=sys.stderr)
        return 2
    _, _, device = init_distributed("nccl" if use_cuda else "gloo")
    import torch.distributed as dist

    try:
        run_multigpu_benchmark(cfg, device=device)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
