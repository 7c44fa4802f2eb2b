"""The engine path of `gpu_runner.score` (`gpu_runner.score_engine`, `engine.scorer`) on CPU
(fp32, the engine's torch attention, no CUDA graphs; the Triton kernels through the
interpreter): per-request log-likelihoods and greedy flags equal the runner path's and
lm-eval HFLM's within 1e-4 for tiny Llama / Mistral / Qwen2, with request sets split over
several flat rows; "auto" picks the runner where the engine does not apply; the scoring
head's chunks; the scorer cached on the model. GPU tests (CUDA graphs) are marked."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_runner_support import FAMILIES, VOCAB, tiny_model
from test_score import _greedy_request, _hflm_scores, _requests

import gpu_runner
from gpu_runner import score_engine
from gpu_runner.engine.family import EngineFamily
from gpu_runner.engine.scorer import EngineScorer, ScoreBatch, score_head

pytest.importorskip("lm_eval")
TOL = 1e-4
REPO_ROOT = Path(__file__).resolve().parents[1]


def _rows_run(monkeypatch) -> list[int]:
    """Records the segment count of every flat row the engine scores."""
    rows: list[int] = []
    run = EngineScorer.run

    def counting(self, batch, shape=None):
        rows.append(int(batch.lengths.size))
        return run(self, batch, shape)

    monkeypatch.setattr(EngineScorer, "run", counting)
    return rows


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("share", ["auto", "none"])
def test_engine_path_matches_runner_and_hflm(family, share, monkeypatch):
    model = tiny_model(family)
    requests = _requests(seed=FAMILIES.index(family))
    requests.append(_greedy_request(model, requests[0][0]))
    expected = _hflm_scores(model, requests)
    runner = gpu_runner.score(model, requests, path="runner", share_contexts=share)
    rows = _rows_run(monkeypatch)
    got = gpu_runner.score(model, requests, path="engine", share_contexts=share, batch_tokens=64,
                           return_token_logprobs=True)
    assert len(rows) >= 3 and sum(rows) >= len({tuple(c) for c, _ in requests})  # several flat rows
    assert len(got) == len(requests)
    for i, (ours, theirs, (logprob, greedy)) in enumerate(zip(got, runner, expected)):
        assert abs(ours.logprob - logprob) <= TOL and abs(ours.logprob - theirs.logprob) <= TOL, i
        assert ours.is_greedy == greedy == theirs.is_greedy, i
        assert len(ours.token_logprobs) == len(requests[i][1])
    assert got[-1].is_greedy and not all(r.is_greedy for r in got)  # both flags occur


def test_one_row_and_many_rows_agree_and_the_scorer_is_cached(monkeypatch):
    model = tiny_model("llama")
    requests = _requests(seed=4)
    rows = _rows_run(monkeypatch)
    one = gpu_runner.score(model, requests, path="engine", batch_tokens=10**6)
    assert len(rows) == 1
    scorer = score_engine.engine_scorer(model)
    many = gpu_runner.score(model, requests, path="engine", batch_tokens=1)  # rows of the longest segment
    assert score_engine.engine_scorer(model) is scorer  # one engine and scorer per model
    assert len(rows) >= 4
    assert max(abs(a.logprob - b.logprob) for a, b in zip(one, many)) <= TOL
    assert [a.is_greedy for a in one] == [b.is_greedy for b in many]
    score_engine.clear_score_cache(model)
    assert score_engine.engine_scorer(model) is not scorer
    gpu_runner.clear_generation_cache(model)
    assert "_prepack_batch_generator" not in model.__dict__


def test_scoring_builds_no_generation_kv_buffer_and_generation_still_gets_one():
    from gpu_runner.generate_engine import PREFILL_TOKENS, cached_engine

    model = tiny_model("llama")
    gpu_runner.score(model, _requests(seed=1), path="engine")
    eng = score_engine.engine_scorer(model).engine
    assert eng._kv.shape[2] == eng.token_bucket  # the smallest bucket: scoring keeps no cache
    assert cached_engine(model)[0] is eng and eng._kv.shape[2] >= PREFILL_TOKENS  # generation's size on asking
    gpu_runner.clear_generation_cache(model)


def test_auto_takes_the_runner_where_the_engine_does_not_apply(monkeypatch):
    def no_engine(*args, **kwargs):
        raise AssertionError("the engine path ran")

    monkeypatch.setattr("gpu_runner.scoring.engine_score", no_engine)
    model = tiny_model("mistral")
    requests = _requests(seed=2)[:8]
    for options in ({}, {"share_contexts": "tree"}, {"backend": "dense"}):  # CPU, tree, a backend
        assert len(gpu_runner.score(model, requests, path="auto", **options)) == 8
    reason = score_engine.engine_score_unsupported(model, share_contexts="auto", backend="auto", need_cuda=True)
    assert "CUDA" in reason
    assert score_engine.engine_score_unsupported(model, share_contexts="auto", backend="auto", need_cuda=False) is None


def test_route_is_the_decision_score_makes(monkeypatch):
    from gpu_runner.score_requests import validate_requests
    from gpu_runner.scoring import Route, route

    model = tiny_model("llama")
    shared = [([5, 6, 7, 8, 9, 10, 11, 12], [c, c + 1, c + 2]) for c in (20, 24, 28, 32)]  # 4 endings of one context
    checked = validate_requests(shared, vocab_size=VOCAB, max_input_tokens=None)
    tree = route(model, checked)  # CPU: no engine for "auto"; the tree feeds 3 contexts fewer
    assert (tree.path, tree.share) == ("runner", "tree") and tree.groups is not None
    assert route(model, checked, share_contexts="identical") == Route("runner", "identical")
    assert route(model, checked, path="engine") == Route("engine", "identical")
    assert route(model, checked, path="engine", share_contexts="none") == Route("engine", "none")
    assert route(model, checked, backend="varlen").share == "identical"  # no tree mask without dense
    monkeypatch.setattr("gpu_runner.scoring.engine_score_unsupported", lambda *a, **k: None)  # as on CUDA
    assert route(model, checked).path == "runner"  # a tree goes to the runner (measured faster)
    assert route(model, checked, share_contexts="identical") == Route("engine", "identical")
    with pytest.raises(ValueError, match="cannot score this: no"):
        monkeypatch.setattr("gpu_runner.scoring.engine_score_unsupported", lambda *a, **k: "no")
        route(model, checked, path="engine")


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"path": "fast"}, "path must be one of"),
        ({"path": "engine", "share_contexts": "tree"}, "cannot score this: .*tree mask"),
        ({"path": "engine", "backend": "flex"}, "cannot score this: backend='flex'"),
        ({"path": "engine", "batch_tokens": 0}, "batch_tokens must be a positive int"),
    ],
)
def test_bad_engine_options(options, match):
    with pytest.raises(ValueError, match=match):
        gpu_runner.score(tiny_model("llama"), [([1, 2, 3, 4], [5])], **options)


def test_engine_path_refuses_a_model_type_it_does_not_support():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=1, n_head=2,
                                                        n_positions=64)).eval()
    with pytest.raises(ValueError, match="model_type 'gpt2'"):
        gpu_runner.score(model, [([1, 2], [3])], path="engine")
    assert len(gpu_runner.score(model, [([1, 2], [3])], path="auto")) == 1


def test_score_head_chunks_equal_one_pass_and_log_softmax():
    torch.manual_seed(0)
    hidden, vocab, t = 16, 50, 40
    eng = SimpleNamespace(final_norm=torch.rand(hidden) + 0.5, eps=1e-6, lm_head=torch.randn(vocab, hidden),
                          family=EngineFamily())
    h = torch.randn(t, hidden)
    gpos = torch.tensor([3, 0, 39, 17, 17, 8, 22])
    pair_u = torch.tensor([0, 1, 2, 3, 4, 5, 6, 6, 2, 0])
    x = h[gpos].float()
    x = eng.final_norm * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eng.eps)
    ref = torch.log_softmax(x @ eng.lm_head.t(), dim=-1)
    target = ref.argmax(-1)[pair_u].clone()
    target[::3] = torch.randint(0, vocab, target[::3].shape)
    want_lp = ref[pair_u, target]
    want_greedy = ref.argmax(-1)[pair_u] == target
    assert want_greedy.any() and not want_greedy.all()
    for chunk in (1, 2, 3, 7, 64):
        lp, greedy = score_head(eng, h, gpos, pair_u, target, chunk)
        torch.testing.assert_close(lp, want_lp, atol=1e-5, rtol=1e-5)
        assert torch.equal(greedy, want_greedy)


def test_bucket_shapes():
    scorer = EngineScorer(SimpleNamespace(), token_bucket=128, logit_chunk=1024)
    assert scorer.shape_of(1, 1, 1, 1) == (128, 16, 64, 64)
    assert scorer.shape_of(32641, 17, 600, 2400) == (32768, 32, 1024, 4096)
    # positions past one head chunk round to whole chunks, not to the next power of two
    assert scorer.shape_of(32768, 300, 9308, 37000)[2:] == (10240, 65536)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"lengths": np.array([2, 0, 3])}, "lengths must be >= 1"),
        ({"lengths": np.array([2, 2])}, "add up"),
        ({"gpos": np.array([5])}, "gpos must be"),
        ({"pair_u": np.array([0, 1])}, "one length"),
        ({"pair_u": np.array([1]), "target": np.array([1])}, "pair_u must index gpos"),
    ],
)
def test_score_batch_validates_itself(fields, match):
    good = dict(tokens=np.arange(5), lengths=np.array([2, 3]), gpos=np.array([1]), pair_u=np.array([0]),
                target=np.array([4]))
    with pytest.raises(ValueError, match=match):
        ScoreBatch(**{**good, **fields})


_INTERPRETED = textwrap.dedent(
    """
    import random
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig
    import gpu_runner
    from gpu_runner.score_engine import engine_scorer

    cfg = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=8, num_key_value_heads=4, head_dim=32, max_position_embeddings=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    rng = random.Random(0)
    ids = lambda n: [rng.randrange(97) for _ in range(n)]
    requests = []
    for n in (3, 20):
        context = ids(n)
        requests += [(context, ids(k)) for k in (1, 1, 4)]
    want = gpu_runner.score(model, requests, path="runner", share_contexts="identical")
    engine_scorer(model).token_bucket = 8  # short rows: few interpreted tiles
    got = gpu_runner.score(model, requests, path="engine", batch_tokens=16)
    assert engine_scorer(model).engine.attention == "packed"
    assert max(abs(a.logprob - b.logprob) for a, b in zip(got, want)) <= 1e-4
    assert [a.is_greedy for a in got] == [b.is_greedy for b in want]
    print("scoring ok")
    """
)


def test_engine_path_with_triton_kernels_in_the_interpreter():
    """The engine path through the fused Triton kernels (packed attention, QKV-RoPE and SwiGLU
    epilogues) in Triton's CPU interpreter equals the runner path."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _INTERPRETED], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0 and "scoring ok" in proc.stdout, proc.stdout + proc.stderr


def _cuda_model(family: str = "llama"):
    from test_runner_support import model_config
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    cfg = model_config(family, vocab_size=512, hidden_size=256, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=2048)
    with torch.device("cuda"):
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).eval()


def _cuda_requests(seed: int = 0, contexts: int = 60) -> list[tuple[list[int], list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for n in rng.integers(5, 1500, size=contexts):
        context = rng.integers(0, 512, size=int(n)).tolist()
        out += [(context, rng.integers(0, 512, size=int(k)).tolist()) for k in (1, 1, 1, rng.integers(2, 30))]
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
def test_cuda_graph_engine_path_matches_the_runner(family):
    model = _cuda_model(family)
    requests = _cuda_requests(FAMILIES.index(family))
    want = gpu_runner.score(model, requests, path="runner", share_contexts="identical")
    # the engine path asked for: "auto" may take the runner's tree layout where it feeds fewer tokens
    got = gpu_runner.score(model, requests, path="engine", batch_tokens=8192)
    scorer = score_engine.engine_scorer(model)
    assert scorer.engine.cuda_graphs and scorer.num_graphs == 1  # one bucket for all rows
    diffs = np.abs([a.logprob - b.logprob for a, b in zip(got, want)])
    assert np.median(diffs) < 0.05 and diffs.max() < 0.5  # bf16: summation order differs
    graphs = scorer.num_graphs
    again = gpu_runner.score(model, requests, path="engine", batch_tokens=8192)
    assert scorer.num_graphs == graphs  # same buckets: replayed, not captured again
    assert max(abs(a.logprob - b.logprob) for a, b in zip(again, got)) <= 1e-3  # first row eager, then replays


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager():
    model = _cuda_model()
    requests = _cuda_requests(seed=5, contexts=30)
    graphed = gpu_runner.score(model, requests, path="engine", batch_tokens=4096)
    score_engine.engine_scorer(model).engine.cuda_graphs = False
    eager = gpu_runner.score(model, requests, path="engine", batch_tokens=4096)
    assert max(abs(a.logprob - b.logprob) for a, b in zip(graphed, eager)) <= 1e-3
    assert sum(a.is_greedy != b.is_greedy for a, b in zip(graphed, eager)) <= 1


@pytest.mark.parametrize("model_type", [
    "qwen3", "granite", "gemma", "phi3", "olmo2", "ministral3", "arcee", "apertus", "smollm3", "olmo3", "exaone4",
    "helium", "glm4", "gemma3_text", "hyperclovax", "hunyuan_v1_dense", "nanochat",
])
def test_engine_path_matches_the_runner_on_the_widened_families(model_type):
    # the families the engine took on after Llama / Mistral / Qwen2 (QK-norm, multipliers and
    # a logits divisor or multiplier, norm offsets and GeLU, fused weights, post-norms; static
    # scaled, per-layer, NoPE and permuted RoPE; ReLU^2 / xIELU MLPs) score as the runner does
    from zoo_models import build_tiny

    from gpu_runner.support import local_window

    model = build_tiny(model_type)
    assert not isinstance(model, str), model
    vocab = model.get_input_embeddings().num_embeddings
    requests = [([t % vocab for t in r[0]], [t % vocab for t in r[1]]) for r in _requests(seed=7)]
    window = local_window(model.config)
    if window is not None:  # sliding layers: exact while a request fits the window, refused beyond it
        over = [r for r in requests if len(r[0]) + len(r[1]) - 1 > window]
        with pytest.raises(ValueError, match="sliding window"):
            gpu_runner.score(model, over[:1], path="engine")
        requests = [r for r in requests if r not in over]
        assert len(requests) >= 10
    runner = gpu_runner.score(model, requests, path="runner")
    got = gpu_runner.score(model, requests, path="engine", batch_tokens=64)
    for i, (ours, theirs) in enumerate(zip(got, runner)):
        assert abs(ours.logprob - theirs.logprob) <= TOL, (i, ours.logprob, theirs.logprob)
        assert ours.is_greedy == theirs.is_greedy, i
