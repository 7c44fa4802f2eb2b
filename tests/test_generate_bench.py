"""CPU smoke run of the end-to-end generation benchmark (`prepack-bench --scenarios e2e`,
through its wrapper benchmarks/generate_bench.py): one JSON with records per workload and
method, speedups, the decode-step probe and first-token agreement; exit status 2 with one
line on bad input."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO_ROOT


def _main():
    spec = importlib.util.spec_from_file_location("generate_bench", REPO_ROOT / "benchmarks" / "generate_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_smoke_run_writes_one_json(tmp_path):
    out = tmp_path / "g.json"
    argv = ["--smoke", "--workloads", "mmlu-32,azure", "--methods", "ours,hf-padded", "--azure-requests", "3",
            "--batch", "5", "--policy", "batch-refill:min_free=2", "--token-budget", "2048", "--out", str(out)]
    assert _main()(argv) == 0
    doc = json.loads(out.read_text())
    assert doc["gpu"] == "cpu" and doc["copy_bandwidth_bytes_per_s"] > 0
    recs = {(r["workload"], r["method"]): r for r in doc["records"]}
    assert set(recs) == {("mmlu-32", "ours"), ("mmlu-32", "hf-padded"), ("azure", "ours"), ("azure", "hf-padded")}
    for r in recs.values():
        assert r["error"] is None and r["completed"] == r["requests"] and r["tokens_per_s"] > 0
    assert recs[("mmlu-32", "ours")]["requests"] == 5 and recs[("azure", "ours")]["requests"] == 3
    assert recs[("mmlu-32", "ours")]["new_tokens"] == recs[("mmlu-32", "hf-padded")]["new_tokens"] == 5 * 1
    assert set(recs[("azure", "ours")]["speedup_vs"]) == {"hf-padded"}
    assert recs[("azure", "ours")]["ttft_s"]["p50"] > 0
    assert recs[("azure", "ours")]["notes"]["policy"] == {"min_free": 2, "token_budget": 2048, "packer": "ffd",
                                                          "name": "batch-refill"}
    step = doc["decode_step"]
    assert step["batch"] == 5 and step["step_ms"] > 0 and step["read_once_ms"] > 0 and step["weight_bytes"] > 0
    agreement = doc["first_token_agreement"]
    assert agreement["prompts"] == 8 and agreement["hf_batch"] == 4 and not agreement["float32_reference"]
    assert agreement["ours_vs_unpadded"] == agreement["hf_padded_vs_unpadded"] == 1.0  # float32: exact
    assert agreement["ours_gap_to_unpadded_top"] == {"disagreements": 0, "median_gap": None, "max_gap": None}


@pytest.mark.parametrize("argv,match", [(["--smoke", "--workloads", "nope"], "unknown workload"),
                                        (["--smoke", "--methods", "magic"], "unknown method"),
                                        (["--smoke", "--policy", "batch-refill:min_free=x"], "--policy takes"),
                                        (["--smoke", "--policy", "batch-refill:slots=2"], "bad parameters"),
                                        (["--model", "gpt9"], "unknown model"),
                                        (["--model", "tiny,llama-2-7b"], "one --model"),
                                        (["--batch", "x"], "invalid int value")])
def test_bad_input_exits_2_with_one_line(argv, match, capsys):
    assert _main()(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0]


def test_cli_runs_e2e_alone_and_names_the_generate_choices(capsys):
    from gpu_runner.bench import cli, generate

    assert (cli.GENERATE_METHODS, cli.WORKLOADS) == (generate.GENERATE_METHODS, generate.WORKLOADS)
    assert cli.main(["--scenarios", "a,e2e", "--smoke"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs alone" in err[0]
