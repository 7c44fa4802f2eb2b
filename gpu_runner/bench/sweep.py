"""Measured prefill times over a grid of (model, dataset, batch, packer, backend), for the
cost model's validation: one CSV row per point, written as soon as it is measured.

This module owns the sweep grid and its CSV. Backends:
  padded  HF forward over the left-padded batch (packer `pad`), 2D mask, sdpa
  dense / flex / varlen   `gpu_runner.prefill(model, prompts, packer, capacity="max",
          backend=...)`, eager, return_kv=False (the library's packed path)
  graph   `PrefillEngine` (one flat varlen row, CUDA graphs); packer is `flat`
Each point: `warmup` untimed calls, then the median of `reps` CUDA-event-timed calls.
A point that fails (out of memory, unavailable backend) becomes a row with `error`.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from gpu_runner.bench.common import bench_device, build_model, draw_prompts, error_text, gpu_slug, load_lengths
from gpu_runner.bench.timing import release_memory, time_calls
from packers.limits import check_num_prompts
from simulator.names import DENSE, FLEX, GRAPH, PADDED, VARLEN
from simulator.report import check_output_path

__all__ = ["SWEEP_COLUMNS", "SweepPoint", "default_grid", "run_sweep"]

SWEEP_COLUMNS = (
    "gpu", "model", "dataset", "batch", "packer", "backend", "mode", "num_bins", "row_len",
    "real_tokens", "computed_tokens", "measured_ms", "reps", "error",
)
_BACKENDS = (PADDED, DENSE, FLEX, VARLEN, GRAPH)


@dataclass(frozen=True)
class SweepPoint:
    model: str
    dataset: str
    batch: int
    packer: str
    backend: str

    def __post_init__(self) -> None:
        if self.backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {self.backend!r}")
        if self.backend == PADDED and self.packer != "pad":
            raise ValueError("the padded backend runs the pad packer only")
        if self.backend == GRAPH and self.packer != "flat":
            raise ValueError("the graph backend runs one flat row (packer 'flat')")
        if self.batch < 1:
            raise ValueError(f"batch must be >= 1, got {self.batch}")
        check_num_prompts(self.batch, "batch")


def default_grid(models: Sequence[str], datasets: Sequence[str], batches: Sequence[int],
                 combos: Sequence[tuple[str, str]]) -> list[SweepPoint]:
    """Every (model, dataset, batch) with every (packer, backend) combo, models outermost."""
    return [SweepPoint(m, d, b, p, k) for m in models for d in datasets for b in batches for p, k in combos]


def _runner(model: torch.nn.Module, point: SweepPoint, prompts: list[list[int]]) -> tuple[Any, int, int]:
    """(call, num_bins, row_len) for one point."""
    lengths = [len(p) for p in prompts]
    if point.backend == PADDED:
        from gpu_runner.bench.methods import PaddedHF

        m = PaddedHF(model, name=PADDED, sort=False, chunk=None)
        return (lambda: m.prefill(prompts)), len(prompts), max(lengths)
    if point.backend == GRAPH:
        from gpu_runner.engine import PrefillEngine, bucket_tokens

        eng = PrefillEngine(model, token_bucket=128)
        return (lambda: eng.prefill(prompts)), 1, bucket_tokens(sum(lengths), 128)
    import packers
    from gpu_runner.runner import prefill

    packing = packers.make_packer(point.packer).pack(lengths, max(lengths))

    def call() -> Any:
        return prefill(model, prompts, packing=packing, backend=point.backend, return_kv=False)

    return call, packing.num_bins, packing.max_load


def run_sweep(points: Sequence[SweepPoint], *, out: str, device: str = "cuda", dtype: str = "bfloat16",
              warmup: int = 1, reps: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Measure every point (models built once each, in order); append rows to the CSV `out`."""
    dev = bench_device(device)
    if out:
        check_output_path(out, "--out")  # a missing folder or a directory: refused before any work
    if seed < 0 or warmup < 0 or reps < 1:
        raise ValueError(f"seed and warmup must be >= 0 and reps >= 1, got {seed}, {warmup}, {reps}")
    gpu = gpu_slug(dev)
    rows: list[dict[str, Any]] = []
    handle = open(out, "w", newline="") if out else None
    writer = csv.DictWriter(handle, fieldnames=SWEEP_COLUMNS) if handle else None
    if writer:
        writer.writeheader()
    model, model_name = None, None
    try:
        for point in points:
            if point.model != model_name:
                model = None
                release_memory(dev)
                model, model_name = build_model(point.model, device=device, dtype=dtype), point.model
            all_lengths = load_lengths(point.dataset)
            rng = np.random.default_rng(seed)
            lengths = all_lengths[rng.choice(len(all_lengths), size=point.batch, replace=len(all_lengths) < point.batch)]
            prompts = draw_prompts(lengths, model.config.vocab_size, seed)
            row: dict[str, Any] = dict(gpu=gpu, model=point.model, dataset=point.dataset, batch=point.batch,
                                       packer=point.packer, backend=point.backend,
                                       mode="graph" if point.backend == GRAPH else "eager",
                                       real_tokens=int(lengths.sum()), reps=reps, error="")
            try:
                call, bins, row_len = _runner(model, point, prompts)
                row.update(num_bins=bins, row_len=row_len, computed_tokens=bins * row_len)
                row["measured_ms"] = round(time_calls(call, device=dev, warmup=warmup, reps=reps).median_ms, 4)
            except Exception as exc:  # noqa: BLE001 - a failing point is a data row, not the end
                row.update(measured_ms="", error=error_text(exc, 200))
            call = None
            release_memory(dev)
            rows.append(row)
            if writer:
                writer.writerow({k: row.get(k, "") for k in SWEEP_COLUMNS})
                handle.flush()
            print(f"[sweep {point.model} {point.dataset} b{point.batch} {point.packer}/{point.backend}] "
                  f"{row.get('measured_ms') or row['error']}", flush=True)
    finally:
        if handle:
            handle.close()
    return rows
