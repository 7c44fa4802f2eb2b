"""Cost model: hand-computed FLOPs, bytes and times on a tiny spec; specs and GPU tables;
flex tile counts against brute force; padded >= packed; monotone in batch size."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import packers
from packers import Packing
from simulator import CostModel, GPUSpec, ModelSpec, RowLayout, get_gpu, get_model, make_attention
from simulator.run import flat_packing
from simulator.specs import MODELS

TINY = ModelSpec(
    name="tiny", num_layers=2, hidden_size=8, num_heads=2, num_kv_heads=1, head_dim=4,
    intermediate_size=16, vocab_size=10,
)  # fmt: skip
TOY_GPU = GPUSpec("toy", peak_flops=1000.0, memory_bandwidth_bytes_per_s=100.0, memory_bytes=10**9)


def _packing(lengths, bins, capacity):
    meta = {"lower_bound": 1, "status": "heuristic", "solve_time_s": 0.0}
    return Packing(lengths=tuple(lengths), capacity=capacity, bins=bins, packer="hand", meta=meta)


# lengths (3, 2, 4), capacity 5: row 0 = prompts 0, 1 (load 5), row 1 = prompt 2 (load 4); W = 5.
HAND = _packing((3, 2, 4), ((0, 1), (2,)), 5)


def test_tiny_spec_sizes_by_hand():
    # Q 8x8 + K 8x4 + V 8x4 + O 8x8 + gated MLP 3 * 8x16 = 64 + 32 + 32 + 64 + 384
    assert TINY.layer_matmul_params == 576
    # 2 layers * (576 + 2 norms of 8) + final norm 8 + embeddings and LM head 2 * 10 * 8
    assert TINY.num_params == 1352
    assert TINY.kv_bytes_per_token == 2 * 2 * 4 * 2


def test_dense_flops_and_bytes_by_hand():
    c = CostModel(TINY, TOY_GPU, "dense").cost(HAND)
    # linear 2*576*2 = 2304 per token on 2 rows x 5; attention 4*2*4*2 = 64 per pair on
    # 2 rows x 25 pairs; last-token logits 2*8*10 = 160 per prompt on 3 prompts
    assert c.flops == 2304 * 10 + 64 * 50 + 160 * 3
    # useful: 9 real tokens, causal pairs 3*4/2 + 2*3/2 + 4*5/2 = 19
    assert c.useful_flops == 2304 * 9 + 64 * 19 + 160 * 3
    assert (c.forward_tokens, c.real_tokens, c.padded_tokens) == (10, 9, 1)
    assert c.kv_cache_bytes == 32 * 10
    assert c.mask_bytes == 2 * 5 * 5
    assert c.weight_bytes == 1352 * 2


def test_varlen_and_flex_by_hand():
    v = CostModel(TINY, TOY_GPU, "varlen").cost(HAND)
    # ragged rows: 9 real tokens through the linear layers, the 19 causal pairs in attention
    assert v.flops == v.useful_flops == 2304 * 9 + 64 * 19 + 160 * 3
    assert v.padded_tokens == 0 and v.mask_bytes == 4 * 4
    # gpu_runner's varlen on packed rows: the linear layers run the 2 x 5 rectangle
    p = CostModel(TINY, TOY_GPU, make_attention("varlen", pad_rows=True)).cost(HAND)
    assert p.flops == 2304 * 10 + 64 * 19 + 160 * 3 and p.padded_tokens == 1
    flat = CostModel(TINY, TOY_GPU, make_attention("varlen", pad_rows=True)).cost(flat_packing((3, 2, 4)))
    assert flat.flops == flat.useful_flops == v.flops
    assert flat.padded_tokens == 0 and flat.num_bins == 1 and flat.capacity == 9
    f = CostModel(TINY, TOY_GPU, make_attention("flex", block_tokens=2)).cost(HAND)
    # row 0 (prompts [0,3) and [3,5)): query blocks touch 1 + 2 + 2 tiles; row 1: 1 + 2
    assert f.attention_pairs == (5 + 3) * 4
    assert f.mask_bytes == 16 * 2 * (3 + 9)


def test_time_and_forwards_by_hand():
    attn = make_attention(
        "dense", attention_efficiency=0.25, layer_overhead_s=0.1, score_traffic_passes=2.0, score_copies=1.0
    )
    model = CostModel(TINY, TOY_GPU, attn, matmul_efficiency=0.5, elementwise_passes=0.0)
    # per token 2304 / 500 = 4.608 s; per pair 64 / 250 = 0.256 s;
    # per score element 2 passes * 2 heads * 2 bytes * 2 layers / 100 B/s = 0.16 s; per prompt 0.32 s
    row0 = 5 * 4.608 + 25 * 0.256 + 25 * 0.16 + 2 * 0.32
    row1 = 5 * 4.608 + 25 * 0.256 + 25 * 0.16 + 1 * 0.32
    np.testing.assert_allclose(model.row_times_s(HAND), [row0, row1])
    c = model.cost(HAND)
    assert c.forwards == 1
    assert c.est_time_s == pytest.approx(max(row0 + row1, 2704 / 100) + 2 * 0.1)
    # activations of r rows: 128 B/token * tokens + 2 heads * 1 copy * 2 B * 25 per row
    # + mask share 25 per row + fp32 logits 40 B per prompt
    act_one_row = 128 * 5 + 100 + 25 + 40 * 2
    act_two_rows = 128 * 10 + 200 + 50 + 40 * 3
    assert c.activation_peak_bytes == act_two_rows
    assert c.peak_memory_bytes == 2704 + 320 + act_two_rows
    tight = dataclasses.replace(model, memory_budget_bytes=2704 + 320 + act_one_row)
    c2 = tight.cost(HAND)
    assert c2.forwards == 2 and c2.activation_peak_bytes == act_one_row
    assert c2.est_time_s == pytest.approx(row0 + row1 + 2 * 2 * 0.1)  # overhead paid twice
    c3 = dataclasses.replace(model, memory_budget_bytes=2704 + 320 + act_one_row - 1).cost(HAND)
    assert c3.forwards is None and not c3.fits
    # a slow memory (10 B/s): reading the 2704 weight bytes (270.4 s) outlasts the compute
    slow = dataclasses.replace(model, gpu=dataclasses.replace(TOY_GPU, memory_bandwidth_bytes_per_s=10.0))
    compute = 2 * (5 * 4.608 + 25 * 0.256 + 25 * 1.6) + 3 * 0.32
    assert compute < 270.4
    assert slow.cost(HAND).est_time_s == pytest.approx(270.4 + 2 * 0.1)


def test_elementwise_traffic_by_hand():
    attn = make_attention("varlen", layer_overhead_s=0.0)
    base = CostModel(TINY, TOY_GPU, attn, matmul_efficiency=0.5, elementwise_passes=0.0)
    more = dataclasses.replace(base, elementwise_passes=3.0)
    # 3 passes * 2 bytes * (8 + 16) * 2 layers = 288 bytes per token at 100 B/s; ragged rows of 5 and 4 tokens
    np.testing.assert_allclose(more.row_times_s(HAND) - base.row_times_s(HAND), [5 * 2.88, 4 * 2.88])
    padded = dataclasses.replace(more, attention=make_attention("varlen", layer_overhead_s=0.0, pad_rows=True))
    np.testing.assert_allclose(padded.row_times_s(HAND) - base.row_times_s(HAND), [5 * 2.88, 5 * 2.88 + 2304 / 500])


def test_padded_backend_rejects_packed_rows():
    with pytest.raises(ValueError, match="one prompt per row"):
        CostModel(TINY, TOY_GPU, "padded").cost(HAND)


def _brute_tiles(lengths, bins, block):
    out = []
    for members in bins:
        doc = [j for j, i in enumerate(members) for _ in range(lengths[i])]
        tiles = {(q // block, k // block) for q in range(len(doc)) for k in range(q + 1) if doc[k] == doc[q]}
        out.append(len(tiles))
    return out


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=12), st.integers(1, 16), st.randoms(use_true_random=False))
def test_flex_tiles_match_brute_force(lengths, block, rnd):
    order = list(range(len(lengths)))
    rnd.shuffle(order)
    cut = sorted(rnd.sample(range(1, len(order)), rnd.randint(0, len(order) - 1))) if len(order) > 1 else []
    bins = tuple(tuple(order[a:b]) for a, b in zip([0, *cut], [*cut, len(order)]))
    packing = _packing(lengths, bins, sum(lengths))
    got = RowLayout.from_packing(packing).touched_tiles_per_row(block)
    assert got.tolist() == _brute_tiles(lengths, bins, block)


def test_tables_and_unknown_names():
    assert get_model("Llama-2-7B") is MODELS["llama-2-7b"]
    assert abs(MODELS["llama-2-7b"].num_params - 6.74e9) < 0.01e9  # published 6.74B
    assert abs(MODELS["llama-3-8b"].num_params - 8.03e9) < 0.01e9  # published 8.03B
    for name in ("h100", "h200", "a100-80gb", "a6000", "l4"):
        assert get_gpu(name).name == name
    with pytest.raises(ValueError, match="unknown GPU .*valid: a100-80gb"):
        get_gpu("tpu")
    with pytest.raises(ValueError, match="unknown model .*valid: "):
        get_model("gpt-5")
    with pytest.raises(ValueError, match="not a multiple"):
        dataclasses.replace(TINY, num_kv_heads=3)
    with pytest.raises(ValueError, match="positive"):
        dataclasses.replace(TINY, hidden_size=0)
    with pytest.raises(ValueError, match="unknown attention"):
        make_attention("paged")


def test_from_hf_config_matches_table():
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    llama = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)  # fmt: skip
    sheared = LlamaConfig(hidden_size=2048, intermediate_size=5504, num_hidden_layers=24, num_attention_heads=16,
                          num_key_value_heads=16, vocab_size=32000, max_position_embeddings=4096)  # fmt: skip
    mistral = MistralConfig(vocab_size=32000, max_position_embeddings=32768)
    qwen = Qwen2Config(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                       num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768)  # fmt: skip
    cases = [(llama, "llama-2-7b"), (sheared, "sheared-llama-1.3b"), (mistral, "mistral-7b"), (qwen, "qwen2.5-7b")]
    for config, name in cases:
        spec = ModelSpec.from_hf_config(config, name=name)
        assert spec == MODELS[name], name
    as_dict = ModelSpec.from_hf_config(llama.to_dict(), name="llama-2-7b")
    assert as_dict == MODELS["llama-2-7b"]
    with pytest.raises(ValueError, match="lacks hidden_size"):
        ModelSpec.from_hf_config({"vocab_size": 10})
    fp32 = LlamaConfig(**{**sheared.to_dict(), "dtype": "float32"})
    assert ModelSpec.from_hf_config(fp32).param_bytes == 4
    legacy = {k: v for k, v in llama.to_dict().items() if k != "dtype"} | {"torch_dtype": "float32"}
    assert ModelSpec.from_hf_config(legacy).param_bytes == 4
    with pytest.raises(ValueError, match="dtype"):
        ModelSpec.from_hf_config({**llama.to_dict(), "dtype": "int4"})


def test_imports_do_not_pull_torch():
    code = (
        "import sys, packers, simulator, simulator.cli, simulator.run, simulator.report\n"
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


MMLU = np.loadtxt(__file__.rsplit("/", 2)[0] + "/simulator/data/mmlu.txt", dtype=np.int64)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("model", ["sheared-llama-1.3b", "llama-2-7b"])
def test_padded_costs_at_least_any_packing(seed, model):
    batch = np.random.default_rng(seed).choice(MMLU, 64, replace=False)
    pad = packers.make_packer("pad").pack(batch, int(batch.max()))
    baseline = CostModel(model, "h100", "padded").cost(pad)
    for name in packers.available_packers():
        if name == "ilp":
            continue
        packing = packers.make_packer(name).pack(batch, int(batch.max()))
        for attention in ("dense", "flex", "varlen"):
            cm = CostModel(model, "h100", attention)
            packed, padded_same_backend = cm.cost(packing), cm.cost(pad)
            assert packed.flops <= baseline.flops and packed.flops <= padded_same_backend.flops * (1 + 1e-12), (name, attention)
            assert packed.est_time_s <= padded_same_backend.est_time_s * (1 + 1e-12), (name, attention)
            assert packed.peak_memory_bytes <= padded_same_backend.peak_memory_bytes, (name, attention)
            assert packed.useful_flops == pytest.approx(baseline.useful_flops)


@pytest.mark.parametrize("attention", ["padded", "dense", "flex", "varlen"])
def test_monotone_in_batch_size(attention):
    prompts = np.random.default_rng(7).choice(MMLU, 256, replace=False)
    cm = CostModel("llama-2-7b", "h100", attention)
    costs = []
    for b in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        batch = prompts[:b]
        if attention == "varlen":
            packing = flat_packing(batch)
        else:
            packing = packers.make_packer("pad" if attention == "padded" else "ffd").pack(batch, int(prompts.max()))
        costs.append(cm.cost(packing))
    times = [c.est_time_s for c in costs]
    useful = [c.useful_flops for c in costs]
    assert all(a <= b for a, b in zip(useful, useful[1:]))
    assert all(a < b for a, b in zip(useful, useful[1:]))  # every prompt adds work
    if attention in ("padded", "varlen"):  # padded rows / one flat row: more prompts, more time
        assert all(a <= b for a, b in zip(times, times[1:])), times
    assert times[-1] > times[0]


@pytest.mark.parametrize("attention", ["padded", "dense", "flex", "varlen"])
def test_row_times_add_up_to_the_batch_time(attention):
    batch = np.random.default_rng(11).choice(MMLU, 96, replace=False)
    packing = packers.make_packer("pad" if attention == "padded" else "ffd").pack(batch, int(batch.max()))
    cm = CostModel("llama-2-7b", "h100", attention)
    rows = cm.row_times_s(packing)
    c = cm.cost(packing)
    assert rows.shape == (packing.num_bins,) and (rows > 0).all()
    weight_read_s = c.weight_bytes / cm.gpu.memory_bandwidth_bytes_per_s
    assert c.est_time_s == pytest.approx(max(rows.sum(), weight_read_s) + cm.forward_overhead_s())
    # rectangle rows all run at width W: rows with the same prompt count cost the same
    if attention in ("dense", "padded"):
        prompts = np.bincount(packing.assignment(), minlength=packing.num_bins)
        same = prompts == prompts[0]
        np.testing.assert_allclose(rows[same], rows[0])


@pytest.mark.parametrize(
    "label,name",
    [("NVIDIA H100 80GB HBM3", "h100"), ("nvidia-h200", "h200"), ("NVIDIA A100-SXM4-80GB", "a100-80gb"),
     ("NVIDIA L4", "l4"), ("NVIDIA RTX A6000", "a6000")],
)
def test_match_gpu_names_the_table_gpu(label, name):
    from simulator.gpus import match_gpu

    assert match_gpu(label) == name


@pytest.mark.parametrize("label", ["NVIDIA L40S", "tpu-v5", "h100 h200"])
def test_match_gpu_refuses_unknown_or_ambiguous_hardware(label):
    from simulator.gpus import match_gpu

    with pytest.raises(ValueError, match="GPU"):
        match_gpu(label)
