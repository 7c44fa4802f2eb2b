"""Experiment 1: prefill and TTFT speedup of prepacking over HF padding, per dataset and
model, at batch 16 (the paper's Table: 1.9x-3.5x prefill, 1.6x-2.9x TTFT on an A6000).

Methods (gpu_runner.bench_methods): padded (HF, left-padded batch), paper (FFD at capacity =
longest prompt, dense block-diagonal mask, sdpa), best (PrefillEngine: flat varlen row, CUDA
graphs; GPU only). Appends SPEEDUP_COLUMNS rows to speedup_by_dataset.csv.

    python -m experiments.speedup_by_dataset             # GPU: 1.3B and 7B, 4 datasets
    python -m experiments.speedup_by_dataset --smoke     # CPU, tiny model, seconds
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experiments.common import (
    DATASETS,
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

CSV_NAME = "speedup_by_dataset.csv"


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = GPU_MODELS
    datasets: tuple[str, ...] = DATASETS
    batch: int = 16
    methods: tuple[str, ...] = ("padded", "paper", "best")
    modes: tuple[str, ...] = ("prefill", "ttft")
    warmup: int = 2
    reps: int = 5
    seed: int = 0
    device: str = "cuda"

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), datasets=("mmlu",), batch=6, methods=("padded", "paper"),
                   warmup=0, reps=1, seed=seed, device="cpu")  # fmt: skip


def run_for_model(
    model: Any, model_name: str, cfg: Config, out_csv: str, budget: Budget | None = None
) -> list[dict]:
    """Every dataset of `cfg` on one built model; rows are appended as each dataset finishes."""
    rows: list[dict] = []
    for dataset in cfg.datasets:
        if budget is not None and budget.expired():
            print(f"[speedup_by_dataset] time budget spent: skipping {model_name} {dataset}", flush=True)
            continue
        got = speedup_rows(model, model_name, dataset, cfg.batch, methods=cfg.methods, modes=cfg.modes,
                           device=cfg.device, warmup=cfg.warmup, reps=cfg.reps, seed=cfg.seed)  # fmt: skip
        append_rows(out_csv, got, SPEEDUP_COLUMNS)
        for r in got:
            print_row("speedup_by_dataset", r)
        rows += got
    return rows


def run(cfg: Config, out_dir: str | None = None) -> list[dict]:
    return run_models(cfg, out_dir, CSV_NAME, run_for_model)


def _body(args: argparse.Namespace) -> None:
    if args.smoke:
        cfg = Config.smoke(args.seed)
    else:
        cfg = Config(models=parse_list(args.models, str, "models"), datasets=parse_list(args.datasets, str, "datasets"),
                     batch=args.batch, methods=parse_list(args.methods, str, "methods"), reps=args.reps,
                     seed=args.seed, device=args.device)  # fmt: skip
    run(cfg, args.out_dir)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speedup_by_dataset", description=__doc__.splitlines()[0])
    add_common_args(parser)
    d = Config()
    parser.add_argument("--models", default=",".join(d.models))
    parser.add_argument("--datasets", default=",".join(d.datasets))
    parser.add_argument("--batch", type=int, default=d.batch)
    parser.add_argument("--methods", default=",".join(d.methods))
    parser.add_argument("--reps", type=int, default=d.reps)
    parser.add_argument("--device", default=d.device)
    return run_cli(_body, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
