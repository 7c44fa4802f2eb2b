"""Pure tests of the multi-GPU assignment (no process group): partition algorithms, balance
quality against round-robin on real length mixes, the strategy registry, the Assignment
invariants, the launch environment (NVLink multicast off) and the benchmark CLI's errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpu_runner.distributed import (
    NVLS_OFF_ENV,
    PARTITIONERS,
    STRATEGIES,
    Assignment,
    disable_nvlink_multicast,
    karmarkar_karp_partition,
    launcher_env,
    lpt_partition,
    make_strategy,
    plan_assignment,
    register_strategy,
    round_robin_partition,
    torchrun_command,
)
from simulator import CostModel

MMLU = np.loadtxt(
    __import__("pathlib").Path(__file__).resolve().parents[1] / "simulator/data/mmlu.txt", dtype=np.int64
)


def makespan(costs, parts) -> float:
    costs = np.asarray(costs, dtype=float)
    return max(costs[list(p)].sum() if p else 0.0 for p in parts)


def assert_partition(parts, n: int, k: int) -> None:
    assert len(parts) == k
    assert sorted(itertools.chain.from_iterable(parts)) == list(range(n))
    assert all(list(p) == sorted(p) for p in parts)


@pytest.mark.parametrize("name", list(PARTITIONERS))
@pytest.mark.parametrize("k", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [0, 1, 5, 40])
def test_every_partitioner_places_every_item_once(name, k, n):
    costs = np.random.default_rng(n * 10 + k).random(n)
    parts = PARTITIONERS[name](costs, k)
    assert_partition(parts, n, k)
    assert parts == PARTITIONERS[name](costs.copy(), k)  # deterministic


def test_known_instances():
    # LPT: 8 | 7, 6 -> 8+5 | 13, then 4 joins rank 0 (tie, lower rank): 17 vs 13
    assert makespan([8, 7, 6, 5, 4], lpt_partition([8, 7, 6, 5, 4], 2)) == 17
    # KK differencing: (8,7)->1, (6,5)->1, (4,1)->3, (3,1)->2: 16 vs 14
    assert makespan([8, 7, 6, 5, 4], karmarkar_karp_partition([8, 7, 6, 5, 4], 2)) == 16
    assert makespan([8, 7, 6, 5, 4], PARTITIONERS["best"]([8, 7, 6, 5, 4], 2)) == 16
    assert round_robin_partition([1, 1, 1, 1, 1], 2) == ((0, 2, 4), (1, 3))
    # KK is exact on perfect pairs where round-robin is not
    costs = [10, 1, 10, 1]
    assert makespan(costs, karmarkar_karp_partition(costs, 2)) == 11
    assert makespan(costs, round_robin_partition(costs, 2)) == 20


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("k", [2, 3, 4, 8])
def test_balanced_partitions_beat_round_robin_and_respect_the_list_scheduling_bound(seed, k):
    rng = np.random.default_rng(seed)
    costs = rng.lognormal(0, 1, size=rng.integers(k, 120))
    lower = max(costs.sum() / k, costs.max())
    rr = makespan(costs, round_robin_partition(costs, k))
    for name in ("lpt", "kk", "best"):
        m = makespan(costs, PARTITIONERS[name](costs, k))
        assert m >= lower - 1e-9
        assert m <= rr + 1e-9, name
    # list scheduling (LPT): makespan <= total / k + (1 - 1/k) * max
    assert makespan(costs, lpt_partition(costs, k)) <= costs.sum() / k + (1 - 1 / k) * costs.max() + 1e-9
    best = makespan(costs, PARTITIONERS["best"](costs, k))
    assert best <= min(
        makespan(costs, lpt_partition(costs, k)), makespan(costs, karmarkar_karp_partition(costs, k))
    )


@pytest.mark.parametrize("batch", [256, 1024])
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [2, 4])
def test_cost_balanced_rows_on_mmlu_are_better_balanced_than_round_robin(batch, seed, k):
    lengths = MMLU[np.random.default_rng(seed).choice(len(MMLU), batch, replace=False)]
    cm = CostModel("llama-2-7b", "h100", "varlen")
    packing, rr = plan_assignment(lengths, k, strategy="packed-rr", cost_model=cm)
    packing2, bal = plan_assignment(lengths, k, strategy="cost-balanced", cost_model=cm)
    assert packing2.bins == packing.bins  # same rows, only their ranks differ
    assert bal.makespan_s <= rr.makespan_s + 1e-15
    costs = np.asarray(bal.row_costs_s)
    # rows are coarse (17-105 of them here): the guarantee is the list-scheduling bound
    assert bal.makespan_s <= costs.sum() / k + (1 - 1 / k) * costs.max() + 1e-15
    assert sum(bal.rank_loads_s) == pytest.approx(float(cm.row_times_s(packing).sum()))


def test_cost_balanced_never_models_worse_than_round_robin_and_prompt_balanced_is_near_perfect():
    gains = []
    for attention in ("varlen", "dense", "flex"):
        cm = CostModel("llama-2-7b", "h100", attention)
        for seed in range(4):
            lengths = MMLU[np.random.default_rng(100 + seed).choice(len(MMLU), 256, replace=False)]
            for k in (2, 4):
                plans = {s: plan_assignment(lengths, k, strategy=s, cost_model=cm)[1] for s in STRATEGIES}
                assert plans["cost-balanced"].makespan_s <= plans["packed-rr"].makespan_s * (1 + 1e-12)
                assert plans["prompt-balanced"].makespan_s <= plans["padded-rr"].makespan_s * (1 + 1e-12)
                assert plans["prompt-balanced"].imbalance < 1.001  # 256 prompts: fine enough to balance
                if attention == "varlen":  # per-prompt costs differ (dense prices every padded row alike)
                    gains.append(plans["padded-rr"].imbalance - plans["prompt-balanced"].imbalance)
    assert np.median(gains) > 0.01  # prompt round-robin leaves a few % that balancing removes


def test_padded_rr_is_prompt_round_robin_and_rows_hold_one_prompt():
    lengths = [5, 3, 9, 2, 7]
    cm = CostModel("llama-2-7b", "h100", "dense")
    packing, a = plan_assignment(lengths, 2, strategy="padded-rr", cost_model=cm)
    assert packing.packer == "pad" and all(len(b) == 1 for b in packing.bins)
    assert a.rank_prompts(packing, 0) == (0, 2, 4) and a.rank_prompts(packing, 1) == (1, 3)


def test_more_ranks_than_rows_leaves_ranks_empty():
    cm = CostModel("llama-2-7b", "h100", "varlen")
    packing, a = plan_assignment([3, 4, 2], 4, strategy="cost-balanced", cost_model=cm, capacity=64)
    assert packing.num_bins == 1
    assert sum(1 for p in a.rank_bins if p) == 1
    assert sorted(i for r in range(4) for i in a.rank_prompts(packing, r)) == [0, 1, 2]


def test_registry_and_errors():
    assert set(STRATEGIES) >= {"padded-rr", "packed-rr", "cost-balanced", "prompt-balanced"}
    assert make_strategy("prompt-balanced").packer == "pad"
    assert make_strategy("cost-balanced", method="lpt").method == "lpt"
    with pytest.raises(ValueError, match="valid: .*cost-balanced"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="partition method"):
        make_strategy("cost-balanced", method="random")
    with pytest.raises(ValueError, match="unknown packer"):
        make_strategy("packed-rr", packer="nope")
    with pytest.raises(ValueError, match="bad parameters"):
        make_strategy("packed-rr", colour="red")
    with pytest.raises(ValueError, match="below the longest"):
        plan_assignment([5, 9], 2, cost_model=CostModel("llama-2-7b", "h100"), capacity=8)
    with pytest.raises(ValueError, match="num_ranks"):
        lpt_partition([1.0], 0)
    with pytest.raises(ValueError, match="finite"):
        karmarkar_karp_partition([1.0, float("nan")], 2)


def test_a_third_party_strategy_plugs_in():
    from dataclasses import dataclass
    from typing import ClassVar

    @dataclass(frozen=True)
    class AllOnZero:
        name: ClassVar[str] = "test-all-on-zero"
        packer: str = "ffd"

        def assign(self, row_costs_s, world_size):
            return (tuple(range(len(row_costs_s))),) + ((),) * (world_size - 1)

    register_strategy(AllOnZero)
    try:
        packing, a = plan_assignment(
            [3, 4, 9, 2], 3, strategy="test-all-on-zero", cost_model=CostModel("llama-2-7b", "h100")
        )
        assert a.strategy == "test-all-on-zero" and a.rank_bins[1:] == ((), ())
        assert a.imbalance == pytest.approx(3.0)
    finally:
        del STRATEGIES["test-all-on-zero"]


def test_assignment_validates_itself():
    Assignment("x", ((0, 2), (1,)), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="exactly once"):
        Assignment("x", ((0, 1), (1,)), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="exactly once"):
        Assignment("x", ((0,), (1,)), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="ascending"):
        Assignment("x", ((2, 0), (1,)), (1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="at least one rank"):
        Assignment("x", (), ())


def test_digest_tells_plans_apart():
    cm = CostModel("llama-2-7b", "h100", "varlen")
    packing, a = plan_assignment(MMLU[:64], 2, strategy="cost-balanced", cost_model=cm)
    _, b = plan_assignment(MMLU[:64], 2, strategy="packed-rr", cost_model=cm)
    other, c = plan_assignment(MMLU[1:65], 2, strategy="cost-balanced", cost_model=cm)
    assert a.digest(packing) == plan_assignment(MMLU[:64], 2, strategy="cost-balanced", cost_model=cm)[
        1
    ].digest(packing)
    assert a.rank_bins != b.rank_bins and a.digest(packing) != b.digest(packing)
    assert a.digest(packing) != c.digest(other)
    assert 0 <= a.digest(packing) < 2**63


def test_launch_environment_keeps_nvlink_multicast_off():
    env = launcher_env({"NCCL_NVLS_ENABLE": "1", "PYTHONPATH": "/x"}, master_port=12345)
    for k, v in NVLS_OFF_ENV.items():
        assert env[k] == v
    assert NVLS_OFF_ENV == {
        "NCCL_NVLS_ENABLE": "0",
        "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
        "NVSHMEM_DISABLE_NVLS": "1",
    }
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "12345"
    assert env["PYTHONPATH"].endswith("/x")
    d = {"NVSHMEM_DISABLE_NVLS": "0"}
    disable_nvlink_multicast(d)
    assert d == NVLS_OFF_ENV
    cmd = torchrun_command("benchmarks/multigpu_bench.py", nproc_per_node=2, args=["--smoke"], master_port=1)
    assert (
        cmd[1:3] == ["-m", "torch.distributed.run"] and "--nproc-per-node=2" in cmd and cmd[-1] == "--smoke"
    )
    with pytest.raises(ValueError):
        torchrun_command("x.py", nproc_per_node=0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--strategies", "nope"],
        ["--batches", "x"],
        ["--executors", "fast"],
        ["--model", "gpt5"],
        ["--reps", "0"],
    ],
)
def test_bench_cli_bad_input_is_one_line_and_exit_2(argv, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "multigpu_bench.py"
    spec = importlib.util.spec_from_file_location("multigpu_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("multigpu_bench: error:") and err.count("\n") == 1


def test_runner_executor_prices_varlen_rows_at_their_padded_length():
    """gpu_runner's varlen backend pads the packed rows of a forward to one length: the
    distributed runner executor must price a half-full row like a full one, or cost
    balancing would trust loads that the linear layers never see."""
    pytest.importorskip("torch")
    from test_runner_support import tiny_model

    from gpu_runner.distributed.prefill import RunnerExecutor, default_cost_model
    from packers import make_packer

    model = tiny_model("llama")
    packing = make_packer("ffd").pack([60, 40, 100, 10], 100)  # rows of load 100, 100, 10 (FFD)
    assert sorted(packing.loads) == [10, 100, 100]
    runner = default_cost_model(model, RunnerExecutor(backend="varlen").attention(model))
    costs = runner.row_times_s(packing)
    short, full = list(packing.loads).index(10), list(packing.loads).index(100)
    # the row of 10 tokens costs its 100 padded positions in the linear layers: within the
    # attention and last-token terms of a full row, far from a tenth of it
    assert costs[short] > 0.5 * costs[full]
    assert default_cost_model(model, RunnerExecutor(backend="dense").attention(model)).attention.name == "dense"


def test_runner_executor_costs_rows_with_the_backend_it_runs():
    """"auto" resolves once per model, for the cost model and for the run alike; a runner
    backend the simulator cannot price is a ValueError, not silently priced as dense."""
    pytest.importorskip("torch")
    from test_runner_support import tiny_model

    from gpu_runner.distributed.prefill import RunnerExecutor

    model = tiny_model("llama")  # CPU fp32: auto is dense
    auto = RunnerExecutor()
    assert auto.backend_name(model) == "dense" and auto.attention(model) == "dense"
    assert RunnerExecutor(backend="varlen").attention(model).name == "varlen"
    with pytest.raises(ValueError, match="no simulator cost model"):
        RunnerExecutor(backend="my-backend").attention(model)


def test_planning_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, gpu_runner.distributed as d; d.make_strategy('cost-balanced'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
