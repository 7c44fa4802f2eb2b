"""Re-pricing the GPU runner's sweep CSV: batches are redrawn exactly, unusable rows are
counted by reason."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from simulator.calibration import default_backends
from simulator.cost import ELEMENTWISE_PASSES, MATMUL_EFFICIENCY
from simulator.sweep_calibration import _gpu_name, load_sweep, sweep_lengths, sweep_report

COLUMNS = ("gpu", "model", "dataset", "batch", "packer", "backend", "mode", "num_bins", "row_len",
           "real_tokens", "computed_tokens", "measured_ms", "reps", "error")  # fmt: skip


def _row(**kw):
    base = dict.fromkeys(COLUMNS, "")
    base.update(gpu="nvidia-h100-80gb-hbm3", dataset="mmlu", mode="eager", reps=3)
    base.update(kw)
    return base


def test_sweep_rows_are_redrawn_and_skips_counted(tmp_path):
    b16 = int(sweep_lengths("mmlu", 16).sum())
    rows = [
        _row(model="sheared-llama-1.3b", batch=16, packer="ffd", backend="dense", real_tokens=b16, measured_ms=20.0),
        _row(model="llama2-7b", batch=16, packer="pad", backend="padded", real_tokens=b16, measured_ms=90.0),
        _row(model="llama2-7b", batch=16, packer="ffd", backend="varlen", real_tokens=b16 + 1, measured_ms=50.0),
        _row(model="tiny", batch=16, packer="ffd", backend="dense", real_tokens=b16, measured_ms=1.0),
        _row(model="llama2-7b", batch=16, packer="flat", backend="graph", real_tokens=b16, measured_ms=30.0),
        _row(model="llama2-7b", batch=256, packer="pad", backend="padded", real_tokens=1, error="OutOfMemoryError: x"),
        _row(model="llama2-7b", gpu="tpu-v5", batch=16, packer="ffd", backend="dense", real_tokens=b16, measured_ms=5.0),
    ]
    path = tmp_path / "prefill_sweep_test.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    obs, skipped = load_sweep(path)
    assert [(o.model, o.attention) for o in obs] == [("sheared-llama-1.3b", "dense"), ("llama-2-7b", "padded")]
    assert sum(skipped.values()) == 5
    assert skipped["redrawn batch does not match real_tokens"] == 1
    assert all(int(o.lengths.sum()) == b16 for o in obs)
    text = sweep_report(obs)
    assert "2 points" in text
    pred = obs[0].modeled_ms(default_backends(), (MATMUL_EFFICIENCY, ELEMENTWISE_PASSES))
    assert f"{pred:.1f}" in text


def test_sweep_lengths_match_the_runner_recipe():
    profile = np.loadtxt(__file__.rsplit("/", 2)[0] + "/simulator/data/alpaca.txt", dtype=np.int64)
    rng = np.random.default_rng(0)
    expected = profile[rng.choice(len(profile), size=64, replace=False)]
    assert np.array_equal(sweep_lengths("alpaca", 64), expected)


@pytest.mark.parametrize(
    "slug,name",
    [("nvidia-h100-80gb-hbm3", "h100"), ("NVIDIA H200", "h200"), ("nvidia-a100-sxm4-80gb", "a100-80gb"),
     ("nvidia-l4", "l4"), ("nvidia-l40s", None), ("tpu", None)],
)  # fmt: skip
def test_gpu_names(slug, name):
    assert _gpu_name(slug) == name
