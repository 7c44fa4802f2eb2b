"""Host side of scoring, no model: `gpu_runner.runs` (flat runs, exact grouping by content),
`score_requests` (validation into flat arrays, the three layouts) and the engine path's row
plan and result assembly, checked against plain-Python references on random request sets
with repeated context objects, equal-content copies and repeated continuations."""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
import pytest
import torch

from gpu_runner import runs
from gpu_runner.bench import load_lengths
from gpu_runner.score_engine import balanced_rows, plan_rows
from gpu_runner.score_requests import SHARE_MODES, auto_share, layout_requests, share_groups, validate_requests
from gpu_runner.scoring import _stream_results


def _random_runs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lengths = rng.integers(0, 5, size=int(rng.integers(1, 40)))
    flat = rng.integers(0, 3, size=int(lengths.sum()) + 5)
    starts = np.minimum(rng.integers(0, 5, size=lengths.size) + np.cumsum(lengths) - lengths, flat.size - lengths)
    return flat, starts, lengths


def _reference_groups(flat, starts, lengths, key):
    seen: dict[tuple, int] = {}
    group, first = [], []
    for i, (s, n, k) in enumerate(zip(starts, lengths, key)):
        g = seen.setdefault((int(k), tuple(flat[s : s + n])), len(first))
        if g == len(first):
            first.append(i)
        group.append(g)
    return group, first


@pytest.mark.parametrize("collide", [False, True])
def test_group_runs_equals_a_dict_of_contents(collide, monkeypatch):
    if collide:  # every run hashes alike: the token check must split them (the dict fallback)
        monkeypatch.setattr(runs, "_hashes", lambda flat, starts, lengths: np.zeros(lengths.size, dtype=np.uint64))
    rng = np.random.default_rng(0)
    for trial in range(100):
        flat, starts, lengths = _random_runs(rng)
        key = rng.integers(0, 2, size=lengths.size) if trial % 2 else np.zeros(lengths.size, dtype=np.int64)
        group, first = runs.group_runs(flat, starts, lengths, key if trial % 2 else None)
        want_group, want_first = _reference_groups(flat, starts, lengths, key)
        assert group.tolist() == want_group and first.tolist() == want_first, trial


def test_run_indices():
    assert runs.run_indices(np.array([5, 0, 2]), np.array([2, 0, 3])).tolist() == [5, 6, 2, 3, 4]
    assert runs.run_indices(np.array([], dtype=np.int64), np.array([], dtype=np.int64)).size == 0


def _request_set(seed: int) -> list[tuple[list[int], list[int]]]:
    """Shared context objects, equal-content copies, repeated and multi-token continuations,
    a tiny vocabulary (so contents collide often)."""
    rng = random.Random(seed)
    vocab = rng.choice([2, 3, 40])
    ids = lambda n: [rng.randrange(vocab) for _ in range(n)]
    contexts = [ids(rng.randint(1, 6)) for _ in range(rng.randint(1, 5))]
    out = []
    for _ in range(rng.randint(1, 24)):
        context = rng.choice(contexts) if rng.random() < 0.7 else ids(rng.randint(1, 6))
        if rng.random() < 0.3:
            context = list(context)  # the same content in another object
        out.append((context, ids(rng.randint(1, 4))))
    return out


@pytest.mark.parametrize("share", SHARE_MODES)
def test_every_pair_reads_its_context_and_continuation_prefix(share):
    for seed in range(150):
        requests = _request_set(seed)
        checked = validate_requests(requests, vocab_size=40, max_input_tokens=None)
        layout = layout_requests(checked, share)
        seg, off = layout.unique_segment[layout.pair_unique], layout.unique_offset[layout.pair_unique]
        assert len({(int(s), int(o)) for s, o in zip(layout.unique_segment, layout.unique_offset)}) == \
            layout.unique_segment.size
        p = 0
        for i, (context, continuation) in enumerate(requests):
            for j, target in enumerate(continuation):
                a = layout.bounds[seg[p]]
                tokens = layout.tokens[a : layout.bounds[seg[p] + 1]]
                if layout.branches is None:
                    seen = tokens[: off[p] + 1]
                else:  # a tree: the shared context and the scored token's own branch
                    branch = layout.branches[a : a + tokens.size]
                    visible = (branch[: off[p] + 1] == 0) | (branch[: off[p] + 1] == branch[off[p]])
                    seen = tokens[: off[p] + 1][visible]
                    assert layout.positions[a + off[p]] == len(context) + j - 1
                assert seen.tolist() == context + continuation[:j], (seed, i, j)
                assert layout.pair_target[p] == target and layout.pair_request[p] == i
                p += 1
        distinct = {"none": len(requests), "identical": len({(tuple(c), tuple(t[:-1])) for c, t in requests}),
                    "tree": len({tuple(c) for c, _ in requests})}[share]
        assert layout.num_segments == distinct, seed


def test_auto_share_counts_fed_tokens_of_both_layouts():
    for seed in range(60):
        checked = validate_requests(_request_set(seed), vocab_size=40, max_input_tokens=None)
        groups = share_groups(checked)
        identical = layout_requests(checked, "identical", groups).num_fed_tokens
        tree = layout_requests(checked, "tree", groups).num_fed_tokens
        want = "tree" if tree <= 0.9 * identical else "identical"
        assert auto_share(checked) == auto_share(checked, groups) == want, seed


def test_plain_lists_and_other_inputs_validate_alike():
    requests = _request_set(3)
    plain = validate_requests(requests, vocab_size=40, max_input_tokens=None)
    mixed = validate_requests([(torch.tensor(c), np.asarray(t)) for c, t in requests], vocab_size=40,
                              max_input_tokens=None)
    for a, b in zip((plain.context_lengths, plain.continuation_tokens), (mixed.context_lengths,
                                                                          mixed.continuation_tokens)):
        assert np.array_equal(a, b)
    class Fresh(Sequence):  # a pair whose every access builds new lists
        def __init__(self, context, continuation):
            self.parts = (context, continuation)

        def __len__(self):
            return 2

        def __getitem__(self, k):
            return list(self.parts[k])

    fresh = validate_requests([Fresh(c, t) for c, t in requests], vocab_size=40, max_input_tokens=None)
    for share in SHARE_MODES:
        x, y, z = layout_requests(plain, share), layout_requests(mixed, share), layout_requests(fresh, share)
        assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.pair_unique, y.pair_unique)
        assert np.array_equal(x.tokens, z.tokens) and np.array_equal(x.pair_unique, z.pair_unique)


@pytest.mark.parametrize(
    ("requests", "match"),
    [
        ("shared", "request 2 context has token id 9 outside"),  # one context object, first used by request 2
        ([([1], [2]), ([1], [9]), ([9], [1])], "request 1 continuation has token id 9"),
        ([([1], [2]), ([2**70], [1])], "request 1 context holds a token id outside int64"),
        ([([1], [2]), ([1], [2, True])], "request 1 continuation holds True"),
        ([([1], [2]), ([3, False], [1])], "request 1 context holds False"),  # a bool among plain ints
        ([([1], [2]), ([3, 2.0], [1])], r"request 1 context holds 2.0 \(float\)"),
        ([([1], [2]), ([3], [torch.tensor(2)])], r"request 1 continuation holds tensor\(2\)"),
    ],
)
def test_bad_ids_name_the_first_bad_request(requests, match):
    if requests == "shared":
        bad = [1, 9]
        requests = [([1], [2]), ([3], [1]), (bad, [1]), (bad, [2])]
    with pytest.raises(ValueError, match=match):
        validate_requests(requests, vocab_size=9, max_input_tokens=None)


def test_integer_like_ids_validate_as_their_values():
    class Id(int):
        pass

    plain = validate_requests([([5, 3, 1], [0]), ([4], [2, 1])], vocab_size=9, max_input_tokens=None)
    for wrap in (np.int64, Id):
        other = validate_requests([([wrap(5), 3, wrap(1)], [wrap(0)]), ([4], [2, wrap(1)])], vocab_size=9,
                                  max_input_tokens=None)
        for field in ("context_tokens", "context_bounds", "continuation_tokens", "continuation_bounds"):
            assert np.array_equal(getattr(plain, field), getattr(other, field)), (wrap, field)


def test_row_plan_covers_every_pair_once():
    checked = validate_requests(_request_set(5) * 3, vocab_size=40, max_input_tokens=None)
    layout = layout_requests(checked, "identical")
    plan = plan_rows(layout, batch_tokens=7)
    assert plan.num_rows > 1 and sorted(plan.pair_order.tolist()) == list(range(layout.pair_target.size))
    for k in range(plan.num_rows):
        batch = plan.row(layout, k)  # a ScoreBatch: validates its own shapes
        a, b = plan.pair_bounds[k], plan.pair_bounds[k + 1]
        read = batch.tokens[batch.gpos[batch.pair_u]]  # the token fed at each scored position
        pairs = plan.pair_order[a:b]
        seg, off = layout.unique_segment[layout.pair_unique[pairs]], layout.unique_offset[layout.pair_unique[pairs]]
        assert np.array_equal(read, layout.tokens[layout.bounds[seg] + off])
        assert np.array_equal(batch.target, layout.pair_target[pairs])


def test_balanced_rows_fill_the_fewest_rows_evenly():
    lengths = np.asarray(load_lengths("mmlu"), dtype=np.int64)
    for capacity in (8192, 32768):
        row = balanced_rows(lengths, capacity)
        rows = -(-int(lengths.sum()) // capacity)
        sums, counts = np.bincount(row, weights=lengths), np.bincount(row)
        assert row.min() == 0 and row.max() == rows - 1 and sums.max() <= capacity  # first-fit decreasing's count
        assert counts.max() <= 1.1 * lengths.size / rows  # segments (so scored positions) spread evenly
    # one segment per row needed: three tries cannot fit, so the plan falls back to first-fit decreasing
    assert balanced_rows(np.full(10, 6), 11) is None
    assert balanced_rows(np.full(10, 6), 11, tries=6) is not None


def test_row_plan_falls_back_to_ffd_where_rows_cannot_balance():
    requests = [([1] * 5, [2, 3]) for _ in range(10)]  # ten 6-token segments, capacity 11: one per row
    layout = layout_requests(validate_requests(requests, vocab_size=9, max_input_tokens=None), "none")
    assert balanced_rows(layout.segment_lengths, 11) is None
    plan = plan_rows(layout, batch_tokens=11)
    assert plan.num_rows == 10 and np.diff(plan.tok_bounds).max() <= 11
    assert sorted(plan.pair_order.tolist()) == list(range(layout.pair_target.size))


def test_results_assemble_from_chunks_in_any_order_and_refuse_a_missing_pair():
    requests = [([1, 2], [3, 4]), ([1], [2]), ([5], [6, 7, 8])]
    layout = layout_requests(validate_requests(requests, vocab_size=9, max_input_tokens=None), "none")
    lp = -np.arange(1.0, 7.0)
    greedy = np.array([True, True, False, True, True, True])
    chunks = [(np.array([5, 0, 3]), lp[[5, 0, 3]], greedy[[5, 0, 3]]), (np.array([1, 2, 4]), lp[[1, 2, 4]],
                                                                         greedy[[1, 2, 4]])]
    got = _stream_results(layout, iter(chunks), return_token_logprobs=True)
    assert [r.logprob for r in got] == [-3.0, -3.0, -15.0]
    assert [r.is_greedy for r in got] == [True, False, True]
    assert got[2].token_logprobs == (-4.0, -5.0, -6.0)
    with pytest.raises(RuntimeError, match="no score for request 2"):
        _stream_results(layout, iter(chunks[:1] + [(np.array([1, 2]), lp[[1, 2]], greedy[[1, 2]])]), False)
