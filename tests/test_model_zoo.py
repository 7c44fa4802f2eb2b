"""Conformance over the installed transformers' causal-LM zoo, and the support decision.

For every causal-LM model type that builds tiny (tests/zoo_models.py), every path (prefill
dense / flex / varlen, generate, the engine with attention="torch") either equals each
prompt run alone (logits and K/V, greedy tokens; fp32, tests/zoo_check.TOL) or raises
`UnsupportedModelError`: never another exception, never a silent difference. The committed
docs/support_matrix.md must match what the library decides (when it was generated with
this transformers version), so it cannot go stale.
"""

from __future__ import annotations

import pytest
import torch

from gpu_runner.support import (
    PATHS,
    PROVEN,
    VERSION_DEPENDENT,
    Refusal,
    UnsupportedModelError,
    local_window,
    refusal,
    require_supported,
    supported_paths,
)
from gpu_runner.support import model_type as library_type
from gpu_runner.support_table import WINDOWED_VERSION_DEPENDENT
from tests.zoo_check import WINDOWED_LENGTHS, check_path
from tests.zoo_matrix import MATRIX, WINDOWED_PATHS, cell, parse, quiet, windowed_model
from tests.zoo_models import build_tiny, causal_lm_types

TYPES = causal_lm_types()


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    quiet()
    yield
    torch.set_num_threads(threads)


def _committed() -> tuple[str, dict[str, dict[str, str]]]:
    return parse(MATRIX.read_text())


@pytest.mark.parametrize("model_type", TYPES)
def test_every_path_is_exact_or_refused(model_type):
    model = build_tiny(model_type)
    if isinstance(model, str):
        for path in PATHS:  # nothing of a type we could not build may be claimed proven
            assert model_type not in PROVEN[path], f"{model_type} is proven on {path} but does not build"
        pytest.skip(model)
    import transformers

    version, rows = _committed()
    for path in PATHS:
        outcome = check_path(model, path)
        assert outcome.kind in ("exact", "refused"), f"{model_type} / {path}: {outcome.kind}: {outcome.detail}"
        expected = cell(model, path)
        if outcome.kind == "exact" and expected != "exact" and library_type(model) in VERSION_DEPENDENT[path]:
            continue  # exact here, not under another measured transformers version: refused everywhere
        assert (outcome.kind == "exact") == (expected == "exact"), (model_type, path, outcome, expected)
        if version == transformers.__version__:
            assert rows.get(model_type, {}).get(path) == expected, (
                f"docs/support_matrix.md is stale for {model_type} / {path}: "
                "regenerate with `python -m tests.zoo_matrix --write`"
            )


def test_matrix_lists_every_type_of_its_version():
    import transformers

    version, rows = _committed()
    if version != transformers.__version__:
        pytest.skip(f"matrix generated with transformers {version}, installed {transformers.__version__}")
    built = {t for t in TYPES if not isinstance(build_tiny(t), str)}
    assert set(rows) == built


def test_refusal_names_type_feature_and_alternatives():
    model = build_tiny("gemma4_text")  # a QK-norm of a layer the engine has not (Gemma 4)
    with pytest.raises(UnsupportedModelError, match=r"'engine' .*'gemma4_text' \(QK-norm\).*proven exact for it: dense"):
        require_supported(model, "engine")
    assert "engine" not in supported_paths(model) and "dense" in supported_paths(model)
    assert issubclass(UnsupportedModelError, ValueError)


@pytest.mark.parametrize("model_type", [
    "qwen3", "granite", "phi3", "gemma", "olmo2", "ministral3", "arcee", "apertus", "apertus1p5_text", "smollm3",
    "olmo3", "exaone4", "helium", "ernie4_5", "glm", "glm4", "gemma3_text", "hyperclovax", "hunyuan_v1_dense",
    "nanochat",
])
def test_engine_takes_the_widened_families(model_type):
    """Qwen3 (QK-norm), Granite (multipliers), Phi-3 (fused weights), Gemma (GeLU-tanh,
    (1 + w) norms, scaled embedding), OLMo2 (post-norms, whole-projection QK-norm);
    Ministral 3 (yarn: tables from the rotary module), Arcee (ReLU^2, not gated), Apertus
    (xIELU, per-head QK-norm), SmolLM3 (NoPE layers), OLMo 3 / EXAONE 4 (post-norms,
    QK-norm, sliding layers, EXAONE 4's NoPE global layers), Helium / ERNIE 4.5 (interleaved
    RoPE), GLM / GLM-4 (partial interleaved RoPE, fused gate_up, GLM-4's extra norms),
    Gemma 3 (sandwich norms, (1 + w) QK-norm, query_pre_attn_scalar, local / global RoPE),
    HyperCLOVA X (peri-layer norms, multipliers), HunYuan (per-head QK-norm after RoPE),
    NanoChat (weightless norms, embedding norm, RoPE by minus the angle, logit soft-cap):
    the engine path is proven and accepted."""
    assert "engine" in supported_paths(build_tiny(model_type))


def test_attention_outside_the_interface_is_refused_everywhere():
    model = build_tiny("gpt_neo")
    assert supported_paths(model) == ()
    found = refusal(model, "dense")
    assert found is not None and "attention" in found.feature and "no path" in found.message()


def test_recurrent_state_is_named():
    model = build_tiny("jamba")
    found = refusal(model, "flex")
    assert found is not None and found.feature == "recurrent/SSM state"


def test_auto_picks_flex_where_dense_cannot_run():
    import gpu_runner

    model = build_tiny("gemma2")
    if isinstance(model, str) or "gemma2" not in PROVEN["flex"]:
        pytest.skip("gemma2 not built or not proven on flex")
    assert "dense" not in supported_paths(model)
    result = gpu_runner.prefill(model, [[5, 6, 7], [8, 9]])
    assert result.backend == "flex"


def test_prompt_longer_than_the_local_window_runs_where_windowed_masks_are_proven():
    from transformers import AutoModelForCausalLM

    from tests.test_runner_support import model_config

    model = AutoModelForCausalLM.from_config(model_config("mistral", sliding_window=4)).eval()
    assert local_window(model.config) == 4
    assert refusal(model, "dense", lengths=[5]) is None and refusal(model, "flex", lengths=[5]) is None
    found = refusal(model, "varlen", lengths=[5])
    assert found.feature == "local attention" and "dense" in found.alternatives
    assert refusal(model, "engine", lengths=[5]).feature == "local attention"
    assert refusal(model, "varlen", lengths=[4]) is None
    model.config.use_sliding_window = False
    assert local_window(model.config) is None


@pytest.mark.parametrize("model_type", TYPES)
def test_prompts_longer_than_a_tiny_window_are_exact_or_refused(model_type):
    """The type built with 4-token windows / chunks, prompts of up to 9 tokens: every runner
    path and generate is exact (windowed masks) or refused, as the library decides."""
    model = windowed_model(model_type)
    if model is None:
        pytest.skip("no local window in its tiny config")
    for path in WINDOWED_PATHS:
        outcome = check_path(model, path, lengths=WINDOWED_LENGTHS)
        assert outcome.kind in ("exact", "refused"), f"{model_type} / {path}: {outcome.kind}: {outcome.detail}"
        expected = refusal(model, path, lengths=WINDOWED_LENGTHS) is None
        if outcome.kind == "exact" and not expected and library_type(model) in (
            VERSION_DEPENDENT[path] | WINDOWED_VERSION_DEPENDENT[path]
        ):
            continue  # exact here, not under another measured transformers version
        assert (outcome.kind == "exact") == expected, (model_type, path, outcome)


def test_refusal_validates_and_unknown_path_is_a_value_error():
    with pytest.raises(ValueError, match="unknown path"):
        Refusal("nope", "llama", "x", "y")
    with pytest.raises(ValueError, match="feature and a detail"):
        Refusal("dense", "llama", "", "y")
    with pytest.raises(ValueError, match="unknown path"):
        require_supported(build_tiny("llama"), "fast")


@pytest.mark.parametrize(
    "field,value,feature",
    [
        ("hidden_act", "gelu", "non-SiLU MLP"),
        ("rope_interleave", True, "interleaved RoPE"),
        ("embedding_multiplier", 12.0, "embedding_multiplier"),
        ("attention_multiplier", 0.5, "attention_multiplier"),
        ("logits_scaling", 4.0, "logits_scaling"),
        ("attn_logit_softcapping", 50.0, "attn_logit_softcapping"),
        ("pretraining_tp", 2, "pretraining_tp"),
    ],
)
def test_engine_refuses_config_fields_it_does_not_implement(field, value, feature):
    """A Llama whose config carries a field the engine's kernels do not apply is refused
    by name (the allowlist reads the config, not the class alone)."""
    from transformers import AutoModelForCausalLM

    from tests.test_runner_support import model_config

    model = AutoModelForCausalLM.from_config(model_config("llama")).eval()
    assert refusal(model, "engine") is None
    if field == "hidden_act":  # the activation is read from the MLP's module, built from the config
        model = AutoModelForCausalLM.from_config(model_config("llama", hidden_act=value)).eval()
    else:
        setattr(model.config, field, value)
    found = refusal(model, "engine")
    assert found is not None and found.feature == feature, found
    assert "dense" in found.alternatives
