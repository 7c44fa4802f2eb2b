"""The GPU's SM clock and power draw while a benchmark runs (`PowerLog`), sampled by nvidia-smi.

Why a benchmark records them: a dense bf16 forward on an H100 or H200 reaches the card's
700 W power limit within about a second, and the driver then lowers the SM clock (H100,
scoring sets: means of 1,370-1,490 MHz against the 1,980 MHz boost). A matmul rate measured in a
short burst (`timing.matmul_peak_flops`, ~30 ms) runs at the boost clock, so a roofline
built on it is one the card cannot sustain; `timing.matmul_sustained_flops` measures the
rate at the capped clock, and a record's clock / power summary shows which regime it ran in.

nvidia-smi runs as a subprocess next to the measured code (no Python thread: the GIL stays
with the benchmark) and is read when the block ends. Where nvidia-smi is missing or fails
(CPU runs, another vendor), the summary is None: nothing is guessed.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import final

import torch

__all__ = ["CAP_REASONS", "PowerLog", "PowerSummary", "parse_samples"]

_FIELDS = "clocks.sm,power.draw,power.limit,clocks_throttle_reasons.active"
# nvidia-smi clock event reasons that mean "slowed for power": SW power cap, HW slowdown,
# HW power brake (NVML's clocksEventReason bit masks).
CAP_REASONS = 0x4 | 0x8 | 0x80


@dataclass(frozen=True)
class PowerSummary:
    """Samples of one measured block: mean / min SM clock (MHz), mean power draw and the
    power limit (W), and the fraction of samples slowed for power (`CAP_REASONS`)."""

    samples: int
    sm_clock_mhz_mean: float
    sm_clock_mhz_min: float
    power_w_mean: float
    power_limit_w: float
    power_capped_fraction: float

    def as_record(self) -> dict[str, float]:
        return asdict(self)


def parse_samples(text: str) -> PowerSummary | None:
    """The summary of nvidia-smi lines "clock, power, limit, reasons" (csv, noheader,
    nounits; reasons in hex); None when no line parses."""
    rows: list[tuple[float, float, float, int]] = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            rows.append((float(parts[0]), float(parts[1]), float(parts[2]), int(parts[3], 16)))
        except ValueError:
            continue
    if not rows:
        return None
    n = len(rows)
    clocks = [r[0] for r in rows]
    return PowerSummary(
        samples=n, sm_clock_mhz_mean=sum(clocks) / n, sm_clock_mhz_min=min(clocks),
        power_w_mean=sum(r[1] for r in rows) / n, power_limit_w=max(r[2] for r in rows),
        power_capped_fraction=sum(1 for r in rows if r[3] & CAP_REASONS) / n,
    )  # fmt: skip


@final
class PowerLog:
    """`with PowerLog(device) as log: ...` samples the device every `interval_ms`; then
    `log.summary` is a `PowerSummary`, or None (not CUDA, no nvidia-smi, no sample)."""

    def __init__(self, device: torch.device, interval_ms: int = 100) -> None:
        if interval_ms < 1:
            raise ValueError(f"interval_ms must be >= 1, got {interval_ms}")
        self.device = torch.device(device)
        self.interval_ms = int(interval_ms)
        self.summary: PowerSummary | None = None
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> PowerLog:
        smi = shutil.which("nvidia-smi")
        if self.device.type == "cuda" and smi is not None:
            uuid = str(torch.cuda.get_device_properties(self.device).uuid)
            self._proc = subprocess.Popen(
                [smi, "-i", uuid if uuid.startswith("GPU-") else f"GPU-{uuid}", f"--query-gpu={_FIELDS}",
                 "--format=csv,noheader,nounits", f"--loop-ms={self.interval_ms}"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )  # fmt: skip
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            out, _ = self._proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            out, _ = self._proc.communicate()
        self._proc = None
        self.summary = parse_samples(out or "")
