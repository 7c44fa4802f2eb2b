"""The real distributed path on CPU: 2 processes, gloo, a tiny random Llama (fp32).

One spawn (process start-up dominates) runs every case on both ranks; the assertions run
here in the parent: every strategy's gathered logits equal a single-process prefill in the
caller's order, every prompt ran on exactly one rank, gather to one rank, KV gathering, an
empty rank, the PrefillEngine executor, and ranks that disagree on the prompts."""

from __future__ import annotations

import pytest
import torch
from test_runner_support import FP32_TOL, random_lengths, random_prompts, tiny_model

N_PROMPTS = 13
STRATEGY_NAMES = ("padded-rr", "packed-rr", "cost-balanced", "prompt-balanced")


def _worker(bench_out: str) -> dict:
    """Runs on each rank inside the process group; returns what the parent checks."""
    import torch.distributed as dist

    import gpu_runner
    from gpu_runner.distributed import EngineExecutor, distributed_prefill

    rank = dist.get_rank()
    model = tiny_model("llama")
    prompts = random_prompts(random_lengths(N_PROMPTS, longest=40, seed=5), seed=5)
    out: dict = {
        "rank": rank,
        "reference": gpu_runner.prefill(model, prompts, backend="dense", return_kv=True),
    }
    out["reference_kv"] = [out["reference"].kv[i] for i in range(N_PROMPTS)]
    out["reference"] = out["reference"].logits
    for strategy in STRATEGY_NAMES:
        res = distributed_prefill(model, prompts, strategy, time_ranks=True)
        out[strategy] = dict(logits=res.logits, local=res.local_indices, bins=res.assignment.rank_bins,
                             busy=res.busy_ms, num_bins=res.packing.num_bins, phases=res.phases_ms)  # fmt: skip
    res = distributed_prefill(model, prompts, "cost-balanced", gather_to=1, gather_kv=True)
    out["to1"] = dict(logits=res.logits, kv=res.kv, local_kv=sorted(res.local_kv), local=res.local_indices)
    short = [p[:3] for p in prompts[:4]]  # one packed row at capacity 64: rank 1 runs nothing
    res = distributed_prefill(model, short, "cost-balanced", capacity=64)
    out["empty"] = dict(logits=res.logits, local=res.local_indices,
                        reference=gpu_runner.prefill(model, short, backend="dense").logits)  # fmt: skip
    res = distributed_prefill(
        model, prompts, "cost-balanced", executor=EngineExecutor(options={"cuda_graphs": False})
    )
    out["engine"] = dict(logits=res.logits, local=res.local_indices)
    try:
        distributed_prefill(model, prompts[: N_PROMPTS - rank], "cost-balanced")
        out["disagree"] = None
    except RuntimeError as exc:
        out["disagree"] = str(exc)
    from gpu_runner.bench.multigpu import MultiGPUConfig, run_multigpu_benchmark

    cfg = MultiGPUConfig(model="tiny", batches=(8,), warmup=0, reps=1, dtype="float32", out=bench_out,
                         executors=("runner", "engine"))  # fmt: skip
    out["bench"] = [r.strategy for r in run_multigpu_benchmark(cfg, device=torch.device("cpu"))]
    return out


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("bench") / "multigpu_{gpu}.json")


@pytest.fixture(scope="module")
def ranks(bench_json) -> list[dict]:
    from gpu_runner.distributed import spawn_local

    return spawn_local(_worker, 2, bench_json)


def test_both_ranks_ran(ranks):
    assert [r["rank"] for r in ranks] == [0, 1]


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_timed_calls_report_busy_and_phase_times(ranks, strategy):
    for r in ranks:
        busy, phases = r[strategy]["busy"], r[strategy]["phases"]
        assert len(busy) == 2 and all(b >= 0 for b in busy)
        assert set(phases) == {"plan", "run", "gather"} and all(v >= 0 for v in phases.values())
        # the executor's host time covers at least this rank's measured busy time
        assert phases["run"] >= 0.5 * busy[r["rank"]]


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_gathered_logits_equal_single_process_prefill_in_caller_order(ranks, strategy):
    for r in ranks:
        got = r[strategy]["logits"]
        assert got.shape == r["reference"].shape == (N_PROMPTS, 96)
        torch.testing.assert_close(got, r["reference"], **FP32_TOL)
    torch.testing.assert_close(ranks[0][strategy]["logits"], ranks[1][strategy]["logits"], atol=0, rtol=0)


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
def test_every_prompt_runs_exactly_once(ranks, strategy):
    a, b = ranks[0][strategy], ranks[1][strategy]
    assert a["local"] and b["local"]
    assert sorted(a["local"] + b["local"]) == list(range(N_PROMPTS))
    assert a["bins"] == b["bins"]  # both ranks computed the same plan
    assert len(a["busy"]) == 2 and all(t > 0 for t in a["busy"]) and a["busy"] == b["busy"]
    if strategy == "padded-rr":
        assert a["num_bins"] == N_PROMPTS and a["local"] == tuple(range(0, N_PROMPTS, 2))


def test_gather_to_one_rank_with_kv(ranks):
    r0, r1 = ranks[0]["to1"], ranks[1]["to1"]
    assert r0["logits"] is None and r0["kv"] is None
    torch.testing.assert_close(r1["logits"], ranks[1]["reference"], **FP32_TOL)
    assert len(r1["kv"]) == N_PROMPTS
    for i, layers in enumerate(r1["kv"]):
        ref = ranks[1]["reference_kv"][i]
        assert len(layers) == len(ref)
        for (k, v), (rk, rv) in zip(layers, ref):
            torch.testing.assert_close(k, rk, **FP32_TOL)
            torch.testing.assert_close(v, rv, **FP32_TOL)
    assert r0["local_kv"] == sorted(r0["local"]) and r1["local_kv"] == sorted(r1["local"])


def test_a_rank_without_rows_still_takes_part(ranks):
    assert ranks[0]["empty"]["local"] == (0, 1, 2, 3) and ranks[1]["empty"]["local"] == ()
    for r in ranks:
        torch.testing.assert_close(r["empty"]["logits"], r["empty"]["reference"], **FP32_TOL)


def test_engine_executor(ranks):
    for r in ranks:
        torch.testing.assert_close(r["engine"]["logits"], r["reference"], atol=1e-4, rtol=1e-3)
    assert sorted(ranks[0]["engine"]["local"] + ranks[1]["engine"]["local"]) == list(range(N_PROMPTS))


def test_ranks_that_disagree_fail_together(ranks):
    for r in ranks:
        assert r["disagree"] is not None and "disagree" in r["disagree"]


def test_benchmark_records(ranks, bench_json):
    import json

    records = json.load(open(bench_json.format(gpu="cpu")))
    # world sizes x (runner: 3 strategies, engine: 4, prompt-balanced only where rows are ignored)
    assert len(records) == len(ranks[0]["bench"]) == 2 * (3 + 4)
    required = {"gpu", "gpus", "model", "dataset", "batch", "strategy", "ms", "tokens_per_s",
                "scaling_efficiency",
                "per_rank_busy_ms"}  # fmt: skip
    for r in records:
        assert required <= r.keys() and r["error"] is None, r
        assert (
            r["gpu"] == "cpu" and r["batch"] == 8 and r["ms"] > 0 and len(r["per_rank_busy_ms"]) == r["gpus"]
        )
        assert r["tokens_per_s"] == pytest.approx(r["real_tokens"] / (r["ms"] / 1e3))
        phases = r["per_rank_phase_ms"]
        assert set(phases) == {"plan", "run", "gather"} and all(len(v) == r["gpus"] for v in phases.values())
        assert all(x >= 0 for v in phases.values() for x in v)
        if r["gpus"] == 1:
            assert r["scaling_efficiency"] == 1.0
        else:
            one = next(o for o in records if o["gpus"] == 1 and o["strategy"] == r["strategy"]
                       and o["executor"] == r["executor"])  # fmt: skip
            assert r["scaling_efficiency"] == pytest.approx(one["ms"] / (2 * r["ms"]))
    assert {r["strategy"] for r in records if r["executor"] == "engine"} == set(STRATEGY_NAMES)
    assert "prompt-balanced" not in {r["strategy"] for r in records if r["executor"] == "runner"}
