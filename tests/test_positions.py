"""Position rules (gpu_runner.positions): RoBERTa-style offsets reproduced per packed prompt,
padding tokens inside a prompt included, for prefill, scoring and generate."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gpu_runner
from gpu_runner.positions import PLAIN, PositionRule, forward_rule, generate_rule
from gpu_runner.support import UnsupportedModelError
from tests.zoo_models import build_tiny

TOL = {"atol": 2e-4, "rtol": 2e-4}


def _roberta():
    model = build_tiny("roberta")
    assert not isinstance(model, str), model
    return model


def test_rule_matches_fairseq_make_positions():
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    pad = 1
    rng = np.random.default_rng(0)
    lengths = np.array([5, 1, 9, 3], dtype=np.int64)
    tokens = rng.integers(0, 4, size=int(lengths.sum())).astype(np.int64)  # many pads among them
    got = PositionRule(first=pad + 1, skip_token=pad).positions(tokens, lengths)
    start = 0
    for n in lengths.tolist():
        alone = RobertaEmbeddings.create_position_ids_from_input_ids(torch.from_numpy(tokens[start : start + n])[None], pad)
        assert got[start : start + n].tolist() == alone[0].tolist()
        start += n
    assert PLAIN.positions(tokens, lengths).tolist() == [i for n in lengths.tolist() for i in range(n)]


def test_rule_validates():
    with pytest.raises(ValueError, match="first position"):
        PositionRule(first=-1)
    with pytest.raises(ValueError, match="skip_token"):
        PositionRule(skip_token=-2)


def test_rules_of_models():
    model = _roberta()
    pad = model.config.pad_token_id
    assert forward_rule(model) == PositionRule(first=pad + 1, skip_token=pad)
    assert generate_rule(model) == PLAIN  # HF generate passes attention_mask.cumsum - 1
    assert forward_rule(build_tiny("llama")) == PLAIN


def test_unknown_position_function_is_refused(monkeypatch):
    model = _roberta()
    embeddings = model.roberta.embeddings
    monkeypatch.setattr(embeddings, "create_position_ids_from_input_ids", lambda ids, pad: ids * 0 + 7)
    with pytest.raises(UnsupportedModelError, match="offset rule"):
        forward_rule(model)


@pytest.mark.parametrize("backend", ["dense", "flex"])
def test_roberta_prefill_with_pad_tokens_inside_prompts_equals_alone(backend):
    model = _roberta()
    pad = model.config.pad_token_id
    prompts = [[5, pad, 9, 11, pad, 7], [pad, 4], [12, 13, 14], [pad]]
    result = gpu_runner.prefill(model, prompts, backend=backend)
    for i, prompt in enumerate(prompts):
        with torch.no_grad():
            out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        torch.testing.assert_close(result.logits[i], out.logits[0, -1], **TOL)
        from gpu_runner.cache import cache_layers_kv, output_cache

        for (k, v), (rk, rv) in zip(result.kv[i], cache_layers_kv(output_cache(out))):
            torch.testing.assert_close(k, rk[0], **TOL)
            torch.testing.assert_close(v, rv[0], **TOL)


def test_roberta_score_equals_alone():
    model = _roberta()
    requests = [([5, 6, 7], [8, 9]), ([10, 11], [12]), ([5, 6, 7], [13, 14, 15])]
    scores = gpu_runner.score(model, requests, path="runner")
    for (context, continuation), got in zip(requests, scores):
        ids = context + continuation
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids[:-1]])).logits[0].float(), -1)
        want = sum(logp[len(context) - 1 + j, t].item() for j, t in enumerate(continuation))
        assert got.logprob == pytest.approx(want, abs=1e-3)
    with pytest.raises(UnsupportedModelError, match="position offset"):
        gpu_runner.score(model, requests, path="runner", share_contexts="tree")


def test_roberta_context_counts_the_offset():
    model = _roberta()
    usable = model.config.max_position_embeddings - model.config.pad_token_id - 1
    with pytest.raises(ValueError, match=f"over the model's context \\({usable}\\)"):
        gpu_runner.prefill(model, [[5] * (usable + 1)])
