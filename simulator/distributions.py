"""Prompt-length distributions: built-in real profiles, parametric families, mixtures and
files, all parsed from one SPEC string by `parse_distribution`.

SPEC grammar:
  NAME                       a built-in profile (simulator/data/NAME.txt): mmlu, wikitext256,
                             alpaca, samsum, azure_conv, azure_conv_output (output lengths
                             of the azure_conv trace, line-paired); sampled with replacement
  file:PATH                  lengths from a .txt (whitespace-separated), .csv (one column, or
                             the column named length/lengths/num_tokens/tokens), .json (a
                             list, or {"lengths": [...]}) or .npy file; sampled with replacement
  FAMILY:k=v,k=v             a parametric family (see FAMILIES), e.g. lognormal:mean=200,sigma=1.0
  W*SPEC + W*SPEC ...        a mixture; weights are normalized, e.g.
                             0.8*mmlu + 0.2*constant:value=2000
Parametric draws are rounded to integers and clipped to [1, max] (max = the optional `max`
parameter every family takes; unbounded when absent, and then a draw past the toolkit's
longest length, `packers.limits.MAX_LENGTH_TOKENS`, is a `ValueError` asking for `max=`).
Every parse or sampling error is one-line `ValueError`; file errors name the file and line
or entry, never its content.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np

from packers.limits import MAX_LENGTH_TOKENS, limit_error

__all__ = [
    "FAMILIES",
    "PROFILES",
    "Distribution",
    "Empirical",
    "Mixture",
    "Parametric",
    "load_lengths_file",
    "load_profile",
    "parse_distribution",
]

PROFILES = ("mmlu", "wikitext256", "alpaca", "samsum", "azure_conv", "azure_conv_output")


class Distribution(Protocol):
    """Draws prompt lengths: `sample(n, rng)` returns an int64 array of n positive ints."""

    spec: str

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray: ...


# -- parametric families: name -> (required params, optional defaults, checks, sampler) ----
Sampler = Callable[[np.random.Generator, int, dict[str, float]], np.ndarray]


@dataclass(frozen=True)
class Family:
    required: tuple[str, ...]
    optional: dict[str, float | None]
    check: Callable[[dict[str, float]], str | None]  # returns an error message or None
    sampler: Sampler
    doc: str


def _lognormal(rng: np.random.Generator, n: int, p: dict[str, float]) -> np.ndarray:
    # `mean` is the arithmetic mean of the lengths: mu = ln(mean) - sigma^2 / 2.
    return rng.lognormal(math.log(p["mean"]) - p["sigma"] ** 2 / 2, p["sigma"], n)


FAMILIES: dict[str, Family] = {
    "lognormal": Family(
        ("mean", "sigma"), {}, lambda p: None if p["mean"] > 0 and p["sigma"] >= 0 else "needs mean > 0, sigma >= 0",
        _lognormal, "mean = arithmetic mean of lengths, sigma = std of log-length",
    ),
    "normal": Family(
        ("mean", "std"), {}, lambda p: None if p["std"] >= 0 else "needs std >= 0",
        lambda rng, n, p: rng.normal(p["mean"], p["std"], n), "mean, std",
    ),
    "uniform": Family(
        ("low", "high"), {}, lambda p: None if 1 <= p["low"] <= p["high"] else "needs 1 <= low <= high",
        lambda rng, n, p: rng.integers(int(p["low"]), int(p["high"]) + 1, n), "integers in [low, high]",
    ),
    "exponential": Family(
        ("mean",), {}, lambda p: None if p["mean"] > 0 else "needs mean > 0",
        lambda rng, n, p: rng.exponential(p["mean"], n), "mean",
    ),
    "pareto": Family(
        ("alpha",), {"min": 1.0}, lambda p: None if p["alpha"] > 0 and p["min"] >= 1 else "needs alpha > 0, min >= 1",
        lambda rng, n, p: p["min"] * (1.0 + rng.pareto(p["alpha"], n)), "alpha (tail index), min (scale, default 1)",
    ),
    "zipf": Family(
        ("a",), {"scale": 1.0}, lambda p: None if p["a"] > 1 and p["scale"] > 0 else "needs a > 1, scale > 0",
        lambda rng, n, p: p["scale"] * rng.zipf(p["a"], n), "a > 1, scale (default 1): scale * Zipf(a)",
    ),
    "constant": Family(
        ("value",), {}, lambda p: None if p["value"] >= 1 else "needs value >= 1",
        lambda rng, n, p: np.full(n, p["value"]), "value",
    ),
}


@dataclass(frozen=True)
class Parametric:
    """A parametric family with its parameters; draws rounded and clipped to [1, max]."""

    spec: str
    family: str
    params: tuple[tuple[str, float], ...]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        p = dict(self.params)
        try:
            with np.errstate(all="ignore"):
                raw = np.asarray(FAMILIES[self.family].sampler(rng, n, p), dtype=np.float64)
        except (OverflowError, ValueError) as exc:  # e.g. sigma**2 past the float range
            why = "a parameter is out of the float range" if isinstance(exc, OverflowError) else str(exc)
            raise ValueError(f"bad distribution {self.spec!r}: cannot draw from it: {why}") from None
        if np.isnan(raw).any():
            raise ValueError(f"bad distribution {self.spec!r}: its parameters give undefined (NaN) draws")
        hi = p.get("max")
        if hi is None and (raw > MAX_LENGTH_TOKENS + 0.5).any():
            err = limit_error("a draw of", float(raw.max()), MAX_LENGTH_TOKENS, "tokens")
            raise ValueError(f"bad distribution {self.spec!r}: {err}; add max=N to clip the draws") from None
        out = np.clip(np.rint(raw), 1, hi if hi is not None else MAX_LENGTH_TOKENS)
        return out.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Empirical:
    """Resamples a list of real lengths with replacement."""

    spec: str
    lengths: np.ndarray

    def __post_init__(self) -> None:
        if self.lengths.size == 0:
            raise ValueError(f"{self.spec}: no lengths")

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return self.lengths[rng.integers(0, self.lengths.size, n)]


@dataclass(frozen=True)
class Mixture:
    """Each draw picks a component with probability weight / sum(weights)."""

    spec: str
    components: tuple[tuple[float, Distribution], ...]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        weights = np.array([w for w, _ in self.components])
        which = rng.choice(weights.size, size=n, p=weights / weights.sum())
        out = np.empty(n, dtype=np.int64)
        for i, (_, dist) in enumerate(self.components):
            mask = which == i
            out[mask] = dist.sample(int(mask.sum()), rng)
        return out


# -- files -----------------------------------------------------------------------------------
def _to_lengths(values: Sequence[object], where: Callable[[int], str]) -> np.ndarray:
    """Positive integer lengths; errors name the place and the kind of problem, never the
    value itself (the file may be one the user should not be shown)."""
    out = np.empty(len(values), dtype=np.int64)
    for i, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{where(i)}: a boolean, not a length")
        if isinstance(v, int):
            x: float | int = v
        elif isinstance(v, str) and v.strip().lstrip("+-").isdigit():
            x = int(v) if len(v) < 400 else math.inf  # exact; past 400 digits, past any limit
        else:
            try:
                x = float(v)  # type: ignore[arg-type]
            except (TypeError, ValueError, OverflowError):
                raise ValueError(f"{where(i)}: not a number") from None
            if math.isnan(x) or (math.isfinite(x) and not x.is_integer()):
                raise ValueError(f"{where(i)}: not an integer length")
        if x < 1:
            raise ValueError(f"{where(i)}: a length must be a positive integer (this one is below 1)")
        if x > MAX_LENGTH_TOKENS:
            raise ValueError(f"{where(i)}: {limit_error('a length of', x, MAX_LENGTH_TOKENS, 'tokens')}")
        out[i] = int(x)
    return out


def _check_regular_file(path: Path) -> None:
    """`ValueError` saying what `path` is when it is not a readable regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ValueError(f"length file {str(path)!r} does not exist") from None
    except OSError as exc:
        raise ValueError(f"cannot read length file {str(path)!r}: {exc.strerror}") from None
    if stat.S_ISDIR(mode):
        raise ValueError(f"length file {str(path)!r} is a directory")
    if not stat.S_ISREG(mode):
        kinds = (
            (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"),
        )  # fmt: skip
        kind = next((name for test, name in kinds if test(mode)), "special")
        raise ValueError(f"length file {str(path)!r} is not a regular file ({kind})")


_CSV_COLUMNS = ("length", "lengths", "num_tokens", "tokens", "prompt_tokens", "contexttokens")


def load_lengths_file(path: str | Path) -> np.ndarray:
    """Read prompt lengths (positive ints) from .txt/.csv/.json/.npy (UTF-8, a BOM allowed);
    `ValueError` naming the file (and line or entry), never its content, for a missing,
    non-regular (directory, FIFO, device), empty, malformed, non-positive or over-limit input."""
    path = Path(path)
    _check_regular_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            try:
                arr = np.load(path, allow_pickle=False)
            except (ValueError, EOFError):
                raise ValueError(f"cannot read length file {str(path)!r}: not a .npy array") from None
            if arr.ndim != 1:
                raise ValueError(f"{path}: expected a 1-D array, got shape {arr.shape}")
            values: list[object] = arr.tolist()
            where = lambda i: f"{path}: entry {i}"  # noqa: E731
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            if isinstance(data, dict):
                data = data.get("lengths")
            if not isinstance(data, list):
                raise ValueError(f"{path}: expected a JSON list of lengths or {{\"lengths\": [...]}}")
            values, where = data, (lambda i: f"{path}: entry {i}")
        elif suffix == ".csv":
            rows = [r for r in csv.reader(path.read_text(encoding="utf-8-sig").splitlines()) if r]
            col, start = 0, 0
            if rows and any(c.strip().lower() in _CSV_COLUMNS for c in rows[0]):
                header = [c.strip().lower() for c in rows[0]]
                col = next(i for i, c in enumerate(header) if c in _CSV_COLUMNS)
                start = 1
            elif rows and len(rows[0]) > 1:
                raise ValueError(f"{path}: several columns and none named one of {', '.join(_CSV_COLUMNS)}")
            values = [r[col] if col < len(r) else "" for r in rows[start:]]
            where = lambda i: f"{path}: line {i + start + 1}"  # noqa: E731
        else:  # .txt and anything else: whitespace-separated numbers, one per line usually
            lines = path.read_text(encoding="utf-8-sig").splitlines()
            pairs = [(ln + 1, tok) for ln, line in enumerate(lines) for tok in line.split()]
            values = [tok for _, tok in pairs]
            where = lambda i: f"{path}: line {pairs[i][0]}"  # noqa: E731
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ValueError(f"cannot read length file {str(path)!r}: {why}") from None
    except UnicodeDecodeError:
        raise ValueError(f"cannot read length file {str(path)!r}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:  # its message gives a position, not the content
        why = f"not valid JSON ({exc.msg} at line {exc.lineno})"
        raise ValueError(f"cannot read length file {str(path)!r}: {why}") from None
    if not values:
        raise ValueError(f"length file {str(path)!r} holds no lengths")
    return _to_lengths(values, where)


def load_profile(name: str) -> np.ndarray:
    """The built-in real length list `name` (one of PROFILES)."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; built-in profiles: {', '.join(PROFILES)}")
    text = resources.files("simulator").joinpath("data", f"{name}.txt").read_text()
    return np.array(text.split(), dtype=np.int64)


# -- parsing -------------------------------------------------------------------------------
_MIX_SPLIT = re.compile(r"\+(?=\s*[0-9.]+(?:[eE][-+]?\d+)?\s*\*)")
_WEIGHTED = re.compile(r"^\s*([0-9.]+(?:[eE][-+]?\d+)?)\s*\*\s*(.+?)\s*$")
_HELP = "a built-in profile (" + ", ".join(PROFILES) + "), file:PATH, FAMILY:k=v,... (" + ", ".join(FAMILIES) + ")"


def _parse_parametric(spec: str, family: str, body: str) -> Parametric:
    fam = FAMILIES[family]
    params: dict[str, float] = {}
    allowed = (*fam.required, *fam.optional, "max")
    for item in filter(None, (s.strip() for s in body.split(","))):
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq:
            raise ValueError(f"bad distribution {spec!r}: expected key=value, got {item!r}")
        if key not in allowed:
            raise ValueError(f"bad distribution {spec!r}: {family} takes {', '.join(allowed)}, not {key!r}")
        try:
            params[key] = float(value)
        except ValueError:
            raise ValueError(f"bad distribution {spec!r}: {key}={value.strip()!r} is not a number") from None
        if not math.isfinite(params[key]):
            raise ValueError(f"bad distribution {spec!r}: {key} must be finite")
        if key in ("value", "low", "high", "min", "max") and params[key] > MAX_LENGTH_TOKENS:
            err = limit_error(f"{key} =", params[key], MAX_LENGTH_TOKENS, "tokens")
            raise ValueError(f"bad distribution {spec!r}: {err}")
    missing = [k for k in fam.required if k not in params]
    if missing:
        raise ValueError(f"bad distribution {spec!r}: {family} needs {', '.join(missing)} ({fam.doc})")
    for key, default in fam.optional.items():
        params.setdefault(key, default)  # type: ignore[arg-type]
    problem = fam.check(params)
    if problem is None and params.get("max") is not None and params["max"] < 1:
        problem = "needs max >= 1"
    if problem:
        raise ValueError(f"bad distribution {spec!r}: {family} {problem}")
    return Parametric(spec, family, tuple(sorted(params.items())))


def parse_distribution(spec: str) -> Distribution:
    """Parse a SPEC (see the module docstring) into a `Distribution`; `ValueError` otherwise."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty distribution spec; use {_HELP}")
    spec = spec.strip()
    parts = _MIX_SPLIT.split(spec)
    if len(parts) > 1 or _WEIGHTED.match(spec):
        components = []
        for part in parts:
            m = _WEIGHTED.match(part)
            if not m:
                raise ValueError(f"bad mixture {spec!r}: each component must be WEIGHT*SPEC, got {part.strip()!r}")
            weight = float(m.group(1))
            if not 0 < weight < math.inf:
                raise ValueError(f"bad mixture {spec!r}: weights must be > 0 and finite, got {m.group(1)}")
            components.append((weight, parse_distribution(m.group(2))))
        return Mixture(spec, tuple(components))
    if spec.startswith("file:"):
        return Empirical(spec, load_lengths_file(spec[len("file:") :]))
    name, colon, body = spec.partition(":")
    name = name.strip().lower()
    if name in FAMILIES:
        return _parse_parametric(spec, name, body)
    if name in PROFILES and not colon:
        return Empirical(spec, load_profile(name))
    raise ValueError(f"unknown distribution {spec!r}; use {_HELP}")
