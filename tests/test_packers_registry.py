"""The registry and factory: names, helpful errors, third-party packers without our edits."""

from __future__ import annotations

import textwrap
from importlib.metadata import EntryPoint

import pytest

import packers
from packers import registry

THIRD_PARTY = textwrap.dedent(
    '''
    from dataclasses import dataclass
    from packers import BasePacker

    @dataclass(frozen=True)
    class Halves(BasePacker):
        """Two prompts per row in caller order (when they fit), else one."""
        name = "halves"
        unused: int = 0

        def _assign(self, lengths, capacity):
            bins, i = [], 0
            while i < len(lengths):
                if i + 1 < len(lengths) and lengths[i] + lengths[i + 1] <= capacity:
                    bins.append([i, i + 1]); i += 2
                else:
                    bins.append([i]); i += 1
            return bins, {}

    def not_a_packer():
        return 1
    '''
)


@pytest.fixture
def third_party(tmp_path, monkeypatch):
    (tmp_path / "acme_packers.py").write_text(THIRD_PARTY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "acme_packers"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        packers.make_packer("best-fit-decreasing-ish")
    message = str(info.value)
    for name in ("ffd", "bfd", "ilp", "pad", "next-fit"):
        assert name in message


def test_non_string_name():
    with pytest.raises(ValueError, match="string"):
        packers.make_packer(3)


def test_bad_hyperparameter_lists_the_accepted_ones():
    with pytest.raises(ValueError) as info:
        packers.make_packer("ilp", time_limit=3)
    assert "time_limit_s" in str(info.value)
    with pytest.raises(ValueError, match="no parameters"):
        packers.make_packer("ffd", capacity=4)


def test_dotted_path(third_party):
    p = packers.make_packer(f"{third_party}:Halves").pack([3, 4, 9, 1], 10)
    assert p.bins == ((0, 1), (2, 3)) and p.packer == "halves"
    with pytest.raises(ValueError, match="no pack"):
        packers.make_packer(f"{third_party}:not_a_packer")
    with pytest.raises(ValueError, match="cannot load"):
        packers.make_packer(f"{third_party}:Missing")
    with pytest.raises(ValueError, match="cannot load"):
        packers.make_packer("no_such_module_xyz:Thing")


def test_entry_point_group(third_party, monkeypatch):
    ep = EntryPoint(name="halves", value=f"{third_party}:Halves", group=packers.ENTRY_POINT_GROUP)

    def fake_entry_points(*, group):
        return [ep] if group == packers.ENTRY_POINT_GROUP else []

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    assert "halves" in packers.available_packers()
    assert packers.make_packer("halves").pack([5, 5], 10).bins == ((0, 1),)


def test_register_decorator_and_duplicate_names(monkeypatch):
    monkeypatch.setattr(registry, "PACKERS", dict(registry.PACKERS))

    @registry.register("one-row")
    class OneRow(packers.BasePacker):
        def _assign(self, lengths, capacity):
            return [list(range(len(lengths)))], {}

    assert registry.PACKERS["one-row"] is OneRow and OneRow.name == "one-row"
    with pytest.raises(ValueError, match="already registered"):
        registry.register("ffd")(OneRow)
