"""The one registry of packers and the `make_packer` factory.

Built-in packers register with `@register("name")`. Third-party packers plug in without
editing this package, either through the entry-point group `prepacking.packers`
(`name = "module:Class"`) or by passing a dotted `"module:Class"` to `make_packer`.
"""

from __future__ import annotations

import dataclasses
import importlib
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from packers.base import Packer

__all__ = ["PACKERS", "ENTRY_POINT_GROUP", "register", "make_packer", "available_packers"]

ENTRY_POINT_GROUP = "prepacking.packers"
PACKERS: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator: add a packer class to `PACKERS` under `name` and set `cls.name`."""

    def decorate(cls: T) -> T:
        if name in PACKERS and PACKERS[name] is not cls:
            raise ValueError(f"packer name {name!r} is already registered by {PACKERS[name].__qualname__}")
        cls.name = name  # type: ignore[attr-defined]
        PACKERS[name] = cls
        return cls

    return decorate


def _entry_point_classes() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_packers() -> list[str]:
    """Registered names plus those advertised through the entry-point group, sorted."""
    return sorted(set(PACKERS) | set(_entry_point_classes()))


def _load_dotted(path: str) -> type:
    module_name, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # a plug-in module may fail to import in any way
        raise ValueError(f"cannot load packer {path!r}: {type(exc).__name__}: {exc}") from None
    return obj


def make_packer(name: str, **params: Any) -> Packer:
    """Build a packer by registry name, entry-point name or dotted `module:Class`.

    Raises `ValueError` for an unknown name (listing the valid names), a plug-in that fails
    to import or to construct (whatever it raises), a loaded object that has no `pack`
    method, and hyperparameters the packer does not take (listing the ones it does).
    """
    if not isinstance(name, str):
        raise ValueError(f"packer name must be a string, got {name!r}")
    if name in PACKERS:
        cls = PACKERS[name]
    elif ":" in name:
        cls = _load_dotted(name)
    else:
        eps = _entry_point_classes()
        if name not in eps:
            raise ValueError(
                f"unknown packer {name!r}; valid names: {', '.join(available_packers())} "
                "(or a dotted 'module:Class')"
            )
        try:
            cls = eps[name].load()
        except Exception as exc:  # a plug-in module may fail to import in any way
            raise ValueError(
                f"cannot load packer {name!r} (entry point {eps[name].value}): {type(exc).__name__}: {exc}"
            ) from None
    try:
        packer = cls(**params)
    except TypeError as exc:
        accepted = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else []
        raise ValueError(f"bad parameters for packer {name!r}: {exc}; it takes {accepted or 'no parameters'}") from None
    except ValueError:
        raise
    except Exception as exc:
        raise ValueError(f"cannot build packer {name!r}: {type(exc).__name__}: {exc}") from None
    if not callable(getattr(packer, "pack", None)):
        raise ValueError(f"{name!r} does not give a packer: {type(packer).__qualname__} has no pack() method")
    return packer
