"""gpu_runner.bench.power: nvidia-smi samples summarised; no GPU, no nvidia-smi needed."""

from __future__ import annotations

import pytest
import torch

from gpu_runner.bench.power import PowerLog, parse_samples


def test_samples_summarise_clock_power_and_cap():
    text = "1980, 130.5, 700.00, 0x0000000000000000\n1470, 699.9, 700.00, 0x0000000000000004\n" \
           "[N/A], 1.0, 700.00, 0x0\n1290, 688.1, 700.00, 0x0000000000000004\n"
    s = parse_samples(text)  # the unreadable line is skipped
    assert s.samples == 3 and s.sm_clock_mhz_min == 1290
    assert s.sm_clock_mhz_mean == pytest.approx((1980 + 1470 + 1290) / 3)
    assert s.power_w_mean == pytest.approx((130.5 + 699.9 + 688.1) / 3) and s.power_limit_w == 700.0
    assert s.power_capped_fraction == pytest.approx(2 / 3)
    assert parse_samples("") is None and parse_samples("No devices were found\n") is None


def test_no_cuda_device_gives_no_summary():
    with PowerLog(torch.device("cpu")) as log:
        pass
    assert log.summary is None
    with pytest.raises(ValueError, match="interval_ms"):
        PowerLog(torch.device("cpu"), interval_ms=0)
