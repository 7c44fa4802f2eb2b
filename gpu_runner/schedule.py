"""Refill policies of batch generation: which waiting prompts join the decode batch, and when.

This module owns the schedule (a plug-in kind with one registry, like `packers`). Between
two decode steps the loop asks its policy once; the chosen prompts are prefilled together in
ONE packed prefill and join the batch. Policies only choose: the loop checks memory and runs.

Contract shared by every policy (`RefillPolicy.select`):
  inputs  live: sequences decoding now; free_slots: room in the decode batch;
          free_pages / kv_pages[i]: KV pages free now and needed by waiting prompt i;
          prompt_tokens[i]: length of waiting prompt i (the queue's first free_slots
          prompts, in arrival order); waiting: prompts in the whole queue
  output  queue positions to prefill now (ascending), or [] to keep decoding. Only a prefix
          of the queue that fits (slots and pages, in order: no prompt overtakes one that
          does not fit, so none starves) is eligible; the packer picks, under
          `token_budget` tokens, the packed row holding the queue's head: one prefill is
          bounded, so a burst of long prompts does not stall decoding for long. A head
          longer than the budget is prefilled alone.
  progress: when nothing is live and the head fits, a policy selects at least the head.

Registered: "refill-when-free" (refill as soon as any room opens; the default: fewest decode
token-steps in the CPU schedule count of tests/test_schedule.py, see there) and
"batch-refill" (wait until `min_free` slots are free, then refill many at once: fewer, larger
prefills). Third-party policies: `make_policy("module:Class", **params)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import packers

__all__ = ["POLICIES", "BatchRefill", "RefillPolicy", "RefillWhenFree", "make_policy"]


class RefillPolicy(Protocol):
    """A refill schedule (see the module docstring for the contract)."""

    name: str
    token_budget: int

    def select(self, *, live: int, waiting: int, free_slots: int, free_pages: int, prompt_tokens: Sequence[int],
               kv_pages: Sequence[int]) -> list[int]: ...


def _fitting_prefix(free_slots: int, free_pages: int, kv_pages: Sequence[int]) -> int:
    """Length of the queue's longest prefix that fits in the free slots and pages."""
    n, pages = 0, 0
    for need in kv_pages[:free_slots]:
        if pages + need > free_pages:
            break
        pages += need
        n += 1
    return n


def _head_row(prompt_tokens: Sequence[int], count: int, token_budget: int, packer: str) -> list[int]:
    """Among the first `count` waiting prompts, the packed row (under token_budget) holding the
    head; the head alone if it is over the budget."""
    if count == 0:
        return []
    if prompt_tokens[0] > token_budget:
        return [0]
    eligible = [i for i in range(count) if prompt_tokens[i] <= token_budget]
    lengths = [prompt_tokens[i] for i in eligible]
    packing = packers.checked_pack(packers.make_packer(packer), lengths, token_budget)  # plug-ins checked
    row = next(b for b in packing.bins if 0 in b)
    return sorted(eligible[j] for j in row)


def _check_common(token_budget: int, packer: str) -> None:
    if isinstance(token_budget, bool) or not isinstance(token_budget, int) or token_budget < 1:
        raise ValueError(f"token_budget must be a positive int, got {token_budget!r}")
    if packer not in packers.PACKERS:
        raise ValueError(f"unknown packer {packer!r}; choose from {', '.join(packers.PACKERS)}")


@dataclass(frozen=True)
class RefillWhenFree:
    """Refill whenever a slot is free and the queue's head fits: the batch stays as full as
    memory allows, at the price of more, smaller prefills."""

    token_budget: int = 8192
    packer: str = "ffd"
    name: str = "refill-when-free"

    def __post_init__(self) -> None:
        _check_common(self.token_budget, self.packer)

    def select(self, *, live: int, waiting: int, free_slots: int, free_pages: int, prompt_tokens: Sequence[int],
               kv_pages: Sequence[int]) -> list[int]:
        count = _fitting_prefix(free_slots, free_pages, kv_pages)
        return _head_row(prompt_tokens, count, self.token_budget, self.packer)


@dataclass(frozen=True)
class BatchRefill:
    """Refill only once `min_free` slots (or the whole rest of the queue) fit, or nothing is
    live: fewer, larger prefills; the batch runs below capacity meanwhile."""

    min_free: int = 8
    token_budget: int = 8192
    packer: str = "ffd"
    name: str = "batch-refill"

    def __post_init__(self) -> None:
        _check_common(self.token_budget, self.packer)
        if isinstance(self.min_free, bool) or not isinstance(self.min_free, int) or self.min_free < 1:
            raise ValueError(f"min_free must be a positive int, got {self.min_free!r}")

    def select(self, *, live: int, waiting: int, free_slots: int, free_pages: int, prompt_tokens: Sequence[int],
               kv_pages: Sequence[int]) -> list[int]:
        count = _fitting_prefix(free_slots, free_pages, kv_pages)
        if live and count < min(self.min_free, waiting):
            return []
        return _head_row(prompt_tokens, count, self.token_budget, self.packer)


POLICIES: dict[str, Callable[..., RefillPolicy]] = {
    "refill-when-free": RefillWhenFree,
    "batch-refill": BatchRefill,
}
DEFAULT_POLICY = "refill-when-free"


def make_policy(name: str = DEFAULT_POLICY, **params: object) -> RefillPolicy:
    """Build policy `name` (a registered name or "module:Class") with its hyperparameters;
    ValueError for an unknown name or a bad parameter."""
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load refill policy {name!r}: {exc}") from None
    else:
        try:
            factory = POLICIES[name]
        except KeyError:
            raise ValueError(f"unknown refill policy {name!r}; choose from {', '.join(POLICIES)}") from None
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for refill policy {name!r}: {exc}") from None
