"""CPU checks of the benchmark harness: a smoke run on a tiny random model writes valid records
(schema, speedups, roofline), the sweep writes its CSV, FLOP counting, and the CLI's exit
status 2 with one line on bad input."""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest

from gpu_runner.bench import (
    MODEL_SHAPES,
    BenchConfig,
    BenchRecord,
    real_token_flops,
    run_benchmark,
    stream_batches,
)
from gpu_runner.bench.cli import main


def test_real_token_flops_by_hand():
    cfg = SimpleNamespace(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                          num_hidden_layers=3, vocab_size=10)
    # per token per layer: 8*(2+2)*4 + 2*4*8 + 3*8*16 = 128 + 64 + 384 = 576
    linear = 2 * (3 + 1) * 3 * 576
    attention = 3 * 4 * 2 * 4 * (3 * 4 / 2 + 1)
    assert real_token_flops(cfg, [3, 1]) == pytest.approx(linear + attention + 2 * 2 * 8 * 10)


def test_stream_batches_cover_every_prompt_once():
    import numpy as np

    lengths = np.array([3, 1, 4, 1, 5, 9, 2])
    batches = stream_batches(lengths, 3, 50, seed=0)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert sorted(len(p) for b in batches for p in b) == sorted(lengths.tolist())


def test_smoke_run_writes_valid_records(tmp_path):
    out = tmp_path / "r.json"
    cfg = BenchConfig(models=("tiny",), batch=6, methods=("padded", "sorted", "paper", "best"), reps=1, warmup=0,
                      stream_batches=2, device="cpu", dtype="float32", out=str(out), sorted_chunk=2)
    records = run_benchmark(cfg)
    data = json.loads(out.read_text())
    assert len(data) == len(records) == 4 * 2 + 4
    keys = {"gpu", "model", "dataset", "batch", "mode", "method", "ms", "peak_extra_bytes", "roofline_fraction",
            "speedup_vs_padded"}
    for row in data:
        assert keys <= row.keys()
        assert row["error"] is None and row["ms"] > 0 and 0 < row["roofline_fraction"]
        BenchRecord(**row)  # round-trips through the validating dataclass
    padded = [r for r in data if r["method"] == "padded"]
    assert all(r["speedup_vs_padded"] is None for r in padded)
    assert all(r["speedup_vs_padded"] > 0 for r in data if r["method"] != "padded")
    assert {r["mode"] for r in data} == {"prefill", "ttft", "stream"}


def test_record_validates_itself():
    base = dict(gpu="cpu", model="tiny", dataset="mmlu", batch=1, real_tokens=3)
    with pytest.raises(ValueError, match="mode"):
        BenchRecord(**base, mode="decode", method="best", ms=1.0)
    with pytest.raises(ValueError, match="method"):
        BenchRecord(**base, mode="prefill", method="fast", ms=1.0)
    with pytest.raises(ValueError, match="error"):
        BenchRecord(**base, mode="prefill", method="best", ms=None)
    assert BenchRecord(**base, mode="prefill", method="best", ms=None, error="OOM").error == "OOM"


def test_sweep_smoke_writes_csv(tmp_path):
    out = tmp_path / "s.csv"
    assert main(["--smoke", "--sweep", "--combos", "pad/padded,ffd/dense,flat/graph", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["backend"] for r in rows] == ["padded", "dense", "graph"]
    for r in rows:
        assert float(r["measured_ms"]) > 0 and int(r["real_tokens"]) > 0 and int(r["num_bins"]) >= 1


@pytest.mark.parametrize(
    "argv,match",
    [(["--model", "gpt9"], "unknown model"), (["--methods", "magic", "--smoke"], "unknown method"),
     (["--smoke", "--dataset", "nope"], "no length list"), (["--smoke", "--sweep", "--combos", "ffd"], "packer/backend")],
)
def test_cli_bad_input_exits_2(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_model_shapes_are_the_issue_shapes():
    assert MODEL_SHAPES["llama-2-7b"]["hidden_size"] == 4096 and MODEL_SHAPES["llama-2-7b"]["num_hidden_layers"] == 32
    assert MODEL_SHAPES["sheared-llama-1.3b"]["intermediate_size"] == 5504
