"""Experiment 1: prefill and TTFT speedup of prepacking over HF padding, per dataset and
model, at batch 16 (the paper's Table: 1.9x-3.5x prefill, 1.6x-2.9x TTFT on an A6000).

Methods (gpu_runner.bench.methods): padded (HF, left-padded batch), paper (FFD at capacity =
longest prompt, dense block-diagonal mask, sdpa), best (PrefillEngine: flat varlen row, CUDA
graphs; GPU only). Appends SPEEDUP_COLUMNS rows to speedup_by_dataset.csv.

    python -m experiments.speedup_by_dataset             # GPU: 1.3B and 7B, 4 datasets
    python -m experiments.speedup_by_dataset --smoke     # CPU, tiny model, seconds
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from experiments.cli import ModelsConfig, model_script, option
from experiments.common import DATASETS, SMOKE_MODEL, Budget, speedup_points

CSV_NAME = "speedup_by_dataset.csv"


@dataclass(frozen=True)
class Config(ModelsConfig):
    datasets: tuple[str, ...] = option(DATASETS, "length lists the batch is drawn from")
    batch: int = option(16, "prompts per batch", minimum=1)
    methods: tuple[str, ...] = option(("padded", "paper", "best"), "gpu_runner.bench.methods names")
    modes: tuple[str, ...] = option(("prefill", "ttft"), "prefill and/or ttft", choices=("prefill", "ttft"))
    warmup: int = option(2, "untimed calls per method", minimum=0)
    reps: int = option(5, "timed calls per method (median)", minimum=1)

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), datasets=("mmlu",), batch=6, methods=("padded", "paper"),
                   warmup=0, reps=1, seed=seed, device="cpu")  # fmt: skip


def run_for_model(
    model: Any, model_name: str, cfg: Config, out_csv: str, budget: Budget | None = None
) -> list[dict]:
    """Every dataset of `cfg` at `cfg.batch` on one built model (rows appended as measured)."""
    points = [(dataset, cfg.batch) for dataset in cfg.datasets]
    return speedup_points(model, model_name, cfg, out_csv, points, prog="speedup_by_dataset", budget=budget)


run, main = model_script(Config, run_for_model, csv_name=CSV_NAME, prog="speedup_by_dataset", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
