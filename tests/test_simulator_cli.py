"""The `simulate` command: JSON agrees with the library, CSV/plot outputs, one real
console-script run, and every bad-input path exits 2 with one stderr line."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import numpy as np
import pytest

from simulator import simulate
from simulator.cli import main
from simulator.run import JSON_RESULT_FIELDS


def _run(capsys, argv):
    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


ARGS = ["--lengths-dist", "lognormal:mean=150,sigma=0.8", "--batch-size", "32", "--num-prompts", "100",
        "--model", "sheared-llama-1.3b", "--packers", "ffd,next-fit", "--seed", "3"]  # fmt: skip


def test_json_last_line_agrees_with_library(capsys):
    rc, out, err = _run(capsys, [*ARGS, "--json"])
    assert rc == 0 and err == ""
    doc = json.loads(out.strip().splitlines()[-1])
    lib = simulate(
        lengths_dist="lognormal:mean=150,sigma=0.8", batch_size=32, num_prompts=100, model="sheared-llama-1.3b",
        packers=["ffd", "next-fit"], seed=3,
    )  # fmt: skip
    assert doc == json.loads(json.dumps(lib.to_json()))
    assert doc["config"]["num_batches"] == 4 and doc["config"]["num_prompts"] == 100
    pairs = {(r["packer"], r["attention"]) for r in doc["results"]}
    assert ("pad", "padded") in pairs and ("ffd", "dense") in pairs and ("flat", "varlen") in pairs
    assert ("next-fit", "varlen") not in pairs  # varlen pads nothing: reported once, for flat
    for r in doc["results"]:
        assert tuple(r) == JSON_RESULT_FIELDS
    base = next(r for r in doc["results"] if (r["packer"], r["attention"]) == ("pad", "padded"))
    assert base["speedup_vs_padded"] == 1.0 and base["num_bins"] == 100
    ffd = next(r for r in doc["results"] if (r["packer"], r["attention"]) == ("ffd", "dense"))
    assert ffd["speedup_vs_padded"] == pytest.approx(base["est_time_s"] / ffd["est_time_s"])
    assert ffd["useful_flops"] == pytest.approx(base["useful_flops"])
    assert "recommendation:" in out


def test_table_csv_and_plot(capsys, tmp_path):
    csv_path, png_path = tmp_path / "r.csv", tmp_path / "r.png"
    rc, out, err = _run(capsys, [*ARGS, "--csv", str(csv_path), "--plot", str(png_path)])
    assert rc == 0
    assert "packer" in out and "speedup" in out and "recommendation:" in out.splitlines()[-1]
    rows = list(csv.DictReader(csv_path.open()))
    assert {r["packer"] for r in rows} == {"pad", "ffd", "next-fit", "flat"}
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quiet_prints_only_recommendation_and_json(capsys):
    rc, out, err = _run(capsys, [*ARGS, "--quiet", "--json"])
    lines = out.strip().splitlines()
    assert rc == 0 and err == "" and len(lines) == 2
    assert lines[0].startswith("recommendation:")


def test_packer_params_reach_the_packer(capsys):
    rc, out, err = _run(capsys, [*ARGS, "--packers", "lpfhp", "--packer-param", "lpfhp.max_per_bin=2", "--json"])
    assert rc == 0, err
    doc = json.loads(out.strip().splitlines()[-1])
    assert doc["config"]["packer_params"] == {"lpfhp": {"max_per_bin": 2}}
    capped = next(r for r in doc["results"] if (r["packer"], r["attention"]) == ("lpfhp", "dense"))
    assert capped["num_bins"] >= 16 + 16 + 16 + 2  # batches of 32, 32, 32, 4 prompts, at most 2 per row
    rc, out, _ = _run(capsys, [*ARGS, "--packers", "lpfhp", "--json"])
    free = next(r for r in json.loads(out.strip().splitlines()[-1])["results"] if r["packer"] == "lpfhp")
    assert free["num_bins"] < capped["num_bins"]


def test_file_input_matches_explicit_lengths(capsys, tmp_path):
    lengths = [5, 17, 300, 42, 42, 9, 120]
    path = tmp_path / "l.json"
    path.write_text(json.dumps(lengths))
    rc, out, _ = _run(capsys, ["--lengths-dist", f"file:{path}", "--num-prompts", "50", "--batch-size", "8", "--json"])
    doc = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and doc["config"]["num_prompts"] == 50
    base = next(r for r in doc["results"] if r["packer"] == "pad")
    assert base["capacity"] <= 300  # every drawn length comes from the file


def test_console_script_subprocess():
    exe = shutil.which("simulate")
    assert exe, "the simulate console script is not installed (pip install -e .)"
    proc = subprocess.run(
        [exe, "--lengths-dist", "mmlu", "--batch-size", "16", "--num-prompts", "64", "--json", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["config"]["lengths_dist"] == "mmlu" and doc["config"]["batch_size"] == 16
    bad = subprocess.run([exe, "--gpu", "tpu-v9"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def _files(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "words.txt").write_text("12\nabc\n")
    (tmp_path / "neg.csv").write_text("length\n5\n-3\n")
    (tmp_path / "frac.json").write_text("[1, 2.5]")
    (tmp_path / "zero.npy").write_bytes(b"")
    np.save(tmp_path / "two_d.npy", np.ones((2, 2), dtype=np.int64))
    (tmp_path / "broken.json").write_text("[1, 2")
    return tmp_path


BAD = [
    (["--lengths-dist", "nosuchdist"], "unknown distribution"),
    (["--lengths-dist", "lognormal:mean=abc,sigma=1"], "is not a number"),
    (["--lengths-dist", "lognormal:mean=100"], "needs sigma"),
    (["--lengths-dist", "lognormal:mean=100,sigma=1,foo=2"], "takes"),
    (["--lengths-dist", "uniform:low=10,high=2"], "low <= high"),
    (["--lengths-dist", "0.5*mmlu + 0*alpaca"], "weights must be > 0"),
    (["--lengths-dist", "file:{tmp}/missing.txt"], "does not exist"),
    (["--lengths-dist", "file:{tmp}/empty.txt"], "holds no lengths"),
    (["--lengths-dist", "file:{tmp}/words.txt"], "line 2"),
    (["--lengths-dist", "file:{tmp}/neg.csv"], "positive"),
    (["--lengths-dist", "file:{tmp}/frac.json"], "not an integer"),
    (["--lengths-dist", "file:{tmp}/zero.npy"], "cannot read"),
    (["--lengths-dist", "file:{tmp}/two_d.npy"], "1-D"),
    (["--lengths-dist", "file:{tmp}/broken.json"], "cannot read"),
    (["--model", "gpt-17"], "unknown model"),
    (["--gpu", "tpu"], "unknown GPU"),
    (["--packers", "magic"], "unknown packer"),
    (["--packers", ","], "empty"),
    (["--attention", "paged"], "unknown attention"),
    (["--batch-size", "0"], "batch size"),
    (["--batch-size", "-4"], "batch size"),
    (["--batch-size", "many"], "invalid int"),
    (["--num-prompts", "0"], "number of prompts"),
    (["--capacity", "huge"], "capacity"),
    (["--capacity", "16", "--lengths-dist", "constant:value=20"], "over the capacity"),
    (["--memory-budget", "lots"], "bad size"),
    (["--csv", "{tmp}/no/such/dir/out.csv"], "does not exist"),
    (["--no-such-flag"], "unrecognized"),
    (["--packer-param", "ilp.time_limit_s"], "NAME.KEY=VALUE"),
    (["--packers", "ffd", "--packer-param", "ilp.time_limit_s=1"], "not in the packers run"),
    (["--packers", "ffd", "--packer-param", "ffd.bogus=1"], "bad parameters for packer"),
]


@pytest.mark.parametrize("argv,needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, argv, needle):
    tmp = _files(tmp_path)
    argv = [a.replace("{tmp}", str(tmp)) for a in argv]
    rc, out, err = _run(capsys, [*argv, "--num-prompts", "8"] if "--num-prompts" not in argv else argv)
    assert rc == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("simulate: error:"), err
    assert "Traceback" not in err
    assert needle in err, err
