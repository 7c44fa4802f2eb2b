"""Experiment 2: prefill speedup of prepacking over HF padding against batch size, 4 to 256
(the paper: up to 6.2x prefill at batch 64 on MMLU with the 1.3B model).

Same methods and rows (SPEEDUP_COLUMNS) as experiment 1, one batch size per point; the
peak extra memory column doubles as experiment 3's peak-memory-vs-batch curve. A padded
batch that runs out of memory is run as halves by the padded method (`oom_splits` > 0).
Appends to speedup_by_batch.csv.

    python -m experiments.speedup_by_batch               # GPU: 1.3B and 7B, MMLU, 4..256
    python -m experiments.speedup_by_batch --smoke       # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experiments.common import (
    GPU_MODELS,
    SMOKE_MODEL,
    SPEEDUP_COLUMNS,
    Budget,
    add_common_args,
    append_rows,
    parse_list,
    print_row,
    run_cli,
    run_models,
    speedup_rows,
)  # fmt: skip

CSV_NAME = "speedup_by_batch.csv"


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = GPU_MODELS
    datasets: tuple[str, ...] = ("mmlu",)
    batches: tuple[int, ...] = (4, 8, 16, 32, 64, 128, 256)
    methods: tuple[str, ...] = ("padded", "paper", "best")
    modes: tuple[str, ...] = ("prefill",)
    warmup: int = 1
    reps: int = 3
    seed: int = 0
    device: str = "cuda"

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), batches=(2, 8), methods=("padded", "paper"), warmup=0, reps=1,
                   seed=seed, device="cpu")  # fmt: skip


def run_for_model(
    model: Any, model_name: str, cfg: Config, out_csv: str, budget: Budget | None = None
) -> list[dict]:
    """Every (dataset, batch) of `cfg` on one built model, smallest batch first."""
    rows: list[dict] = []
    for dataset in cfg.datasets:
        for batch in sorted(cfg.batches):
            if budget is not None and budget.expired():
                print(
                    f"[speedup_by_batch] time budget spent: skipping {model_name} {dataset} b{batch}",
                    flush=True,
                )
                continue
            got = speedup_rows(model, model_name, dataset, batch, methods=cfg.methods, modes=cfg.modes,
                               device=cfg.device, warmup=cfg.warmup, reps=cfg.reps, seed=cfg.seed)  # fmt: skip
            append_rows(out_csv, got, SPEEDUP_COLUMNS)
            for r in got:
                print_row("speedup_by_batch", r)
            rows += got
    return rows


def run(cfg: Config, out_dir: str | None = None) -> list[dict]:
    return run_models(cfg, out_dir, CSV_NAME, run_for_model)


def _body(args: argparse.Namespace) -> None:
    if args.smoke:
        cfg = Config.smoke(args.seed)
    else:
        cfg = Config(models=parse_list(args.models, str, "models"), datasets=parse_list(args.datasets, str, "datasets"),
                     batches=parse_list(args.batches, int, "batches"), methods=parse_list(args.methods, str, "methods"),
                     modes=parse_list(args.modes, str, "modes"), reps=args.reps, seed=args.seed, device=args.device)  # fmt: skip
    run(cfg, args.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speedup_by_batch", description=__doc__.splitlines()[0])
    add_common_args(parser)
    d = Config()
    parser.add_argument("--models", default=",".join(d.models))
    parser.add_argument("--datasets", default=",".join(d.datasets))
    parser.add_argument("--batches", default=",".join(map(str, d.batches)))
    parser.add_argument("--methods", default=",".join(d.methods))
    parser.add_argument("--modes", default=",".join(d.modes), help="prefill and/or ttft")
    parser.add_argument("--reps", type=int, default=d.reps)
    parser.add_argument("--device", default=d.device)
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
