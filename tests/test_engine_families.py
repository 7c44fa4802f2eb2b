"""The engine's families with every norm weight away from its init (the model zoo's tiny
models keep RMSNorm weights at 1, where a norm's weight, and so where a QK-norm sits or
which (1 + w) offset applies, cannot show): prefill logits and K/V, then generate's engine
path (decode tokens), equal each prompt run alone through HF (`tests.zoo_check`, fp32)."""

from __future__ import annotations

import copy

import pytest
import torch

from tests.zoo_check import check_path
from tests.zoo_matrix import quiet
from tests.zoo_models import build_tiny

# the model types of each family the engine implements (`engine.support.ENGINE_FAMILIES`)
TYPES = ("llama", "mistral", "qwen2", "qwen3", "granite", "phi3", "gemma", "olmo2", "olmo3", "exaone4",
         "gemma3_text", "arcee", "smollm3", "helium", "ernie4_5", "glm", "glm4", "apertus", "apertus1p5_text",
         "hyperclovax", "hunyuan_v1_dense", "nanochat")
_OFFSET = ("gemma", "gemma3_text")  # norms applied as (1 + w)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    quiet()  # tiny models: one thread is fastest
    yield
    torch.set_num_threads(threads)


def _perturbed(model_type: str, **config) -> torch.nn.Module:
    model = copy.deepcopy(build_tiny(model_type))  # build_tiny's models are shared: change a copy
    for name, value in config.items():
        setattr(model.config, name, value)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                low = -0.5 if model_type in _OFFSET else 0.5
                p.copy_(low + torch.rand(p.shape, generator=g))
    return model


@pytest.mark.parametrize("model_type", TYPES)
def test_family_is_exact_with_trained_norm_weights(model_type):
    import gpu_runner

    model = _perturbed(model_type)
    try:
        outcome = check_path(model, "engine")
    finally:
        gpu_runner.clear_generation_cache(model)
    assert outcome.kind == "exact", outcome


def test_final_logit_softcapping_is_applied():
    """NanoChat's soft-cap, set low enough that it changes the logits beyond the tolerance."""
    import gpu_runner

    model = _perturbed("nanochat", final_logit_softcapping=0.3)
    try:
        outcome = check_path(model, "engine")
    finally:
        gpu_runner.clear_generation_cache(model)
    assert outcome.kind == "exact", outcome
