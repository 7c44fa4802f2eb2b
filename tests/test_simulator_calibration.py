"""The shipped constants still reproduce the H100 anchor table (simulator/CALIBRATION.md)."""

from __future__ import annotations

import numpy as np
import pytest

import packers
from simulator import CostModel
from simulator.calibration import ANCHORS, anchor_batch, default_backends, predict
from simulator.cost import ELEMENTWISE_PASSES, MATMUL_EFFICIENCY


@pytest.fixture(scope="module")
def predictions():
    out = []
    for anchor in ANCHORS:
        _, batch = anchor_batch(anchor)
        out.append((anchor, batch, predict(anchor, batch, default_backends(), (MATMUL_EFFICIENCY, ELEMENTWISE_PASSES))))
    return out


def test_anchor_times_within_documented_error(predictions):
    errors = {}
    for anchor, _, pred in predictions:
        for method, ms in anchor.ms.items():
            if ms is not None:
                errors[(anchor.model, anchor.batch_size, method)] = pred[method][0] / ms - 1
    abs_err = np.abs(list(errors.values()))
    assert len(abs_err) == 19
    assert abs_err.mean() < 0.12 and np.median(abs_err) < 0.09, errors
    packed = [abs(e) for (m, b, method), e in errors.items() if method != "HF padded"]
    assert max(packed) < 0.30, errors


def test_anchor_memory_and_oom(predictions):
    for anchor, batch, pred in predictions:
        for method, gb in anchor.extra_gb.items():
            assert pred[method][1] == pytest.approx(gb, rel=0.10)
        if anchor.ms.get("HF padded", 0) is None:  # measured out of memory on 80 GB
            cost = CostModel(anchor.model, "h100", "padded").cost(packers.make_packer("pad").pack(batch, int(batch.max())))
            assert not cost.fits


def test_gpu_runner_sweep_within_documented_error():
    from pathlib import Path

    from simulator.calibration import default_backends
    from simulator.sweep_calibration import load_sweep

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "prefill_sweep_h100.csv"
    observations, skipped = load_sweep(path)
    assert len(observations) >= 30 and set(skipped) <= {"backend graph not modeled"}
    globals_ = (MATMUL_EFFICIENCY, ELEMENTWISE_PASSES)
    errors = np.array([o.modeled_ms(default_backends(), globals_) / o.measured_ms - 1 for o in observations])
    assert np.abs(errors).mean() < 0.13 and np.median(np.abs(errors)) < 0.10
