"""Refill schedule policies of a continuous-batching decode loop, as small objects in one
registry (`POLICIES`, `make_policy`), named as in gpu_runner's decode loop.

A policy answers one question between decode steps: prefill waiting prompts now, or keep
decoding? It sees counts only: free slots (how many waiting prompts, in order, fit the free decode
slots and the KV budget right now), live sequences, waiting prompts; which prompts go into
the refill (the prefill token budget) is decided by the simulation.

  refill-when-free   refill as soon as any slot is free
  batch-refill       refill when at least `min_free` slots are free (or every waiting prompt
                     fits in the free slots), or when nothing is live (the GPU would idle)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["POLICIES", "BatchRefill", "RefillWhenFree", "SchedulePolicy", "available_policies", "make_policy"]


class SchedulePolicy(Protocol):
    """`should_refill(free_slots, live, waiting) -> bool`: all counts >= 0, waiting >= 1
    (the simulation asks only while prompts wait). Pure: no state between calls."""

    name: str

    def should_refill(self, free_slots: int, live: int, waiting: int) -> bool: ...


@dataclass(frozen=True)
class RefillWhenFree:
    """Refill whenever a slot is free."""

    name = "refill-when-free"

    def should_refill(self, free_slots: int, live: int, waiting: int) -> bool:
        return free_slots > 0


@dataclass(frozen=True)
class BatchRefill:
    """Refill when free_slots >= min(min_free, waiting), or when live == 0."""

    name = "batch-refill"
    min_free: int = 8

    def __post_init__(self) -> None:
        if isinstance(self.min_free, bool) or not isinstance(self.min_free, int) or self.min_free < 1:
            raise ValueError(f"batch-refill min_free must be a positive integer, got {self.min_free!r}")

    def should_refill(self, free_slots: int, live: int, waiting: int) -> bool:
        return live == 0 or (free_slots > 0 and free_slots >= min(self.min_free, waiting))


POLICIES: dict[str, type] = {cls.name: cls for cls in (RefillWhenFree, BatchRefill)}


def available_policies() -> list[str]:
    return list(POLICIES)


def make_policy(name: str | SchedulePolicy, **params: Any) -> SchedulePolicy:
    """Build a policy by name with `params`; an object with `should_refill` passes through.
    Unknown names or parameters raise `ValueError`."""
    if not isinstance(name, str):
        if not callable(getattr(name, "should_refill", None)):
            raise ValueError(f"{name!r} is not a schedule policy (no should_refill)")
        return name
    key = name.strip().lower()
    if key not in POLICIES:
        raise ValueError(f"unknown schedule policy {name!r}; known: {', '.join(POLICIES)}")
    try:
        return POLICIES[key](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for policy {key!r}: {exc}") from None
