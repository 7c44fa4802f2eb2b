"""Planning packed forwards: the memory estimate of one forward and the grouping of a
packing's bins into forwards that respect a memory budget and static shapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gpu_runner.attention.registry import get_backend
from packers import Packing

__all__ = [
    "ForwardPlan",
    "check_fits_device",
    "estimate_forward_bytes",
    "free_device_bytes",
    "plan_forwards",
    "text_config",
]


@dataclass(frozen=True)
class ForwardPlan:
    """One packed forward: which bins of the packing, padded to num_rows x row_len tokens.

    estimated_bytes: `estimate_forward_bytes` of this forward (peak extra device memory).
    """

    bins: tuple[int, ...]
    num_rows: int
    row_len: int
    estimated_bytes: int

    def __post_init__(self) -> None:
        if not self.bins:
            raise ValueError("a forward needs at least one bin")
        if self.num_rows < len(self.bins) or self.row_len <= 0:
            raise ValueError(
                f"forward of {len(self.bins)} bins cannot fit {self.num_rows} rows x {self.row_len}"
            )


def text_config(config: Any) -> Any:
    """The text (decoder) part of a config; the config itself for plain causal LMs."""
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def estimate_forward_bytes(
    config: Any,
    *,
    num_rows: int,
    row_len: int,
    num_prompts: int,
    backend: str,
    dtype: torch.dtype,
    device: torch.device,
    return_kv: bool,
) -> int:
    """Estimated peak extra device memory of one packed forward, bytes.

    T = num_rows * row_len tokens, e = bytes per element:
      activations  T * e * (4 * hidden + q_heads*D + 2 * kv_heads*D + 3 * intermediate)
      attention    the backend's own `extra_bytes` (dense: mask num_rows * row_len^2 bytes;
                   on CPU, dense and flex also materialize scores, num_rows * q_heads *
                   row_len^2 * 4; varlen: 0)
      kv cache     2 * layers * T * kv_heads * D * e           (only with return_kv)
      logits       num_prompts * vocab * 4
    An estimate for planning, not a guarantee; a real out-of-memory is still caught.
    """
    cfg = text_config(config)
    hidden = int(cfg.hidden_size)
    q_heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or q_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // q_heads)
    inter = int(getattr(cfg, "intermediate_size", None) or 4 * hidden)
    layers = int(cfg.num_hidden_layers)
    e = torch.empty((), dtype=dtype).element_size()
    tokens = num_rows * row_len
    total = tokens * e * (4 * hidden + (q_heads + 2 * kv_heads) * head_dim + 3 * inter)
    total += get_backend(backend).extra_bytes(num_rows, row_len, q_heads, device)
    if return_kv:
        total += 2 * layers * tokens * kv_heads * head_dim * e
    total += num_prompts * int(cfg.vocab_size) * 4
    return int(total)


def plan_forwards(
    packing: Packing,
    estimate: Callable[[int, int, int], int],
    *,
    row_len: int | None = None,
    num_rows: int | None = None,
    memory_budget_bytes: int | None = None,
) -> tuple[ForwardPlan, ...]:
    """Group the packing's bins (in bin order) into packed forwards.

    estimate(num_rows, row_len, num_prompts) -> bytes. Each forward takes consecutive bins
    while it stays within `memory_budget_bytes` and `num_rows` bins. row_len: fixed tokens
    per row (static shapes) or None for the longest bin load of each forward; num_rows:
    fixed rows per forward (padded with empty rows) or None for as many as fit.
    `ValueError` if a single bin alone exceeds the budget.
    """
    loads = packing.loads
    sizes = [len(b) for b in packing.bins]
    plans: list[ForwardPlan] = []
    group: list[int] = []

    def shape(bins: list[int]) -> tuple[int, int, int]:
        rows = len(bins) if num_rows is None else num_rows
        width = max(loads[b] for b in bins) if row_len is None else row_len
        return rows, width, sum(sizes[b] for b in bins)

    def close() -> None:
        rows, width, n = shape(group)
        plans.append(ForwardPlan(tuple(group), rows, width, int(estimate(rows, width, n))))

    for b in range(packing.num_bins):
        candidate = group + [b]
        too_many = num_rows is not None and len(candidate) > num_rows
        too_big = memory_budget_bytes is not None and estimate(*shape(candidate)) > memory_budget_bytes
        if group and (too_many or too_big):
            close()
            group = [b]
        else:
            group = candidate
        if memory_budget_bytes is not None and len(group) == 1:
            need = int(estimate(*shape(group)))
            if need > memory_budget_bytes:
                raise ValueError(
                    f"bin {b} (prompts {list(packing.bins[b])}, {loads[b]} tokens) alone needs about "
                    f"{need} bytes, over memory_budget_bytes={memory_budget_bytes}: lower the capacity"
                    + (" or row_len/num_rows" if row_len or num_rows else "")
                )
    close()
    return tuple(plans)


def free_device_bytes(device: torch.device) -> int | None:
    """Memory free for new tensors on `device`, bytes: on CUDA the driver's free bytes
    (`mem_get_info`) plus what torch's caching allocator holds reserved but unused; on CPU
    the kernel's MemAvailable (Linux), else free physical pages; None where unknown."""
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(torch.cuda.mem_get_info(device)[0]) + max(int(cached), 0)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def check_fits_device(plans: tuple[ForwardPlan, ...], device: torch.device) -> None:
    """`ValueError` naming the first forward whose `estimated_bytes` exceed what `device` has
    free (`free_device_bytes`), before anything is allocated: e.g. `row_len=10**5` asks a
    dense mask of 10^10 bytes per row. Does nothing where free memory is unknown."""
    biggest = max(plans, key=lambda p: p.estimated_bytes)
    if biggest.estimated_bytes <= 0:
        return
    free = free_device_bytes(device)
    if free is None or biggest.estimated_bytes <= free:
        return
    k = plans.index(biggest)
    raise ValueError(
        f"packed forward {k + 1}/{len(plans)} ({biggest.num_rows} rows x {biggest.row_len} tokens) "
        f"needs an estimated {biggest.estimated_bytes:,} bytes, more than the {free:,} bytes free on "
        f"{device}: lower row_len / num_rows / the capacity, or pass memory_budget_bytes"
    )
