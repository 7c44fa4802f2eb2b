"""The toolkit's one input-limits policy: the largest length, capacity, prompt count and
memory budget anything in `packers`, `simulator` or `gpu_runner` accepts.

Why limits at all: loads, bounds and costs are summed in int64 numpy arrays. With every
length <= MAX_LENGTH_TOKENS and at most MAX_PROMPTS prompts, any sum of lengths is at most
MAX_TOTAL_TOKENS = 2**60, and every product the packers and bounds form (e.g. rows x
capacity in the L2 bound, at most twice a sum of lengths) stays below 2**62: no int64
wrap anywhere, so a result is either exact or an input was refused up front.
The limits are far beyond any real model (a 68-billion-token prompt, 16.7 million prompts
in one call, an exbibyte of memory); they only stop values that would overflow.

Every check raises one `ValueError` that names the value, the limit and this module.
"""

from __future__ import annotations

import math
import numbers

__all__ = [
    "MAX_CAPACITY_TOKENS",
    "MAX_LENGTH_TOKENS",
    "MAX_MEMORY_BYTES",
    "MAX_PROMPTS",
    "MAX_TOTAL_TOKENS",
    "check_capacity_tokens",
    "check_memory_bytes",
    "check_num_prompts",
    "limit_error",
]

MAX_LENGTH_TOKENS = 2**36  # 68,719,476,736 tokens: the longest prompt
MAX_PROMPTS = 2**24  # 16,777,216 prompts in one pack / simulate call
MAX_TOTAL_TOKENS = MAX_LENGTH_TOKENS * MAX_PROMPTS  # 2**60: the largest sum of lengths
MAX_CAPACITY_TOKENS = MAX_TOTAL_TOKENS  # a row never needs to hold more than every prompt
MAX_MEMORY_BYTES = 2**60  # 1 EiB: the largest memory budget


def limit_error(what: str, value: object, limit: int, unit: str) -> ValueError:
    """The one wording of a limit violation:
    '<what> <value> is over the limit of <limit> <unit> (packers.limits)'."""
    shown = f"{value:.4g}" if isinstance(value, float) else str(value)
    return ValueError(f"{what} {shown} is over the limit of {limit:,} {unit} (packers.limits)")


def _positive_int(value: object, what: str, limit: int, unit: str) -> int:
    """`value` as a positive int <= limit: ints, numpy ints and integral finite floats."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        as_float = float(value)
        if math.isnan(as_float) or (math.isfinite(as_float) and not as_float.is_integer()):
            raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if as_float > limit:  # inf included
            raise limit_error(what, as_float, limit, unit)
        out = int(as_float)
    if out <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    if out > limit:
        raise limit_error(what, out, limit, unit)
    return out


def check_capacity_tokens(capacity: object) -> int:
    """`capacity` as an int in [1, MAX_CAPACITY_TOKENS], else `ValueError`."""
    return _positive_int(capacity, "capacity", MAX_CAPACITY_TOKENS, "tokens")


def check_num_prompts(count: object, what: str = "number of prompts") -> int:
    """`count` as an int in [1, MAX_PROMPTS], else `ValueError`."""
    return _positive_int(count, what, MAX_PROMPTS, "prompts")


def check_memory_bytes(size: object, what: str = "memory budget") -> int:
    """`size` as an int in [1, MAX_MEMORY_BYTES], else `ValueError`."""
    return _positive_int(size, what, MAX_MEMORY_BYTES, "bytes")
