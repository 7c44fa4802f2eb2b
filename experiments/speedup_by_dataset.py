"""Experiment 1: prefill and TTFT speedup of prepacking over HF padding, per dataset and
model, at batch 16 (the paper's Table: 1.9x-3.5x prefill, 1.6x-2.9x TTFT on an A6000).

Methods (gpu_runner.bench_methods): padded (HF, left-padded batch), paper (FFD at capacity =
longest prompt, dense block-diagonal mask, sdpa), best (PrefillEngine: flat varlen row, CUDA
graphs; GPU only). Appends SPEEDUP_COLUMNS rows to speedup_by_dataset.csv.

    python -m experiments.speedup_by_dataset             # GPU: 1.3B and 7B, 4 datasets
    python -m experiments.speedup_by_dataset --smoke     # CPU, tiny model, seconds
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from experiments.common import (
    DATASETS,
    GPU_MODELS,
    SMOKE_MODEL,
    SPEEDUP_COLUMNS,
    Budget,
    append_rows,
    print_row,
    run_models,
    speedup_rows,
)  # fmt: skip
from experiments.cli import check_fields, config_main, option

CSV_NAME = "speedup_by_dataset.csv"


@dataclass(frozen=True)
class Config:
    models: tuple[str, ...] = option(GPU_MODELS, "model shapes (gpu_runner.bench.MODEL_SHAPES)")
    datasets: tuple[str, ...] = option(DATASETS, "length lists the batch is drawn from")
    batch: int = option(16, "prompts per batch", minimum=1)
    methods: tuple[str, ...] = option(("padded", "paper", "best"), "gpu_runner.bench_methods names")
    modes: tuple[str, ...] = option(("prefill", "ttft"), "prefill and/or ttft", choices=("prefill", "ttft"))
    warmup: int = option(2, "untimed calls per method", minimum=0)
    reps: int = option(5, "timed calls per method (median)", minimum=1)
    seed: int = 0
    device: str = option("cuda", "torch device")

    def __post_init__(self) -> None:
        check_fields(self)

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), datasets=("mmlu",), batch=6, methods=("padded", "paper"),
                   warmup=0, reps=1, seed=seed, device="cpu")  # fmt: skip


def run(cfg: Config, out_dir: str | None = None) -> list[dict]:
    """Every model of `cfg` in turn (`run_for_model`); rows appended to CSV_NAME in `out_dir`."""
    return run_models(cfg, out_dir, CSV_NAME, run_for_model)


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


def main(argv: Sequence[str] | None = None) -> int:
    return config_main(Config, run, argv, prog="speedup_by_dataset", description=__doc__.splitlines()[0])


if __name__ == "__main__":
    raise SystemExit(main())
