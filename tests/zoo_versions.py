"""Model-zoo measurements per transformers version, and the allowlist they combine into
(no tests here).

One allowlist (gpu_runner/support_table.py) serves every transformers version the library
runs on (CI's and the GPU machine's differ), so a (model type, path) is proven only where it
was exact under every measured version that builds the type: `combine`. Each version's
measurement is committed as tests/data/zoo_measurements/transformers-<version>.json by
`python -m tests.zoo_matrix --write` run under that version; the pairs exact under some
versions and not others become `VERSION_DEPENDENT` (refused, and named so).
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent / "data" / "zoo_measurements"


@dataclass(frozen=True)
class Measurement:
    """What the zoo measured under one transformers `version`: `built` (library model types
    built tiny), `proven[path]` and `windowed[path]` (types exact on that path; windowed: with
    prompts longer than a tiny window), `unbuilt` (zoo types it knows but could not build:
    no evidence there, so none of them is proven under any version)."""

    version: str
    built: frozenset[str]
    proven: dict[str, frozenset[str]]
    windowed: dict[str, frozenset[str]]
    unbuilt: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for kind in (self.proven, self.windowed):
            for path, names in kind.items():
                if not names <= self.built:
                    raise ValueError(f"{self.version} / {path}: proven types that were not built: {sorted(names - self.built)}")

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "built": sorted(self.built),
                "unbuilt": sorted(self.unbuilt),
                "proven": {p: sorted(v) for p, v in self.proven.items()},
                "windowed": {p: sorted(v) for p, v in self.windowed.items()},
            },
            indent=1,
        ) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Measurement:
        data = json.loads(text)
        return cls(
            version=data["version"],
            built=frozenset(data["built"]),
            proven={p: frozenset(v) for p, v in data["proven"].items()},
            windowed={p: frozenset(v) for p, v in data["windowed"].items()},
            unbuilt=frozenset(data.get("unbuilt", ())),
        )


def path_for(version: str) -> pathlib.Path:
    return ROOT / f"transformers-{version}.json"


def save(measurement: Measurement) -> pathlib.Path:
    ROOT.mkdir(parents=True, exist_ok=True)
    target = path_for(measurement.version)
    target.write_text(measurement.to_json())
    return target


def load_all() -> list[Measurement]:
    """Every committed measurement, oldest version file name first."""
    return [Measurement.from_json(p.read_text()) for p in sorted(ROOT.glob("transformers-*.json"))]


@dataclass(frozen=True)
class Combined:
    """The allowlist: `proven` / `windowed` per path, `version_dependent[path]` /
    `windowed_version_dependent[path]` (exact under some measured versions, not all), and
    the `versions` it was measured under."""

    proven: dict[str, frozenset[str]]
    windowed: dict[str, frozenset[str]]
    version_dependent: dict[str, frozenset[str]]
    windowed_version_dependent: dict[str, frozenset[str]]
    versions: tuple[str, ...]


def combine(measurements: list[Measurement]) -> Combined:
    """A type is proven on a path where every measurement that built it found it exact and
    none knew it without building it."""
    if not measurements:
        raise ValueError("no measurements to combine")

    def merge(kind: str) -> tuple[dict[str, frozenset[str]], dict[str, frozenset[str]]]:
        paths = dict.fromkeys(p for m in measurements for p in getattr(m, kind))
        ok: dict[str, frozenset[str]] = {}
        mixed: dict[str, frozenset[str]] = {}
        for path in paths:
            names = {n for m in measurements for n in getattr(m, kind).get(path, ())}
            every = {
                n for n in names
                if all(n in getattr(m, kind).get(path, ()) for m in measurements if n in m.built)
                and not any(n in m.unbuilt for m in measurements)
            }  # fmt: skip
            ok[path] = frozenset(every)
            mixed[path] = frozenset(names - every)
        return ok, mixed

    proven, mixed = merge("proven")
    windowed, mixed_windowed = merge("windowed")
    windowed = {p: names & proven.get(p, frozenset()) for p, names in windowed.items()}
    return Combined(
        proven=proven,
        windowed=windowed,
        version_dependent=mixed,
        windowed_version_dependent=mixed_windowed,
        versions=tuple(sorted({m.version for m in measurements})),
    )
