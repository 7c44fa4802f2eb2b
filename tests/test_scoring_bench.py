"""benchmarks/scoring_bench.py --smoke: every set and method runs on a tiny CPU model, the
JSON names the machine, and the recorded numbers hold together (scores equal HFLM's)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "scoring_bench.py"


def _load():
    spec = importlib.util.spec_from_file_location("scoring_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_consistent_records(tmp_path):
    bench = _load()
    out = tmp_path / "scoring.json"
    assert bench.main(["--smoke", "--repeat", "2", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["gpu"].startswith("cpu") and data["lm_eval"]
    records = {(r["set"], r["method"]): r for r in data["records"]}
    methods = ("hflm-64", "ours-identical", "ours-tree", "ours-engine", "ours-auto")
    assert set(records) == {(s, m) for s in bench.SETS for m in methods}
    for (name, method), r in records.items():
        assert "error" not in r, r
        assert r["wall_s"] > 0 and r["max_abs_diff_vs_hflm64"] <= 1e-4
        if method != "hflm-64":
            assert len(r["wall_s_runs"]) == 2 and min(r["wall_s_runs"]) <= r["wall_s"] <= max(r["wall_s_runs"])
        if method != "hflm-64":
            assert r["max_abs_diff_vs_hflm_unpadded"] <= 1e-4
            assert r["path"] == {"ours-engine": "engine"}.get(method, "runner")  # auto: the runner on CPU
        if method == "ours-engine":
            assert r["share_contexts"] == "identical" and r["batch_tokens"] == 256 and r["engine_attention"] == "torch"
        if method == "hflm-64":
            assert r["hflm_padded_tokens"] >= r["fed_tokens"] and r["hflm_padded_over_real"] >= 1.0
            assert r["hflm_padded_vs_unpadded_max_abs_diff"] <= 1e-4
    mmlu, hellaswag = records["mmlu", "hflm-64"], records["hellaswag", "hflm-64"]
    assert mmlu["num_requests"] == 4 * 4 and mmlu["scored_positions"] == 4  # 4 choices, one position
    assert hellaswag["tree_fed_tokens"] < hellaswag["fed_tokens"]


def test_request_sets_have_their_shapes():
    import numpy as np

    bench = _load()
    lengths = np.array([5, 17, 3])
    mmlu = bench.make_requests("mmlu", lengths, 100)
    assert [len(c) for c, _ in mmlu] == [5] * 4 + [17] * 4 + [3] * 4 and {len(t) for _, t in mmlu} == {1}
    assert mmlu[0][0] == mmlu[3][0]  # the 4 choices share the context
    hellaswag = bench.make_requests("hellaswag", lengths, 100)
    assert all(10 <= len(t) <= 40 for _, t in hellaswag)
    assert len(bench.make_requests("mixed200", lengths, 100)) == 200
    with pytest.raises(ValueError, match="unknown set"):
        bench.make_requests("arc", lengths, 100)
