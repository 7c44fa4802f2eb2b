"""Combining the model zoo's per-version measurements into one allowlist (tests/zoo_versions.py)."""

from __future__ import annotations

import pytest

from tests.zoo_versions import Measurement, combine, load_all


def _m(version, built, dense, windowed=(), unbuilt=()):
    return Measurement(version, frozenset(built), {"dense": frozenset(dense)},
                       {"dense": frozenset(windowed)}, frozenset(unbuilt))


def test_proven_only_where_every_version_that_builds_it_agrees():
    old = _m("5.17.0", {"a", "b", "c"}, {"a", "c"}, windowed={"a", "c"})
    new = _m("5.25.0", {"a", "b", "d", "e"}, {"a", "b", "d", "e"}, windowed={"a", "d"}, unbuilt={"c"})
    table = combine([old, new])
    # a: both; b: only new (old built it, not exact); c: new knows it but could not build it;
    # d, e: new only (old lacks them)
    assert table.proven["dense"] == {"a", "d", "e"}
    assert table.version_dependent["dense"] == {"b", "c"}
    assert table.windowed["dense"] == {"a", "d"}
    assert table.versions == ("5.17.0", "5.25.0")


def test_measurement_round_trips_and_validates():
    m = _m("5.25.0", {"a"}, {"a"})
    assert Measurement.from_json(m.to_json()) == m
    with pytest.raises(ValueError, match="not built"):
        _m("5.25.0", {"a"}, {"a", "z"})


def test_committed_measurements_give_the_committed_table():
    from gpu_runner import support_table

    table = combine(load_all())
    assert table.proven == dict(support_table.PROVEN)
    assert table.windowed == dict(support_table.WINDOWED)
    assert table.version_dependent == dict(support_table.VERSION_DEPENDENT)
    assert table.versions == support_table.MEASURED_VERSIONS
