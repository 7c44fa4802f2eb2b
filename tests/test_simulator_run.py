"""The library side: distributions, capacity search, simulate aggregation, recommend."""

from __future__ import annotations

import numpy as np
import pytest

import packers
from simulator import (
    CostModel,
    make_attention,
    capacity_candidates,
    choose_capacity,
    load_profile,
    parse_distribution,
    recommend,
    simulate,
)
from simulator.distributions import PROFILES


def test_profiles_ship_with_the_package():
    stats = {name: load_profile(name) for name in PROFILES}
    assert stats["mmlu"].size == 14033 and stats["mmlu"].max() == 1130
    assert stats["wikitext256"].max() == 256
    assert all(v.min() >= 1 for v in stats.values())


@pytest.mark.parametrize(
    "spec,mean,tol",
    [
        ("lognormal:mean=200,sigma=1.0", 200, 0.05),
        ("normal:mean=300,std=20", 300, 0.02),
        ("uniform:low=10,high=30", 20, 0.02),
        ("exponential:mean=80", 80, 0.05),
        ("constant:value=17", 17, 0.0),
        ("0.5*constant:value=100 + 0.5*constant:value=300", 200, 0.03),
    ],
)
def test_parametric_means(spec, mean, tol):
    x = parse_distribution(spec).sample(40000, np.random.default_rng(1))
    assert x.dtype == np.int64 and x.min() >= 1
    assert abs(x.mean() - mean) <= tol * mean + 0.5


def test_max_clips_and_heavy_tails():
    x = parse_distribution("pareto:alpha=1.2,min=10,max=500").sample(5000, np.random.default_rng(0))
    assert x.min() >= 10 and x.max() == 500
    z = parse_distribution("zipf:a=2,scale=4,max=100").sample(5000, np.random.default_rng(0))
    assert set(np.unique(z) % 4) == {0} and z.max() <= 100


def test_same_seed_same_lengths():
    a = simulate(lengths_dist="alpaca", batch_size=16, num_prompts=40, packers=["ffd"], seed=5)
    b = simulate(lengths_dist="alpaca", batch_size=16, num_prompts=40, packers=["ffd"], seed=5)
    c = simulate(lengths_dist="alpaca", batch_size=16, num_prompts=40, packers=["ffd"], seed=6)
    assert np.array_equal(a.lengths, b.lengths) and not np.array_equal(a.lengths, c.lengths)
    assert a.to_json() == b.to_json()


def test_aggregation_sums_batches():
    lengths = np.random.default_rng(0).integers(1, 400, 70)
    res = simulate(lengths_dist=lengths, batch_size=32, packers=["ffd"], attention="dense", model="llama-2-7b")
    row = next(r for r in res.results if (r.packer, r.attention) == ("ffd", "dense"))
    cm = CostModel("llama-2-7b", "h100", "dense")
    parts = [cm.cost(packers.make_packer("ffd").pack(b, int(b.max()))) for b in (lengths[:32], lengths[32:64], lengths[64:])]
    assert row.num_batches == 3
    assert row.num_bins == sum(p.num_bins for p in parts)
    assert row.est_time_s == pytest.approx(sum(p.est_time_s for p in parts))
    assert row.flops == pytest.approx(sum(p.flops for p in parts))
    assert row.peak_memory_bytes == max(p.peak_memory_bytes for p in parts)
    assert {(r.packer, r.attention) for r in res.results} == {("pad", "padded"), ("pad", "dense"), ("ffd", "dense")}


def test_auto_capacity_never_worse_than_max():
    batch = np.random.default_rng(2).choice(load_profile("mmlu"), 128, replace=False)
    ffd = packers.make_packer("ffd")
    models = [CostModel("sheared-llama-1.3b", "h100", a) for a in ("dense", "flex", "varlen")]
    cands = capacity_candidates(batch)
    assert cands[0] == batch.max() and cands[-1] == batch.sum()
    auto = choose_capacity(batch, ffd, models, "auto")
    at_max = choose_capacity(batch, ffd, models, "max")
    for a, m in zip(auto, at_max):
        assert a.capacity in cands
        assert a.cost.est_time_s <= m.cost.est_time_s
    # a direct check that auto took the minimum over every candidate
    for a, model in zip(auto, models):
        best = min(model.cost(ffd.pack(batch, c)).est_time_s for c in cands)
        assert a.cost.est_time_s == pytest.approx(best)


def test_memory_budget_forces_more_forwards():
    lengths = np.random.default_rng(3).choice(load_profile("azure_conv"), 64)
    kw = dict(lengths_dist=lengths, batch_size=64, packers=["ffd"], attention="dense", model="llama-2-7b")
    roomy = simulate(**kw, memory_budget_bytes=10**15)
    r = next(x for x in roomy.results if x.packer == "ffd")
    one = CostModel("llama-2-7b", "h100", "dense", 10**15).cost(packers.make_packer("ffd").pack(lengths, int(lengths.max())))
    budget = one.weight_bytes + one.kv_cache_bytes + one.activation_peak_bytes // 2
    tight = simulate(**kw, memory_budget_bytes=budget)
    t = next(x for x in tight.results if x.packer == "ffd")
    assert r.forwards == 1 and t.forwards >= 2 and t.fits
    assert t.est_time_s > r.est_time_s and t.peak_memory_bytes <= budget < r.peak_memory_bytes
    starved = simulate(**kw, memory_budget_bytes=one.weight_bytes + one.kv_cache_bytes)
    assert not next(x for x in starved.results if x.packer == "ffd").fits
    assert starved.recommendation is None


def test_recommend_picks_the_cheapest_fitting_option():
    batch = np.random.default_rng(4).choice(load_profile("samsum"), 64, replace=False)
    best = recommend(batch, model="llama-2-7b", gpu="h100")
    assert best is not None and best.fits
    for attention in ("dense", "flex", "varlen"):
        alt = recommend(batch, model="llama-2-7b", gpu="h100", attention=attention, packers=["ffd"])
        assert best.est_time_s <= alt.est_time_s * (1 + 1e-12)
    assert recommend([10**6], model="llama-2-70b", gpu="l4") is None  # 70B weights alone exceed 24 GB


def test_progress_bar_goes_to_stderr_only(capsys):
    simulate(lengths_dist="alpaca", batch_size=8, num_prompts=32, packers=["ffd"], progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "simulate" in err and "batch" in err
    simulate(lengths_dist="alpaca", batch_size=8, num_prompts=32, packers=["ffd"], progress=False)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_flat_batch_row_pads_nothing():
    lengths = np.random.default_rng(9).integers(1, 300, 48)
    res = simulate(lengths_dist=lengths, batch_size=16, packers=["ffd"], attention="all", model="sheared-llama-1.3b")
    pairs = {(r.packer, r.attention): r for r in res.results}
    assert ("flat", "varlen") in pairs and ("flat", "flex") in pairs and ("flat", "dense") not in pairs
    assert ("ffd", "varlen") not in pairs and ("pad", "varlen") not in pairs  # varlen: once, as flat
    flat = pairs[("flat", "varlen")]
    assert flat.num_bins == 3 and flat.padded_tokens == 0 and flat.efficiency == 1.0
    assert flat.flops == pytest.approx(flat.useful_flops)
    assert flat.capacity == pytest.approx(lengths.sum() / 3)  # mean over batches of each batch's total
    # the same kernel on ffd's rows padded to their longest row (gpu_runner's varlen) costs more
    cm = CostModel("sheared-llama-1.3b", "h100", make_attention("varlen", pad_rows=True))
    padded_rows = sum(cm.cost(packers.make_packer("ffd").pack(b, int(b.max()))).flops for b in np.split(lengths, 3))
    assert padded_rows > flat.flops
