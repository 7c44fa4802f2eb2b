"""Parsing of human-written sizes: `parse_bytes('40GB') -> 40_000_000_000`."""

from __future__ import annotations

import math
import re

from packers.limits import check_memory_bytes

__all__ = ["parse_bytes"]

_UNITS = {
    "": 1, "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_bytes(text: str | int) -> int:
    """'80GB' (10^9), '75GiB' (2^30), '123456' (bytes) -> positive int bytes, at most
    `packers.limits.MAX_MEMORY_BYTES`; `ValueError` otherwise (1e400 included)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return check_memory_bytes(text, "size")
    m = _PATTERN.match(str(text))
    unit = m.group(2).lower() if m else None
    if not m or unit not in _UNITS:
        units = ", ".join(u for u in _UNITS if u)
        raise ValueError(f"bad size {text!r}: use a number with an optional unit ({units})")
    number = m.group(1)
    value = int(number) * _UNITS[unit] if number.isdigit() else float(number) * _UNITS[unit]
    if isinstance(value, float) and math.isfinite(value):
        value = round(value)
    if value <= 0:
        raise ValueError(f"size must be positive, got {text!r}")
    return check_memory_bytes(value, f"size {text!r} =")
