"""CPU parity of `gpu_runner.score` / `score_rolling` with lm-evaluation-harness's own HFLM
(fp32, tiny random Llama / Mistral / Qwen2 models): per-request log-likelihoods within 1e-4
and equal greedy flags, in every context-sharing mode; bad input raises one ValueError
naming the request before any device work."""

from __future__ import annotations

import random

import pytest
import torch
from score_support import hflm
from test_runner_support import FAMILIES, MAX_POS, VOCAB, tiny_model

import gpu_runner
from gpu_runner.scoring import rolling_windows

pytest.importorskip("lm_eval")

TOL = 1e-4


def _requests(seed: int) -> list[tuple[list[int], list[int]]]:
    """Multiple-choice questions (4 choices sharing a context, 1- and multi-token), a
    1-token context, repeated identical requests, and one that fills the context window."""
    rng = random.Random(seed)
    ids = lambda n: [rng.randrange(VOCAB) for _ in range(n)]
    out = []
    for q in range(5):
        context = ids(rng.randint(2, 40))
        lengths = [1, 1, 1, 1] if q % 2 == 0 else [rng.randint(1, 9) for _ in range(4)]
        out += [(context, ids(n)) for n in lengths]
    out += [(ids(1), ids(1)), (ids(1), ids(6))]
    out += [out[0], out[5]]  # identical requests
    out.append((ids(MAX_POS - 10), ids(11)))  # fed tokens = MAX_POS: reaches the window
    return out


def _hflm_scores(model, requests):
    lm = hflm(model)
    return lm._loglikelihood_tokens([(("", ""), c, t) for c, t in requests], disable_tqdm=True)


def _greedy_request(model, context: list[int]) -> tuple[list[int], list[int]]:
    """A 3-token continuation that is the model's greedy choice after `context`."""
    tokens = list(context)
    with torch.no_grad():
        for _ in range(3):
            tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return context, tokens[len(context) :]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("share", ["none", "identical", "tree", "auto"])
def test_score_matches_hflm(family, share):
    model = tiny_model(family)
    requests = _requests(seed=FAMILIES.index(family))
    requests.append(_greedy_request(model, requests[0][0]))
    expected = _hflm_scores(model, requests)
    got = gpu_runner.score(model, requests, share_contexts=share, return_token_logprobs=True)
    assert len(got) == len(requests)
    for i, (result, (logprob, greedy)) in enumerate(zip(got, expected)):
        assert abs(result.logprob - logprob) <= TOL, (i, result.logprob, logprob)
        assert result.is_greedy == greedy, i
        assert len(result.token_logprobs) == len(requests[i][1])
        assert abs(sum(result.token_logprobs) - result.logprob) <= 1e-9
    assert got[-1].is_greedy and not all(r.is_greedy for r in got)  # both flags occur


@pytest.mark.parametrize("backend", ["varlen-reference", "flex"])
def test_other_attention_backends_score_the_same(backend):
    # varlen-reference: the CUDA varlen path's plumbing (flat rows, cu_seqlens, no mask) with
    # a reference kernel on CPU; what backend="auto" runs on a GPU for identical / none.
    from test_runner_support import register_reference_varlen_backends

    register_reference_varlen_backends()
    model = tiny_model("mistral")
    requests = _requests(seed=5)
    expected = gpu_runner.score(model, requests, share_contexts="identical", backend="dense")
    got = gpu_runner.score(model, requests, share_contexts="identical", backend=backend)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got, expected)) <= TOL
    assert [a.is_greedy for a in got] == [b.is_greedy for b in expected]


def test_caller_order_and_packer_do_not_change_scores():
    model = tiny_model("qwen2")
    requests = _requests(seed=7)
    forward = gpu_runner.score(model, requests, packer="pad")
    backward = gpu_runner.score(model, requests[::-1], packer="ffd", capacity=200, memory_budget_bytes=1_200_000)
    for a, b in zip(forward, backward[::-1]):
        assert abs(a.logprob - b.logprob) <= TOL and a.is_greedy == b.is_greedy
    assert forward[0].token_logprobs is None


def test_identical_and_tree_feed_fewer_tokens():
    from gpu_runner.score_requests import layout_requests, validate_requests

    requests = _requests(seed=3)
    checked = validate_requests(requests, vocab_size=VOCAB, max_input_tokens=MAX_POS)
    fed = {share: layout_requests(checked, share).num_fed_tokens for share in ("none", "identical", "tree")}
    assert fed["tree"] < fed["identical"] < fed["none"]
    four = validate_requests(requests[:4], vocab_size=VOCAB, max_input_tokens=MAX_POS)
    one_token = layout_requests(four, "identical")  # 4 one-token choices of one context
    assert one_token.num_segments == 1 and one_token.unique_offset.size == 1


def test_auto_share_picks_tree_only_where_it_saves_tokens():
    from gpu_runner.score_requests import auto_share, validate_requests

    rng = random.Random(2)
    ids = lambda n: [rng.randrange(VOCAB) for _ in range(n)]
    contexts = [ids(30) for _ in range(3)]
    one_token = [(c, ids(1)) for c in contexts for _ in range(4)]  # MMLU-shaped: nothing to gain
    endings = [(c, ids(12)) for c in contexts for _ in range(4)]  # HellaSwag-shaped
    unrelated = [(ids(30), ids(12)) for _ in range(8)]
    check = lambda r: validate_requests(r, vocab_size=VOCAB, max_input_tokens=MAX_POS)
    assert auto_share(check(one_token)) == "identical"
    assert auto_share(check(endings)) == "tree"
    assert auto_share(check(unrelated)) == "identical"


@pytest.mark.parametrize("family", FAMILIES)
def test_score_rolling_matches_hflm(family):
    from lm_eval.api.instance import Instance
    from score_support import random_text, word_tokenizer

    model = tiny_model(family)
    rng = random.Random(11)
    strings = [random_text(rng, n) for n in (5, 127, 128, 300)]  # 1 window, edges, 3 windows
    lm = hflm(model)
    expected = lm.loglikelihood_rolling(
        [Instance("loglikelihood_rolling", {}, (s,), i) for i, s in enumerate(strings)], disable_tqdm=True
    )
    texts = [lm.tok_encode(s) for s in strings]
    got = gpu_runner.score_rolling(model, texts, prefix_token_id=word_tokenizer().bos_token_id)
    assert max(abs(a - b) for a, b in zip(got, expected)) <= TOL


def test_rolling_windows_are_lm_evals():
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tokens = list(range(3, 40))
    for max_length in (1, 4, 10, 37, 50):
        for context_len in {1, min(3, max_length)}:
            want = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, max_length, context_len)]
            assert rolling_windows(tokens, 1, max_length, context_len) == want
    assert rolling_windows([], 1, 8) == []


class _Untouchable(torch.nn.Module):
    """Fails if anything runs the model: bad input must be caught first."""


@pytest.mark.parametrize(
    ("requests", "match"),
    [
        ([([1, 2], [])], "request 0 has an empty continuation"),
        ([([1], [2]), ([], [3])], "request 1 has an empty context"),
        ([([1], [2]), ([1, 2], [VOCAB])], f"request 1 continuation has token id {VOCAB} outside"),
        ([([-1], [2])], "request 0 context has token id -1 outside"),
        ([([1] * MAX_POS, [2, 3])], f"request 0 feeds {MAX_POS + 1} tokens"),
        ("not a list", "requests must be a list"),
        ([], "requests is empty"),
        ([([1], [2]), [1, 2]], "request 1 context must be a list of token ids, got int"),
        ([([1], [2]), ([1], [2], [3])], "request 1 must be a"),
        ([([1, True], [2])], "request 0 context holds True \\(bool\\)"),
        ([([1], [2.0])], "request 0 continuation holds 2.0"),
        ([([1], "ab")], "request 0 continuation must be a list of token ids"),
        ([(torch.tensor([1.5]), [2])], "request 0 context must be a 1-D integer tensor"),
    ],
)
def test_bad_input_names_the_request(requests, match, monkeypatch):
    model = tiny_model("llama")
    calls = []
    monkeypatch.setattr(type(model.model), "forward", lambda *a, **k: calls.append(1))
    with pytest.raises(ValueError, match=match):
        gpu_runner.score(model, requests)
    assert not calls


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"share_contexts": "sometimes"}, "share_contexts must be"),
        ({"share_contexts": "tree", "backend": "flex"}, "needs a tree mask"),
        ({"backend": "nope"}, "unknown attention backend"),
        ({"capacity": 3}, "capacity 3 is below"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ValueError, match=match):
        gpu_runner.score(tiny_model("llama"), [([1, 2, 3, 4], [5])], **options)


@pytest.mark.parametrize(
    ("texts", "options", "match"),
    [
        ([[1, 2], []], {}, "text 1 is empty"),
        ([[1, VOCAB]], {}, f"text 0 has token id {VOCAB} outside"),
        ([[1, 2]], {"max_length": MAX_POS + 1}, "max_length must be"),
        ([[1, 2]], {"prefix_token_id": True}, "prefix_token_id must be"),
        ("abc", {}, "texts must be"),
    ],
)
def test_score_rolling_bad_input(texts, options, match):
    options = {"prefix_token_id": 1, **options}
    with pytest.raises(ValueError, match=match):
        gpu_runner.score_rolling(tiny_model("llama"), texts, **options)
