"""Hostile input to the library (issue 17): every case gives the exact result or one clear
`ValueError` / `TypeError`, in bounded time and memory."""

from __future__ import annotations

import os
import time
import tracemalloc

import numpy as np
import pytest
from packer_oracles import loads_of, reference_fit

import packers
from packers import Packing, checked_pack, limits
from packers.limits import MAX_CAPACITY_TOKENS, MAX_LENGTH_TOKENS, MAX_MEMORY_BYTES, MAX_PROMPTS
from packers.online import best_fit
from simulator import CostModel
from simulator.distributions import load_lengths_file, parse_distribution
from simulator.units import parse_bytes

META = {"lower_bound": 1, "status": "heuristic", "solve_time_s": 0.0}


# -- limits ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "check,limit",
    [
        (limits.check_capacity_tokens, MAX_CAPACITY_TOKENS),
        (limits.check_num_prompts, MAX_PROMPTS),
        (limits.check_memory_bytes, MAX_MEMORY_BYTES),
    ],
)
def test_limit_checks_accept_the_limit_and_refuse_past_it(check, limit):
    assert check(limit) == limit and check(float(limit)) == limit and check(np.int64(3)) == 3
    for bad in (limit + 1, float("inf"), 1e400, 10**30):
        with pytest.raises(ValueError, match=r"over the limit of [\d,]+ \w+ \(packers.limits\)"):
            check(bad)
    for bad in (0, -1, True, 2.5, float("nan"), "5", None):
        with pytest.raises(ValueError, match="positive integer"):
            check(bad)


def test_the_limits_keep_every_sum_inside_int64():
    assert MAX_LENGTH_TOKENS * MAX_PROMPTS == limits.MAX_TOTAL_TOKENS <= 2**60
    assert 2 * limits.MAX_TOTAL_TOKENS < 2**63  # rows x capacity in L2 is at most twice a sum


# -- Packing ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "lengths,capacity,bins,meta,needle",
    [
        ([2**62] * 3, 2**60, ((0, 1, 2),), META, "over the limit"),
        ([1, 2], 10, ((0.0,), (1,)), META, "int prompt indices"),
        ([1, 2], 10, (("0",), (1,)), META, "int prompt indices"),
        ([1, 2], 10, ((True,), (0,)), META, "int prompt indices"),
        ([1, 2], 10, ((0,), (2**70,)), META, "outside"),
        ([1, 2], 10, None, META, "sequence of prompt-index sequences"),
        ([1, 2], 10, ((0,), 1), META, "sequence of prompt-index sequences"),
        ([1, 2], 10, ((0, 1),), {**META, "lower_bound": 0}, "lower_bound"),
        ([1, 2], 10, ((0, 1),), {**META, "lower_bound": 2}, "lower_bound"),
        ([1, 2], 10, ((0, 1),), {**META, "lower_bound": 1.0}, "lower_bound"),
        ([1, 2], 10, ((0, 1),), [("lower_bound", 1)], "mapping"),
        ([1, 2], 1e400, ((0, 1),), META, "over the limit"),
        ([1, 2], 2**61, ((0, 1),), META, "over the limit"),
    ],
)
def test_packing_refuses(lengths, capacity, bins, meta, needle):
    with pytest.raises(ValueError, match=needle):
        Packing(lengths=lengths, capacity=capacity, bins=bins, packer="x", meta=meta)


def test_packing_loads_are_exact_at_the_largest_length():
    n = 64
    p = Packing(lengths=[MAX_LENGTH_TOKENS] * n, capacity=MAX_LENGTH_TOKENS * n, bins=(tuple(range(n)),),
                packer="flat", meta=META)  # fmt: skip
    assert p.loads == (MAX_LENGTH_TOKENS * n,) and p.total_tokens == MAX_LENGTH_TOKENS * n
    for name in ("ffd", "bfd", "best-fit", "first-fit", "lpfhp", "wfd", "next-fit"):
        q = packers.make_packer(name).pack([MAX_LENGTH_TOKENS] * 5, 2 * MAX_LENGTH_TOKENS)
        assert q.num_bins == 3 and q.lower_bound == 3 and q.gap == 0.0
        assert sorted(q.loads) == [MAX_LENGTH_TOKENS, 2 * MAX_LENGTH_TOKENS, 2 * MAX_LENGTH_TOKENS]


@pytest.mark.parametrize(
    "lengths,needle",
    [
        ([2**61] * 5, "over the limit"),
        ([2**63], "over the limit"),
        (np.array([2**63], dtype=np.uint64), "length 9223372036854775808 is over the limit"),
        ([1e300], "over the limit"),
        ([float("inf")], "over the limit"),
        ([2**70], "over the limit"),
        ([-(2**70)], "positive"),
        ([float("-inf")], "length -inf: lengths must be positive"),
        ([True, 5], "not booleans"),
        ([5, True], "not booleans"),
        ([1.5], "integers"),
        (["5"], "integers"),
    ],
)
@pytest.mark.parametrize("name", ["ffd", "best-fit", "bfd"])
def test_packers_refuse_lengths_past_the_limit(name, lengths, needle):
    with pytest.raises(ValueError, match=needle):
        packers.make_packer(name).pack(lengths, MAX_CAPACITY_TOKENS)


def test_too_many_prompts_is_refused_before_any_work():
    with pytest.raises(ValueError, match="number of prompts .* over the limit"):
        packers.validate_lengths(np.ones(MAX_PROMPTS + 1, dtype=np.int8))


# -- best-fit / bfd: time and memory independent of the capacity -----------------------------
@pytest.mark.parametrize("name", ["best-fit", "bfd", "lpfhp", "ffd", "first-fit"])
def test_huge_capacity_costs_nothing(name):
    tracemalloc.start()
    start = time.perf_counter()
    p = packers.make_packer(name).pack([3, 1, 4, 1, 5], 10**15)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert p.num_bins == 1 and elapsed < 1.0 and peak < 1_000_000


def _naive_best_fit(lengths, capacity):
    """One prompt at a time: the bin with the least room that fits; among equal room, the bin
    that reached that room last (best_fit's documented tie rule)."""
    free, since, bin_of = [], [], []
    for t, size in enumerate(lengths):
        fits = [b for b in range(len(free)) if free[b] >= size]
        if fits:
            b = min(fits, key=lambda j: (free[j], -since[j]))
            free[b] -= size
            since[b] = t
        else:
            b = len(free)
            free.append(capacity - size)
            since.append(t)
        bin_of.append(b)
    return bin_of


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("capacity", [100, 10**6, 10**15])
def test_best_fit_equals_a_naive_reference(seed, capacity):
    rng = np.random.default_rng(seed)
    hi = min([capacity // 2, capacity // 7, capacity][seed % 3], MAX_LENGTH_TOKENS)
    lengths = rng.integers(1, max(hi, 1) + 1, 300)
    order = np.arange(lengths.size)
    assert best_fit(lengths, order, capacity).tolist() == _naive_best_fit(lengths.tolist(), capacity)
    p = packers.make_packer("bfd").pack(lengths, capacity)
    expected = reference_fit(lengths.tolist(), capacity, "best", True)
    assert loads_of(p.bins, lengths.tolist()) == loads_of(expected, lengths.tolist())


# -- plug-in packers -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cls,error,needle",
    [
        ("OtherCapacity", ValueError, "capacity 20, asked 10"),
        ("OtherLengths", ValueError, "other lengths"),
        ("ReturnsList", TypeError, "returned list, not a Packing"),
        ("ReturnsNone", TypeError, "returned NoneType, not a Packing"),
        ("Raises", ValueError, "failed: RuntimeError: plug-in exploded"),
        ("AroundValidation", ValueError, "invalid Packing: bin 0 holds 15 tokens, over the capacity 10"),
    ],
)
def test_checked_pack_names_a_misbehaving_plugin(cls, error, needle):
    packer = packers.make_packer(f"hostile_plugins:{cls}")
    with pytest.raises(error, match=needle) as info:
        checked_pack(packer, [5, 5, 5], 10)
    assert cls in str(info.value)


def test_checked_pack_returns_a_revalidated_copy():
    p = checked_pack(packers.make_packer("ffd"), [5, 5, 5], 10)
    assert p == packers.make_packer("ffd").pack([5, 5, 5], 10)


@pytest.mark.parametrize(
    "name,needle",
    [
        ("hostile_plugin_broken:Packer", "cannot load packer .* RuntimeError: this plug-in module is broken"),
        ("no_such_module_xyz:Packer", "cannot load packer .* ModuleNotFoundError"),
        ("hostile_plugins:BadInit", "cannot build packer .* constructor exploded"),
    ],
)
def test_make_packer_reports_failing_plugins(name, needle):
    with pytest.raises(ValueError, match=needle):
        packers.make_packer(name)


# -- ilp: model building stops at the deadline -----------------------------------------------
@pytest.mark.parametrize("time_limit_s", [0.5, 0.05])
def test_ilp_keeps_its_time_limit_while_building_models(time_limit_s):
    pytest.importorskip("ortools")
    from ortools.sat.python import cp_model  # noqa: F401  (a one-time import, not the packer's time)

    rng = np.random.default_rng(1)
    lengths = rng.choice(np.arange(20_000, 60_000), 600, replace=False)  # no proof within the limit
    start = time.perf_counter()
    p = packers.make_packer("ilp", time_limit_s=time_limit_s).pack(lengths, 100_000)
    assert time.perf_counter() - start < time_limit_s + 2.0  # the contract is + 0.5 s; slack for CI
    assert p.meta["status"] in ("feasible", "optimal") and p.num_bins <= p.meta["ffd_bins"]


# -- cost model --------------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ["dense", "flex", "varlen", "padded"])
def test_cost_model_does_not_wrap_on_huge_prompts(attention):
    lengths = [10**8] * 64
    packer = "pad" if attention == "padded" else "ffd"
    packing = packers.make_packer(packer).pack(lengths, 10**8)
    cost = CostModel("llama-2-7b", "h100", attention).cost(packing)
    assert not cost.fits and cost.forwards is None
    assert cost.kv_cache_bytes >= 64 * 10**8 * 2 * 32 * 4096 * 2  # K and V, 32 layers, 4096 wide, bf16
    assert cost.peak_memory_bytes > 80e9 and cost.attention_pairs > 0 and cost.est_time_s > 0


def test_flex_tiles_scale_with_prompts_not_tokens():
    packing = Packing(lengths=[MAX_LENGTH_TOKENS] * 4, capacity=4 * MAX_LENGTH_TOKENS, bins=((0, 1, 2, 3),),
                      packer="flat", meta=META)  # fmt: skip
    start = time.perf_counter()
    cost = CostModel("llama-2-7b", "h100", "flex").cost(packing)
    assert time.perf_counter() - start < 1.0
    tiles_per_prompt = (MAX_LENGTH_TOKENS // 128) * (MAX_LENGTH_TOKENS // 128 + 1) / 2
    assert cost.attention_pairs == pytest.approx(4 * tiles_per_prompt * 128**2, rel=1e-12)


# -- distributions, files, sizes ---------------------------------------------------------------
@pytest.mark.parametrize(
    "spec,needle",
    [
        ("constant:value=1e15", "over the limit"),
        ("uniform:low=1,high=1e300", "over the limit"),
        ("zipf:a=1.0001", "add max=N"),
        ("pareto:alpha=1e-300", "add max=N"),
        ("normal:mean=1e300,std=1e300", "add max=N"),
        ("lognormal:mean=1e300,sigma=1e200", "out of the float range"),
        ("constant:value=5,max=1e20", "over the limit"),
        ("1e400*mmlu + 1*alpaca", "finite"),
    ],
)
def test_extreme_distributions_give_one_clear_error(spec, needle):
    with pytest.raises(ValueError, match=needle):
        parse_distribution(spec).sample(64, np.random.default_rng(0))


def test_extreme_distribution_with_max_is_clipped():
    draws = parse_distribution("zipf:a=1.0001,max=4096").sample(1000, np.random.default_rng(0))
    assert draws.min() >= 1 and draws.max() == 4096


SECRET = "hunter2-secret-token"


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("big.txt", "5\n1e15\n", "line 2: a length of 1e\\+15 is over the limit"),
        ("huge.txt", f"5\n{2**63}\n", "line 2: a length of 9223372036854775808 is over the limit"),
        ("neg.txt", "-5\n", "below 1"),
        ("float.txt", "1e300\n", "over the limit"),
        ("bools.json", "[true, 5]", "entry 0: a boolean"),
        ("secret.txt", f"{SECRET}:x:0:0\n", "line 1: not a number"),
        ("secret.csv", f"{SECRET}\n", "line 1: not a number"),
        ("secret.json", f'["{SECRET}"]', "entry 0: not a number"),
        ("broken.json", f'["{SECRET}"', "not valid JSON"),
        ("binary.txt", b"\xff\xfe" + SECRET.encode("utf-16-le"), "not UTF-8 text"),
    ],
)
def test_length_file_errors_do_not_echo_the_content(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=needle) as info:
        load_lengths_file(path)
    assert SECRET not in str(info.value) and "hunter2" not in str(info.value)


def test_length_file_kinds_are_named(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_lengths_file(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_lengths_file(tmp_path / "missing.txt")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.txt")
        with pytest.raises(ValueError, match=r"not a regular file \(a FIFO\)"):
            load_lengths_file(tmp_path / "pipe.txt")  # refused without opening it (would block)


@pytest.mark.parametrize("suffix", [".txt", ".csv", ".json"])
def test_utf8_bom_files_are_read(tmp_path, suffix):
    path = tmp_path / f"bom{suffix}"
    body = {".txt": "5\n7\n", ".csv": "length\n5\n7\n", ".json": "[5, 7]"}[suffix]
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    assert load_lengths_file(path).tolist() == [5, 7]


@pytest.mark.parametrize("text", ["1e400", "2e18", str(2**70), "inf"])
def test_sizes_past_the_limit_are_refused(text):
    with pytest.raises(ValueError, match="over the limit|bad size"):
        parse_bytes(text)
