"""Re-pricing the GPU runner's measured sweep (`benchmarks/results/prefill_sweep_*.csv`,
written by gpu_runner/bench/sweep.py) with the cost model, and refitting on it.

The sweep CSV holds no prompt lengths, but it draws each batch reproducibly:
`lengths = profile[default_rng(seed).choice(len(profile), size=batch, replace=len(profile) < batch)]`
with seed 0. `load_sweep` redraws them from the shipped profiles and keeps a row only when
the redrawn real-token count equals the CSV's `real_tokens`; every row it cannot use is
counted by reason, never silently dropped.

    python -m simulator.sweep_calibration benchmarks/results/prefill_sweep_h100.csv [--fit]
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

from simulator.calibration import ANCHORS, PADDED_VARLEN, Observation, anchor_batch, default_backends, fit, report
from simulator.cost import ELEMENTWISE_PASSES, MATMUL_EFFICIENCY
from simulator.distributions import PROFILES, load_profile
from simulator.gpus import match_gpu
from simulator.names import PACKED_ATTENTION, PADDED

__all__ = ["SWEEP_MODELS", "load_sweep", "sweep_lengths", "sweep_report"]

# sweep CSV model names -> simulator.specs.MODELS names (same shapes); CSVs written before the
# bench took the simulator's spelling say 'llama2-7b'
SWEEP_MODELS = {"llama2-7b": "llama-2-7b", "llama-2-7b": "llama-2-7b", "sheared-llama-1.3b": "sheared-llama-1.3b"}
SWEEP_BACKENDS = (PADDED, *PACKED_ATTENTION)  # GRAPH (the engine, CUDA graphs) is not modeled


def sweep_lengths(dataset: str, batch: int, seed: int = 0) -> np.ndarray:
    """The batch gpu_runner.bench.sweep draws for (dataset, batch, seed)."""
    profile = load_profile(dataset)
    rng = np.random.default_rng(seed)
    return profile[rng.choice(profile.size, size=batch, replace=profile.size < batch)]


def _gpu_name(slug: str) -> str | None:
    """'nvidia-h100-80gb-hbm3' or 'NVIDIA H100 80GB HBM3' -> 'h100' (`gpus.match_gpu`); None
    for a card the table lacks (its rows are skipped and counted)."""
    try:
        return match_gpu(slug)
    except ValueError:
        return None


def load_sweep(path: str | Path, seed: int = 0) -> tuple[list[Observation], Counter]:
    """Observations for every usable CSV row, and a Counter of skipped rows by reason."""
    observations, skipped = [], Counter()
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("error"):
                skipped["measurement error (e.g. OOM)"] += 1
                continue
            model = SWEEP_MODELS.get(row["model"])
            gpu = _gpu_name(row["gpu"])
            if model is None:
                skipped[f"model {row['model']} not in the table"] += 1
            elif gpu is None:
                skipped[f"GPU {row['gpu']} not in the table"] += 1
            elif row["backend"] not in SWEEP_BACKENDS:
                skipped[f"backend {row['backend']} not modeled"] += 1
            elif row["dataset"] not in PROFILES:
                skipped[f"dataset {row['dataset']} not shipped"] += 1
            else:
                lengths = sweep_lengths(row["dataset"], int(row["batch"]), seed)
                if int(lengths.sum()) != int(row["real_tokens"]):
                    skipped["redrawn batch does not match real_tokens"] += 1
                    continue
                packer = "pad" if row["backend"] == "padded" else row["packer"]
                # the runner's varlen backend pads packed rows to W for the linear layers
                attention = PADDED_VARLEN if row["backend"] == "varlen" and packer != "flat" else row["backend"]
                label = f"{row['model']} {row['dataset']} b{row['batch']} {row['packer']}/{row['backend']}"
                observations.append(Observation(model, gpu, packer, attention, lengths, float(row["measured_ms"]), label))
    return observations, skipped


def sweep_report(observations: Sequence[Observation], backends=None, globals_=None) -> str:
    """Markdown table of measured vs modeled ms with relative errors."""
    backends = backends or default_backends()
    globals_ = globals_ or (MATMUL_EFFICIENCY, ELEMENTWISE_PASSES)
    lines = ["| point | measured ms | modeled ms | error |", "|---|---:|---:|---:|"]
    errs = []
    for o in observations:
        pred = o.modeled_ms(backends, globals_)
        errs.append(pred / o.measured_ms - 1)
        lines.append(f"| {o.label} | {o.measured_ms:.1f} | {pred:.1f} | {100 * errs[-1]:+.1f}% |")
    if errs:
        a = np.abs(errs)
        lines += ["", f"{len(a)} points: mean |error| {100 * a.mean():.1f}%, median {100 * np.median(a):.1f}%, "
                  f"max {100 * a.max():.1f}%."]  # fmt: skip
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("csv", nargs="+", help="prefill_sweep_*.csv files")
    parser.add_argument("--fit", action="store_true", help="refit on the anchors + these rows, then report")
    parser.add_argument("--seed", type=int, default=0, help="the sweep's seed (default 0)")
    args = parser.parse_args(argv)
    observations, skipped = [], Counter()
    for path in args.csv:
        obs, skip = load_sweep(path, args.seed)
        observations += obs
        skipped += skip
    print(f"# {len(observations)} usable rows; skipped: {dict(skipped) or 'none'}")
    drawn = [anchor_batch(a) for a in ANCHORS]
    seeds, batches = [s for s, _ in drawn], [b for _, b in drawn]
    if args.fit:
        params, backends, globals_ = fit(batches, observations)
        print("## refit on anchors + sweep\n")
        for k, v in params.items():
            print(f"- {k} = {v:.4g}")
    else:
        backends, globals_ = default_backends(), (MATMUL_EFFICIENCY, ELEMENTWISE_PASSES)
        print("## shipped constants")
    print("\n### sweep\n")
    print(sweep_report(observations, backends, globals_))
    print("\n### anchors\n")
    print(report(batches, seeds, backends, globals_))

if __name__ == "__main__":
    main()
