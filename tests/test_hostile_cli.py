"""Hostile input to the `simulate` command (issue 17): one stderr line, exit 2, no traceback,
no file left behind; ordinary runs still write their outputs whole."""

from __future__ import annotations

import os
import time

import pytest

from simulator.cli import main

QUICK = ["--num-prompts", "8", "--quiet", "--packers", "ffd"]  # --packers last: dropped when a case gives one


def _files(tmp_path):
    (tmp_path / "big.txt").write_text("5\n1e15\n")
    (tmp_path / "huge.txt").write_text(f"5\n{2**63}\n")
    (tmp_path / "bools.json").write_text("[true, 5]")
    (tmp_path / "secret.txt").write_text("root:hunter2:0:0\n")
    (tmp_path / "adir").mkdir()
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.txt")
    return tmp_path


HOSTILE = [
    (["--memory-budget", "1e400"], "over the limit"),
    (["--lengths-dist", "constant:value=1e15"], "over the limit"),
    (["--lengths-dist", "zipf:a=1.0000001"], "add max=N"),
    (["--lengths-dist", "pareto:alpha=1e-300"], "add max=N"),
    (["--lengths-dist", "lognormal:mean=1e300,sigma=1e200"], "float range"),
    (["--lengths-dist", "file:{tmp}/big.txt"], "line 2: a length of 1e+15 is over the limit"),
    (["--lengths-dist", "file:{tmp}/huge.txt"], "over the limit"),
    (["--lengths-dist", "file:{tmp}/bools.json"], "a boolean"),
    (["--lengths-dist", "file:{tmp}/secret.txt"], "line 1: not a number"),
    (["--lengths-dist", "file:{tmp}/adir"], "is a directory"),
    (["--capacity", "99999999999999999999"], "capacity 99999999999999999999 is over the limit"),
    (["--num-prompts", "10000000000"], "number of prompts 10000000000 is over the limit"),
    (["--batch-size", "10000000000"], "batch size 10000000000 is over the limit"),
    (["--packers", "hostile_plugins:OtherCapacity"], "returned a packing for capacity"),
    (["--packers", "hostile_plugins:ReturnsList"], "returned list, not a Packing"),
    (["--packers", "hostile_plugins:ReturnsNone"], "returned NoneType, not a Packing"),
    (["--packers", "hostile_plugins:Raises"], "failed: RuntimeError: plug-in exploded"),
    (["--packers", "hostile_plugins:AroundValidation"], "invalid Packing"),
    (["--packers", "hostile_plugin_broken:Packer"], "cannot load packer"),
    (["--packers", "hostile_plugins:BadInit"], "cannot build packer"),
    (["--plot", "{tmp}/adir"], "is a directory"),
    (["--plot", "/dev/full"], "not a regular file"),
    (["--csv", "/dev/full"], "not a regular file"),
    (["--csv", ""], "path is empty"),
    (["--plot", ""], "path is empty"),
    (["--csv", "{tmp}/missing/out.csv"], "does not exist"),
]
if hasattr(os, "mkfifo"):
    HOSTILE.append((["--lengths-dist", "file:{tmp}/pipe.txt"], "not a regular file (a FIFO)"))


@pytest.mark.parametrize("argv,needle", HOSTILE, ids=[" ".join(a) or "''" for a, _ in HOSTILE])
def test_hostile_input_exits_2_with_one_line_and_no_files(capsys, tmp_path, argv, needle):
    tmp = _files(tmp_path)
    before = sorted(p.name for p in tmp.rglob("*"))
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    defaults = QUICK if "--packers" not in argv else QUICK[:-2]
    rc = main([*defaults, *argv])  # the last of a repeated flag wins
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("simulate: error:") and "Traceback" not in err, err
    assert needle in err, err
    assert "hunter2" not in err
    assert sorted(p.name for p in tmp.rglob("*")) == before  # nothing written, no temp file left


def test_huge_capacity_runs_in_bounded_time(capsys):
    start = time.perf_counter()
    argv = ["--num-prompts", "64", "--quiet", "--packers", "best-fit,bfd,ffd,lpfhp", "--capacity", str(10**14)]
    rc = main(argv)
    assert rc == 0 and time.perf_counter() - start < 30
    assert "recommendation" in capsys.readouterr().out


def test_outputs_are_written_whole_with_the_exact_name(capsys, tmp_path):
    csv_path, png_path = tmp_path / "rows.csv", tmp_path / "figure"
    assert main([*QUICK, "--csv", str(csv_path), "--plot", str(png_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["figure", "rows.csv"]  # no .png added, no temp file
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert csv_path.read_text().splitlines()[0].startswith("packer,capacity")


def test_a_failing_write_leaves_no_file(capsys, tmp_path, monkeypatch):
    from simulator import report

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report.csv, "writer", fail)
    rc = main([*QUICK, "--csv", str(tmp_path / "rows.csv")])
    assert rc == 2 and "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
