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

from dataclasses import dataclass
from typing import Any

from experiments.cli import ModelsConfig, model_script, option
from experiments.common import SMOKE_MODEL, Budget, speedup_points

CSV_NAME = "speedup_by_batch.csv"


@dataclass(frozen=True)
class Config(ModelsConfig):
    datasets: tuple[str, ...] = option(("mmlu",), "length lists the batches are drawn from")
    batches: tuple[int, ...] = option((4, 8, 16, 32, 64, 128, 256), "batch sizes", minimum=1)
    methods: tuple[str, ...] = option(("padded", "paper", "best"), "gpu_runner.bench.methods names")
    modes: tuple[str, ...] = option(("prefill",), "prefill and/or ttft", choices=("prefill", "ttft"))
    warmup: int = option(1, "untimed calls per method", minimum=0)
    reps: int = option(3, "timed calls per method (median)", minimum=1)

    @classmethod
    def smoke(cls, seed: int = 0) -> Config:
        return cls(models=(SMOKE_MODEL,), batches=(2, 8), methods=("padded", "paper"), warmup=0, reps=1,
                   seed=seed, device="cpu")  # fmt: skip


def run_for_model(
    model: Any, model_name: str, cfg: Config, out_csv: str, budget: Budget | None = None
) -> list[dict]:
    """Every (dataset, batch) of `cfg` on one built model, smallest batch first."""
    points = [(dataset, batch) for dataset in cfg.datasets for batch in sorted(cfg.batches)]
    return speedup_points(model, model_name, cfg, out_csv, points, prog="speedup_by_batch", budget=budget)


run, main = model_script(Config, run_for_model, csv_name=CSV_NAME, prog="speedup_by_batch", doc=__doc__)


if __name__ == "__main__":
    raise SystemExit(main())
