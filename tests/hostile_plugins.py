"""Plug-in packers that break the `Packer` contract, for the hostile-input tests
(`--packers hostile_plugins:Name` on the command line, `make_packer` in the library)."""

from __future__ import annotations

from dataclasses import dataclass

import packers
from packers import Packing


def _ffd(lengths, capacity):
    return packers.make_packer("ffd").pack(lengths, capacity)


@dataclass(frozen=True)
class OtherCapacity:
    """Packs at twice the capacity it was asked for."""

    def pack(self, lengths, capacity):
        return _ffd(lengths, 2 * capacity)


@dataclass(frozen=True)
class OtherLengths:
    """Packs one prompt more than it was given."""

    def pack(self, lengths, capacity):
        return _ffd([*list(lengths), 1], capacity)


@dataclass(frozen=True)
class ReturnsList:
    def pack(self, lengths, capacity):
        return [list(range(len(lengths)))]


@dataclass(frozen=True)
class ReturnsNone:
    def pack(self, lengths, capacity):
        return None


@dataclass(frozen=True)
class Raises:
    def pack(self, lengths, capacity):
        raise RuntimeError("plug-in exploded")


@dataclass(frozen=True)
class AroundValidation:
    """A `Packing` made without `__post_init__`: one row over the capacity."""

    def pack(self, lengths, capacity):
        fake = object.__new__(Packing)
        fields = {
            "lengths": tuple(int(x) for x in lengths),
            "capacity": int(capacity),
            "bins": (tuple(range(len(lengths))),),
            "packer": "around",
            "meta": {"lower_bound": 1, "status": "optimal", "solve_time_s": 0.0},
        }
        for name, value in fields.items():
            object.__setattr__(fake, name, value)
        object.__setattr__(fake, "_loads", (int(capacity),))
        return fake


class BadInit:
    def __init__(self):
        raise RuntimeError("constructor exploded")

    def pack(self, lengths, capacity):  # pragma: no cover - never built
        raise AssertionError
