"""The engine's RoPE plan (`gpu_runner.engine.rope`): the head-dim permutation that maps
interleaved / partial RoPE onto the half-split kernels, the per-layer tables read from the
model's rotary module (static scalings, NoPE layers, per-layer-kind bases), and the
refusals around them; then the families that need them through the Triton kernels in the
CPU interpreter (the kernels' inputs: permuted weights, per-layer and identity tables).
The exact fp32 proof of each family, prefill and decode, is the model-zoo test."""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from gpu_runner.engine.reference import rope_store_torch
from gpu_runner.engine.rope import head_permutation, rope_plan, to_model_order
from gpu_runner.support import UnsupportedModelError, refusal
from tests.conftest import REPO_ROOT
from tests.zoo_models import build_tiny

_YARN = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0, "original_max_position_embeddings": 64}


def _llama(**fields):
    from transformers import AutoModelForCausalLM

    from tests.test_runner_support import model_config

    return AutoModelForCausalLM.from_config(model_config("llama", **fields)).eval()


def test_head_permutation_maps_model_pairs_onto_half_split():
    assert head_permutation(8, 8, interleaved=False) is None  # Llama: the kernels' own pairs
    assert head_permutation(8, 8, interleaved=True) == [0, 2, 4, 6, 1, 3, 5, 7]  # (2i, 2i + 1) -> (i, i + 4)
    # GLM: interleaved over the first 4 dims, dims 4..7 pass through (identity table columns 2, 3)
    assert head_permutation(8, 4, interleaved=True) == [0, 2, 4, 5, 1, 3, 6, 7]
    assert head_permutation(8, 4, interleaved=False) == [0, 1, 4, 5, 2, 3, 6, 7]
    with pytest.raises(ValueError, match="even"):
        head_permutation(8, 3, interleaved=True)


@pytest.mark.parametrize("model_type", ["helium", "ernie4_5", "glm", "glm4"])
def test_permuted_half_split_rope_equals_the_models_own(model_type):
    """q permuted, roped by the engine's half-split reference kernel with the plan's table,
    put back in the model's order == the model's own apply_rotary_pos_emb (interleaved,
    partial for GLM)."""
    model = build_tiny(model_type)
    hf = importlib.import_module(type(model).__module__)
    d = model.config.head_dim
    plan = rope_plan(model, max_positions=32, head_dim=d, interleaved=True, layer_ropes=[True], layer_types=None)
    assert plan.perm is not None
    torch.manual_seed(0)
    t, hq = 9, 2
    q = torch.randn(t, hq, d)
    pos = torch.randint(0, 32, (t,))
    cos, sin = model.model.rotary_emb(q, pos[None])
    want, _ = hf.apply_rotary_pos_emb(q.transpose(0, 1)[None], q.transpose(0, 1)[None], cos, sin)
    qkv = torch.cat([q.index_select(-1, plan.perm).reshape(t, -1), torch.zeros(t, 2 * d)], dim=1)
    k_out, v_out = torch.empty(t, 1, d), torch.empty(t, 1, d)
    got = rope_store_torch(qkv, pos, *plan.tables[0], k_out, v_out, hq)
    torch.testing.assert_close(to_model_order(got.clone(), plan.inverse), want[0].transpose(0, 1))


def test_tables_come_from_the_rotary_module_per_layer():
    # yarn: the module's own frequencies and attention_scaling (rounded as HF rounds them)
    model = _llama(rope_parameters=_YARN)
    rotary = model.model.rotary_emb
    assert rotary.attention_scaling > 1.05
    d = model.config.head_dim
    plan = rope_plan(model, max_positions=40, head_dim=d, interleaved=False, layer_ropes=[True, True], layer_types=None)
    cos, sin = rotary(torch.empty(1), torch.arange(40)[None])
    assert plan.layer_table == (0, 0) and plan.perm is None
    torch.testing.assert_close(plan.tables[0][0], cos[0, :, : d // 2], rtol=0, atol=0)
    torch.testing.assert_close(plan.tables[0][1], sin[0, :, : d // 2], rtol=0, atol=0)
    # SmolLM3's NoPE layer reads the identity table
    from gpu_runner.engine.family import engine_family, layer_ropes

    model = build_tiny("smollm3")
    assert layer_ropes(model, engine_family(model)) == [True, False]
    plan = rope_plan(model, max_positions=16, head_dim=16, interleaved=False, layer_ropes=[True, False],
                     layer_types=None)
    cos, sin = plan.tables[plan.layer_table[1]]
    assert plan.layer_table == (0, 1) and bool((cos == 1).all()) and bool((sin == 0).all())
    # Gemma 3: local and global layers have tables of their own bases
    model = build_tiny("gemma3_text")
    kinds = list(model.config.layer_types)
    plan = rope_plan(model, max_positions=16, head_dim=16, interleaved=False, layer_ropes=[True, True],
                     layer_types=kinds)
    assert plan.layer_table == (0, 1) and not torch.equal(plan.tables[0][0], plan.tables[1][0])
    want, _ = model.model.rotary_emb(torch.empty(1), torch.arange(16)[None], layer_type=kinds[1])
    torch.testing.assert_close(plan.tables[1][0], want[0, :, :8], rtol=0, atol=0)


def test_a_llama_with_yarn_is_exact_through_the_engine():
    """A static scaling with an attention factor (yarn's) the engine did not apply before its
    tables came from the rotary module: logits and K/V equal each prompt run alone."""
    from gpu_runner.engine import PrefillEngine
    from tests.zoo_check import _compare_prefill

    torch.manual_seed(0)
    model = _llama(rope_parameters=_YARN)
    assert refusal(model, "engine") is None
    prompts = [[5, 9, 2, 7, 31, 4], [8], [3, 3, 10]]
    out = PrefillEngine(model, token_bucket=16, cuda_graphs=False, share_weights=False, attention="torch").prefill(prompts)
    assert _compare_prefill(model, prompts, out.logits, [out.prompt_kv(i) for i in range(3)]) is None


@pytest.mark.parametrize(
    "fields,feature",
    [
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}}, "RoPE scaling"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}},
         "partial RoPE"),
    ],
)
def test_dynamic_and_partial_rope_are_refused_outside_their_families(fields, feature):
    found = refusal(_llama(**fields), "engine")
    assert found is not None and found.feature == feature, found


def test_family_switches_the_engine_lacks_are_refused():
    model = copy.deepcopy(build_tiny("gemma3_text"))  # build_tiny's models are shared: change a copy
    assert refusal(model, "engine") is None
    model.config.use_bidirectional_attention = True  # Gemma 3's bidirectional local mask
    assert refusal(model, "engine").feature == "use_bidirectional_attention"
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(build_tiny("hyperclovax").config)
    cfg.use_post_norm = False
    plain = AutoModelForCausalLM.from_config(cfg).eval()
    assert refusal(plain, "engine").feature.startswith("norm post_norm1")  # nn.Identity, not the family's norm


@pytest.mark.parametrize("model_type", ["gemma3_text", "olmo3", "exaone4"])
def test_prompt_over_the_sliding_window_is_refused_at_call_time(model_type):
    """Sliding-window layers equal full attention only while a prompt fits the window."""
    from gpu_runner.engine import PrefillEngine

    model = build_tiny(model_type)
    window = model.config.sliding_window
    eng = PrefillEngine(model, token_bucket=16, cuda_graphs=False, share_weights=False, attention="torch")
    eng.prefill([[5] * window, [6, 7]])  # fits
    with pytest.raises(UnsupportedModelError, match="sliding window"):
        eng.prefill([[5] * (window + 1)])


_INTERPRETED = textwrap.dedent(
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    import gpu_runner
    from gpu_runner.cache import cache_layers_kv, output_cache
    from gpu_runner.engine import PrefillEngine

    SMALL = dict(vocab_size=97, hidden_size=256, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                 num_key_value_heads=4, head_dim=32, max_position_embeddings=128, pad_token_id=0)
    CASES = [  # (model type, config, fused_qkv: the QKV-RoPE epilogue where it fits, else rope_attention)
        ("helium", {}, True),  # interleaved RoPE: permuted Q / K rows, through the QKV-RoPE epilogue ...
        ("helium", {}, False),  # ... and through rope_attention
        ("glm4", {"partial_rotary_factor": 0.5}, True),  # partial interleaved: permutation + identity table part
        ("gemma3_text", {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 64,
                         "query_pre_attn_scalar": 24}, True),  # per-layer tables (local / global bases)
        ("smollm3", {"no_rope_layers": [1, 0]}, True),  # a NoPE layer: the identity table
        ("ministral3", {}, True),  # yarn: the table from the model's rotary module, attention_scaling in it
        ("hunyuan_v1_dense", {}, True),  # QK-norm after RoPE: rope_store, the norm, then packed_attention
        ("nanochat", {}, True),  # RoPE by minus the angle: the -sin table
    ]
    EPILOGUE = ("helium", "glm4", "ministral3")  # one table for every layer and no QK-norm
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 90, (n,), generator=g).tolist() for n in (7, 3, 11, 1)]
    for model_type, extra, fused_qkv in CASES:
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **SMALL, **extra)).eval()
        with torch.no_grad():  # norm weights away from their init, so that they are tested
            for name, p in model.named_parameters():
                if "norm" in name:
                    p.uniform_(0.5, 1.5)
        eng = PrefillEngine(model, token_bucket=8, cuda_graphs=False, share_weights=False, attention="packed",
                            fused_qkv=fused_qkv)
        assert any(w.qkv_rope for w in eng.layers) == (fused_qkv and model_type in EPILOGUE), model_type
        out = eng.prefill(prompts)
        for i, prompt in enumerate(prompts):
            with torch.no_grad():
                ref = model(input_ids=torch.tensor([prompt]), use_cache=True)
            torch.testing.assert_close(out.logits[i], ref.logits[0, -1], atol=1e-4, rtol=1e-4)
            for (k, v), (rk, rv) in zip(out.prompt_kv(i), cache_layers_kv(output_cache(ref))):
                torch.testing.assert_close(k, rk[0], atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(v, rv[0], atol=1e-4, rtol=1e-4)
        # generate's engine path: this prefill, then the decode kernels (split-KV attention)
        got = gpu_runner.generate(model, prompts[:2], 2, path="engine", eos_token_id=[], pad_token_id=0)
        for prompt, tokens in zip(prompts[:2], got):
            ids = torch.tensor([prompt])
            want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, min_new_tokens=2,
                                  do_sample=False, pad_token_id=0)[0, len(prompt):].tolist()
            assert tokens == want, (model_type, tokens, want)
        print(model_type, "ok", flush=True)
    print("families ok")
    """
)


def test_families_through_the_triton_kernels_in_the_interpreter():
    """Permuted Q / K weights (interleaved and partial RoPE), per-layer and identity tables,
    a yarn table, and a QK-norm between RoPE and attention through the engine's Triton prefill (QKV-RoPE epilogue, rope_attention)
    and decode kernels in Triton's CPU interpreter: logits and K/V equal HF per prompt."""
    pytest.importorskip("triton")
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0 and "families ok" in proc.stdout, proc.stdout + proc.stderr[-4000:]
