"""`checked_pack`: run any packer (built-in or plug-in) and trust nothing it returns.

The simulator and the GPU runner call packers through this one function, so a plug-in that
raises, returns a list or None, or returns a `Packing` for other lengths or another capacity
(or one built around `Packing`'s own validation) fails with one clear error naming it,
instead of being priced or run.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from packers.base import Packer
from packers.packing import Packing, validate_capacity, validate_lengths

__all__ = ["checked_pack", "packer_label"]


def packer_label(packer: Any) -> str:
    """The packer's registry name, else its class name: how errors name it."""
    name = getattr(type(packer), "name", None) or getattr(packer, "name", None)
    return name if isinstance(name, str) and name else type(packer).__qualname__


def checked_pack(packer: Packer, lengths: Sequence[int] | np.ndarray, capacity: int) -> Packing:
    """`packer.pack(lengths, capacity)`, checked.

    Input is validated first (`ValueError`, as every packer promises). Then:
      - the packer raising: `ValueError` "packer 'NAME' failed: <its error>" (chained);
      - a result that is not a `Packing`: `TypeError` naming the packer and what it returned;
      - a `Packing` whose lengths or capacity differ from the request, or that does not pass
        `Packing`'s validation when rebuilt from its fields: `ValueError` naming the packer.
    Returns the rebuilt (hence validated) `Packing`.
    """
    capacity = validate_capacity(capacity)
    arr = validate_lengths(lengths, capacity)
    label = packer_label(packer)
    pack = getattr(packer, "pack", None)
    if not callable(pack):
        raise TypeError(f"packer {label!r} has no pack() method")
    try:
        result = pack(arr.copy(), capacity)
    except Exception as exc:  # a plug-in may raise anything: report it as its failure
        raise ValueError(f"packer {label!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(result, Packing):
        raise TypeError(f"packer {label!r} returned {type(result).__name__}, not a Packing")
    try:  # rebuilt through __post_init__: a Packing made around its validation is caught here
        checked = Packing(lengths=result.lengths, capacity=result.capacity, bins=result.bins,
                          packer=result.packer, meta=result.meta)  # fmt: skip
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"packer {label!r} returned an invalid Packing: {exc}") from None
    if checked.capacity != capacity:
        raise ValueError(
            f"packer {label!r} returned a packing for capacity {checked.capacity}, asked {capacity}"
        )
    if checked.lengths != tuple(arr.tolist()):
        raise ValueError(f"packer {label!r} returned a packing of other lengths than it was given")
    return checked
