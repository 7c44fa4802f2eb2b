"""GPU hardware: the `GPUSpec` dataclass and the built-in table. Unknown names fail loudly."""

from __future__ import annotations

import re
from dataclasses import dataclass

from simulator.lookup import lookup

__all__ = ["GPUSpec", "GPUS", "available_gpus", "get_gpu", "match_gpu"]


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator as the roofline sees it.

    peak_flops: dense (no sparsity) bf16 tensor-core FLOP/s from the vendor datasheet.
    memory_bandwidth_bytes_per_s: HBM/GDDR bandwidth. memory_bytes: device memory.
    All positive; `ValueError` otherwise.
    """

    name: str
    peak_flops: float
    memory_bandwidth_bytes_per_s: float
    memory_bytes: int

    def __post_init__(self) -> None:
        for attr in ("peak_flops", "memory_bandwidth_bytes_per_s", "memory_bytes"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"GPUSpec.{attr} must be positive, got {value!r}")


# Datasheet numbers (dense bf16, no sparsity). Memory in decimal GB as sold.
GPUS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        GPUSpec("h100", 989.4e12, 3.35e12, 80 * 10**9),  # H100 SXM5 80GB
        GPUSpec("h200", 989.4e12, 4.8e12, 141 * 10**9),  # H200 SXM 141GB
        GPUSpec("a100-80gb", 312e12, 2.039e12, 80 * 10**9),  # A100 SXM4 80GB
        GPUSpec("a6000", 154.8e12, 768e9, 48 * 10**9),  # RTX A6000 48GB
        GPUSpec("l4", 121e12, 300e9, 24 * 10**9),  # L4 24GB
    )
}


def available_gpus() -> list[str]:
    return sorted(GPUS)


def get_gpu(name: str | GPUSpec) -> GPUSpec:
    """Look a GPU up in `GPUS` (case-insensitive); a `GPUSpec` passes through.
    Unknown names raise `ValueError` listing the known ones."""
    return name if isinstance(name, GPUSpec) else lookup(GPUS, name, "GPU")


def match_gpu(label: str) -> str:
    """The table name of a device label: 'NVIDIA H100 80GB HBM3', 'nvidia-h100-80gb-hbm3'
    and 'h100' all give 'h100' ('NVIDIA A100-SXM4-80GB' gives 'a100-80gb'). Whole-token
    match on each table name's family ('l4' does not match 'L40S'); `ValueError` for a
    label that names no table GPU, or more than one: unknown hardware is never priced as
    some other card."""
    tokens = set(re.split(r"[^a-z0-9]+", str(label).lower()))
    hits = sorted(name for name in GPUS if name.split("-")[0] in tokens)
    if len(hits) != 1:
        why = "names no" if not hits else f"is ambiguous between {', '.join(hits)}: names more than one"
        raise ValueError(f"GPU {label!r} {why} GPU in the table ({', '.join(available_gpus())})")
    return hits[0]
