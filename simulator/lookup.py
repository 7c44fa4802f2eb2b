"""Registry look-ups shared by the simulator's tables and registries (GPUs, model shapes,
attention costs, assignment strategies): one spelling of the "unknown name" and "bad
parameters" errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = ["build", "lookup"]

T = TypeVar("T")


def lookup(table: Mapping[str, T], name: str, kind: str, *, fold_case: bool = True) -> T:
    """table[name] (stripped, lower-cased unless `fold_case` is False); `ValueError` listing
    the known names otherwise."""
    key = str(name).strip().lower() if fold_case else name
    if key not in table:
        raise ValueError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(table))}")
    return table[key]


def build(table: Mapping[str, Any], name: str, kind: str, *, fold_case: bool = True, **params: Any) -> Any:
    """`lookup(table, name, kind)(**params)`; a `TypeError` from bad parameters becomes a
    `ValueError` naming the entry."""
    factory = lookup(table, name, kind, fold_case=fold_case)
    try:
        return factory(**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for {kind} {name!r}: {exc}") from None
