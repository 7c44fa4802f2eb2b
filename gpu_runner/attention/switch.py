"""Switching a transformers model's attention implementation for the length of a call,
replayed from a recorded plan after the first switch (cheap enough to do per prefill)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["attention_implementation", "set_attention_implementation"]


# Per model and implementation: the `_attn_implementation_internal` value transformers'
# `set_attn_implementation` gave each config object the model reaches. Replaying it skips
# the full walk and checks (about 2 ms per switch on a 32-layer model, twice per prefill).
_SWITCH_PLANS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, list[tuple[Any, Any]]]] = (
    weakref.WeakKeyDictionary()
)


def _reachable_configs(model: torch.nn.Module) -> list[Any]:
    found: dict[int, Any] = {}
    stack = [model.config] + [
        m.config for m in model.modules() if hasattr(getattr(m, "config", None), "sub_configs")
    ]
    while stack:
        config = stack.pop()
        if id(config) in found:
            continue
        found[id(config)] = config
        for key in getattr(config, "sub_configs", {}) or {}:
            sub = getattr(config, key, None)
            if sub is not None:
                stack.append(sub)
    return list(found.values())


def set_attention_implementation(model: torch.nn.Module, implementation: str) -> None:
    """`model.set_attn_implementation(implementation)`, replayed from a recorded plan after
    the first time for this model (same end state, none of the per-call walking)."""
    plans = _SWITCH_PLANS.setdefault(model, {})
    plan = plans.get(implementation)
    if plan is None:
        model.set_attn_implementation(implementation)
        plans[implementation] = [(c, c._attn_implementation_internal) for c in _reachable_configs(model)]
        return
    for config, value in plan:
        config._attn_implementation_internal = value


@contextmanager
def attention_implementation(model: torch.nn.Module, implementation: str) -> Iterator[None]:
    """Run the block with `model` under `implementation`, then restore the previous one."""
    previous = model.config._attn_implementation
    if previous == implementation:
        yield
        return
    set_attention_implementation(model, implementation)
    try:
        yield
    finally:
        set_attention_implementation(model, previous)
