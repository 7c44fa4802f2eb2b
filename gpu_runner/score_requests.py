"""Scoring requests: their validation and their layout as packed segments.

A scoring request is a (context ids, continuation ids) pair. The model is fed
context + continuation[:-1] (the last continuation token is never an input, as in
lm-evaluation-harness) and the log-prob of continuation token m is read at the fed token
just before it. This module turns N requests into S segments (token runs that the packer
places) and P scored pairs (request, segment offset, target token), with three ways to
share work between requests (`SHARE_MODES`):

  none       one segment per request.
  identical  requests with identical contexts and identical continuation[:-1] (so identical
             fed tokens) share one segment, and a position scored by several of them is
             projected once (the 4 one-token choices of an MMLU question: one context
             forward, one lm_head row). Always exact.
  tree       requests with the same context share one segment: the context once, then
             each distinct continuation tail (continuation[:-1]) after it; a tail token
             sees the context and its own tail only (`branch` ids, a tree mask), and its
             position id continues from the context's length. Dense masks only.

Everything here is host-side numpy over flat arrays (`gpu_runner.runs`): one Python step
per request only where the caller's objects are read (`validate_requests`), none per
segment or token, never over the vocabulary.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

from gpu_runner.runs import group_runs, run_indices

__all__ = ["SHARE_MODES", "TREE_MIN_SAVING", "CheckedRequests", "ScoreLayout", "ShareGroups", "auto_share",
           "layout_requests", "share_groups", "validate_requests"]

SHARE_MODES = ("none", "identical", "tree")
# share_contexts="auto" picks "tree" when it feeds at least this fraction fewer tokens than
# "identical" (HellaSwag-shaped sets: 55% fewer; MMLU-shaped: 0%, so "identical").
TREE_MIN_SAVING = 0.10


def _ids(value: Any, what: str) -> np.ndarray:
    """A 1-D int64 array of token ids, or ValueError naming `what`."""
    try:
        if type(value) is list and set(map(type, value)) <= {int}:  # the common case, checked fast
            return np.asarray(value, dtype=np.int64)
        if isinstance(value, torch.Tensor):
            if value.dim() != 1 or value.dtype in (torch.bool,) or value.is_floating_point() or value.is_complex():
                raise ValueError(f"{what} must be a 1-D integer tensor, got {value.dtype} {tuple(value.shape)}")
            return value.detach().cpu().numpy().astype(np.int64, copy=False)
        if isinstance(value, np.ndarray):
            if value.ndim != 1 or value.dtype.kind not in "iu":
                raise ValueError(f"{what} must be a 1-D integer array, got {value.dtype} {value.shape}")
            return value.astype(np.int64, copy=False)
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise ValueError(f"{what} must be a list of token ids, got {type(value).__name__}")
        kinds = set(map(type, value))
        if bool in kinds or not all(issubclass(k, (int, np.integer)) for k in kinds):
            bad = next(t for t in value if isinstance(t, bool) or not isinstance(t, (int, np.integer)))
            raise ValueError(f"{what} holds {bad!r} ({type(bad).__name__}): token ids must be ints")
        return np.asarray(value, dtype=np.int64).reshape(-1)
    except OverflowError:
        raise ValueError(f"{what} holds a token id outside int64") from None


def _bounds(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(lengths.size + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


@dataclass(frozen=True)
class CheckedRequests:
    """N validated requests as flat int64 arrays, caller's order (what `validate_requests` returns).

    context_tokens, context_bounds: C distinct context objects back to back, context c is
        context_tokens[context_bounds[c] : context_bounds[c + 1]] (an object passed in several
        requests, like the context of a multiple-choice question's choices, is stored once).
    request_context: int64 [N], the context of each request.
    continuation_tokens, continuation_bounds: request i's continuation is
        continuation_tokens[continuation_bounds[i] : continuation_bounds[i + 1]].
    """

    context_tokens: np.ndarray
    context_bounds: np.ndarray
    request_context: np.ndarray
    continuation_tokens: np.ndarray
    continuation_bounds: np.ndarray

    def __post_init__(self) -> None:
        c, n = self.context_bounds.size - 1, self.request_context.size
        if c < 1 or n < 1 or self.continuation_bounds.size != n + 1:
            raise ValueError("need at least one request, one context, and N + 1 continuation bounds")
        for tokens, bounds in ((self.context_tokens, self.context_bounds),
                               (self.continuation_tokens, self.continuation_bounds)):
            if bounds[0] != 0 or bounds[-1] != tokens.size or (np.diff(bounds) < 1).any():
                raise ValueError("bounds must run from 0 to the token count, each run non-empty")
        if self.request_context.min() < 0 or self.request_context.max() >= c:
            raise ValueError(f"request_context must index the {c} contexts")

    @property
    def num_requests(self) -> int:
        return int(self.request_context.size)

    @property
    def context_lengths(self) -> np.ndarray:
        """int64 [N]: each request's context length."""
        return np.diff(self.context_bounds)[self.request_context]

    @property
    def continuation_lengths(self) -> np.ndarray:
        """int64 [N]: each request's continuation length."""
        return np.diff(self.continuation_bounds)


def _plain(requests: Sequence[Any]) -> CheckedRequests | None:
    """The fast path: every request a tuple / list pair of non-empty lists of ints, read in one
    pass (a context object shared by several requests read once); None otherwise (the exact
    per-request path then names the first bad request)."""
    index: dict[int, int] = {}
    contexts: list[list[int]] = []  # kept alive: their ids stay unique while we hold them
    request_context: list[int] = []
    continuations: list[Any] = []
    for request in requests:
        if (type(request) is not tuple and type(request) is not list) or len(request) != 2:
            return None
        context, continuation = request
        j = index.get(id(context))
        if j is None:
            if type(context) is not list:
                return None
            j = index[id(context)] = len(contexts)
            contexts.append(context)
        request_context.append(j)
        continuations.append(continuation)
    if set(map(type, continuations)) != {list}:
        return None
    ctx, cont = _flat_ints(contexts), _flat_ints(continuations)
    if ctx is None or cont is None:
        return None
    return CheckedRequests(ctx[0], ctx[1], np.asarray(request_context, dtype=np.int64), cont[0], cont[1])


def _flat_ints(lists: list[list[Any]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(ids, bounds): non-empty lists of Python ints back to back as int64, and their bounds;
    None where a list is empty or an id is not an int (a bool, float, numpy or torch scalar,
    ...) or lies outside int64 (the exact path then names the request).

    No Python step per id (`validate_requests` reads a million on an MMLU-shaped set):
    `array.fromlist` converts in C but takes any integer-like id (`__index__`), so the ids'
    sum, exact for ints, must come out an int (a float, numpy or torch id turns it into
    another type), and the ids equal to 0 or 1, the values a bool can have, are checked one
    by one."""
    lengths = np.fromiter(map(len, lists), dtype=np.int64, count=len(lists))
    if lengths.min() == 0:
        return None
    try:
        if type(sum(chain.from_iterable(lists))) is not int:
            return None
        out = array("q")
        for ids in lists:
            out.fromlist(ids)
    except (TypeError, OverflowError):
        return None
    flat = np.frombuffer(out, dtype=np.int64)
    bounds = _bounds(lengths)
    small = np.flatnonzero(flat.view(np.uint64) <= 1)
    if small.size:
        owner = np.searchsorted(bounds, small, side="right") - 1
        at = small - bounds[owner]
        if any(type(lists[i][j]) is not int for i, j in zip(owner.tolist(), at.tolist())):
            return None
    return flat, bounds


def _general(requests: Sequence[Any]) -> CheckedRequests:
    """Any accepted input (tensors, arrays, sequences), one request at a time; the first bad
    request raises its ValueError."""
    index: dict[int, int] = {}
    contexts: list[np.ndarray] = []
    owners: list[Any] = []  # the context objects, alive while their ids are keys
    request_context: list[int] = []
    continuations: list[np.ndarray] = []
    for i, request in enumerate(requests):
        if isinstance(request, (str, bytes, dict)) or not isinstance(request, Sequence) or len(request) != 2:
            raise ValueError(f"request {i} must be a (context ids, continuation ids) pair, got {request!r:.80}")
        given = request[0]  # read once: a custom Sequence may build a new object per access
        j = index.get(id(given))
        context = contexts[j] if j is not None else _ids(given, f"request {i} context")
        continuation = _ids(request[1], f"request {i} continuation")
        if context.size == 0:
            raise ValueError(f"request {i} has an empty context: the first continuation token needs one "
                             "token before it (prepend a BOS token)")
        if continuation.size == 0:
            raise ValueError(f"request {i} has an empty continuation: nothing to score")
        if j is None:
            j = index[id(given)] = len(contexts)
            contexts.append(context)
            owners.append(given)
        request_context.append(j)
        continuations.append(continuation)
    lengths = [np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
               for arrays in (contexts, continuations)]
    return CheckedRequests(np.concatenate(contexts), _bounds(lengths[0]), np.asarray(request_context, dtype=np.int64),
                           np.concatenate(continuations), _bounds(lengths[1]))


def validate_requests(
    requests: Sequence[Any], *, vocab_size: int, max_input_tokens: int | None, window: int | None = None
) -> CheckedRequests:
    """Check (context, continuation) pairs; return them as flat int64 arrays, caller's order.

    One `ValueError` naming the request index for: a non-list `requests` or request, an
    empty list, a request that is not a pair, an empty context or continuation, a non-int
    (or bool) id, an id outside [0, vocab_size) (the lowest such request), fed tokens
    (len(context) + len(continuation) - 1) over `max_input_tokens` (the model's context) or
    over a sliding attention `window`.
    """
    if isinstance(requests, (str, bytes, dict)) or not isinstance(requests, Sequence):
        raise ValueError(f"requests must be a list of (context, continuation) pairs, got {type(requests).__name__}")
    if len(requests) == 0:
        raise ValueError("requests is empty: nothing to score")
    checked = _plain(requests) or _general(requests)
    # Vocabulary and length checks over all requests at once (numpy, not a step per request).
    n = checked.num_requests
    worst = n  # the lowest request with an id outside the vocabulary
    found: tuple[str, int] | None = None
    for part, tokens, bounds, owner in (
        ("context", checked.context_tokens, checked.context_bounds, checked.request_context),
        ("continuation", checked.continuation_tokens, checked.continuation_bounds, np.arange(n)),
    ):
        bad = (tokens < 0) | (tokens >= vocab_size)
        if bad.any():
            run = np.searchsorted(bounds, np.flatnonzero(bad), side="right") - 1  # runs holding a bad id
            first = int(np.flatnonzero(np.isin(owner, run)).min())
            if first < worst:
                at = bounds[owner[first]] + int(bad[bounds[owner[first]] : bounds[owner[first] + 1]].argmax())
                worst, found = first, (part, int(tokens[at]))
    if found is not None:
        raise ValueError(f"request {worst} {found[0]} has token id {found[1]} outside the vocabulary [0, {vocab_size})")
    n_ctx, n_cont = checked.context_lengths, checked.continuation_lengths
    fed = n_ctx + n_cont - 1
    for limit, what in ((max_input_tokens, "the model's context"), (window, "the model's sliding window")):
        if limit is not None and (fed > limit).any():
            i = int((fed > limit).argmax())
            raise ValueError(f"request {i} feeds {int(fed[i])} tokens (context {int(n_ctx[i])} + continuation "
                             f"{int(n_cont[i])} - 1), over {what} ({limit})"
                             + (": packed masks are full causal" if what.endswith("window") else ""))
    return checked


@dataclass(frozen=True)
class ShareGroups:
    """Which requests share what (`share_groups`), numbered in order of first occurrence.

    context_group: int64 [N], requests with equal contexts have equal values.
    fed_group:     int64 [N], requests with equal contexts and equal continuation[:-1].
    fed_first:     int64 [D], the first request of each fed group.
    """

    context_group: np.ndarray
    fed_group: np.ndarray
    fed_first: np.ndarray


def share_groups(checked: CheckedRequests) -> ShareGroups:
    """Group the requests by context content, then by (context, continuation[:-1]) content."""
    # context objects are numbered by their first request, so groups of them are too
    ctx_group, _ = group_runs(checked.context_tokens, checked.context_bounds[:-1], np.diff(checked.context_bounds))
    context_group = ctx_group[checked.request_context]
    fed_group, fed_first = group_runs(checked.continuation_tokens, checked.continuation_bounds[:-1],
                                      checked.continuation_lengths - 1, key=context_group)
    return ShareGroups(context_group, fed_group, fed_first)


def auto_share(checked: CheckedRequests, groups: ShareGroups | None = None) -> str:
    """What share_contexts="auto" runs: "tree" if it feeds >= TREE_MIN_SAVING fewer tokens
    than "identical" (contexts shared by continuations that differ before their last token),
    else "identical" (exact under every attention backend, no tree mask)."""
    groups = groups or share_groups(checked)
    n_ctx, tail = checked.context_lengths, checked.continuation_lengths - 1
    first = groups.fed_first
    tail_tokens = int(tail[first].sum())
    identical = int(n_ctx[first].sum()) + tail_tokens
    _, ctx_first = np.unique(groups.context_group, return_index=True)
    tree = int(n_ctx[ctx_first].sum()) + tail_tokens
    return "tree" if tree <= (1.0 - TREE_MIN_SAVING) * identical else "identical"


@dataclass(frozen=True)
class ScoreLayout:
    """Segments to pack and the pairs to score in them.

    tokens, bounds: S segments back to back (what the packer places), segment s is
                    tokens[bounds[s] : bounds[s + 1]]; lengths = packed lengths.
    positions:      position ids of every token (flat, like tokens), or None when every
                    segment counts 0, 1, 2, ...
    branches:       branch ids of every token (0 = shared context, k > 0 = tail k), or None
                    when plain causal attention inside a segment is right (modes none, identical).
    unique_segment, unique_offset: U distinct scored positions (segment, offset), sorted.
    pair_unique:    P indices into the U positions, request-major then token order.
    pair_target:    P target token ids; pair_request: P request indices.
    num_requests:   N.
    """

    tokens: np.ndarray
    bounds: np.ndarray
    positions: np.ndarray | None
    branches: np.ndarray | None
    unique_segment: np.ndarray
    unique_offset: np.ndarray
    pair_unique: np.ndarray
    pair_target: np.ndarray
    pair_request: np.ndarray
    num_requests: int

    def __post_init__(self) -> None:
        if self.bounds.size < 2 or self.bounds[0] != 0 or self.bounds[-1] != self.tokens.size:
            raise ValueError("a layout needs at least one segment, bounds from 0 to the token count")
        if (np.diff(self.bounds) < 1).any():
            raise ValueError("a layout has no empty segment")
        for name in ("positions", "branches"):
            arrays = getattr(self, name)
            if arrays is not None and arrays.size != self.tokens.size:
                raise ValueError(f"{name} must match the segments' tokens")
        p = self.pair_unique.size
        if self.pair_target.size != p or self.pair_request.size != p:
            raise ValueError("pair arrays must have one length")
        if self.unique_segment.size != self.unique_offset.size:
            raise ValueError("unique_segment and unique_offset must have one length")

    @property
    def num_segments(self) -> int:
        return int(self.bounds.size - 1)

    @property
    def segment_lengths(self) -> np.ndarray:
        """int64 [S]."""
        return np.diff(self.bounds)

    @property
    def lengths(self) -> list[int]:
        return self.segment_lengths.tolist()

    @property
    def num_fed_tokens(self) -> int:
        return int(self.tokens.size)

    def segment(self, s: int) -> np.ndarray:
        """Segment s's token ids (a view)."""
        return self.tokens[self.bounds[s] : self.bounds[s + 1]]


def layout_requests(checked: CheckedRequests, share: str, groups: ShareGroups | None = None) -> ScoreLayout:
    """Lay validated requests out as segments and scored pairs (module docstring: `share`);
    `groups`: `share_groups(checked)` when the caller has it already."""
    if share not in SHARE_MODES:
        raise ValueError(f"share_contexts must be one of {SHARE_MODES}, got {share!r}")
    n = checked.num_requests
    n_ctx, n_cont = checked.context_lengths, checked.continuation_lengths
    tail = n_cont - 1
    if share != "none":
        groups = groups or share_groups(checked)
    # The caller's tokens as one source: contexts, then continuations (whose tails are read).
    source = np.concatenate((checked.context_tokens, checked.continuation_tokens))
    ctx_start = checked.context_bounds[checked.request_context]  # [N] in source
    tail_start = checked.context_tokens.size + checked.continuation_bounds[:-1]
    positions = branches = None
    if share != "tree":
        if share == "none":
            request_seg, first = np.arange(n, dtype=np.int64), np.arange(n, dtype=np.int64)
        else:
            request_seg, first = groups.fed_group, groups.fed_first
        # segment s: the context then the tail of its first request
        starts = np.stack((ctx_start[first], tail_start[first]), axis=1).reshape(-1)
        lens = np.stack((n_ctx[first], tail[first]), axis=1).reshape(-1)
        tail_at = n_ctx  # [N]: offset of each request's tail in its segment
    else:
        request_seg = groups.context_group
        _, ctx_first = np.unique(request_seg, return_index=True)  # first request of each segment
        with_tail = groups.fed_first[tail[groups.fed_first] > 0]  # first request of each distinct tail
        t_seg = request_seg[with_tail]
        t_len = tail[with_tail]
        order = np.argsort(t_seg, kind="stable")  # tails by segment, first occurrence within it
        t_seg, t_len, with_tail = t_seg[order], t_len[order], with_tail[order]
        seg_first_tail = np.searchsorted(t_seg, np.arange(ctx_first.size))
        rank = np.arange(t_seg.size) - seg_first_tail[t_seg]  # 0, 1, ... within a segment
        before = np.cumsum(t_len) - t_len
        t_off = n_ctx[ctx_first][t_seg] + before - before[seg_first_tail[t_seg]]
        # runs: each segment's context (branch 0) then its tails (branch 1, 2, ...)
        run_seg = np.concatenate((np.arange(ctx_first.size), t_seg))
        run_branch = np.concatenate((np.zeros(ctx_first.size, dtype=np.int64), rank + 1))
        run_order = np.lexsort((run_branch, run_seg))
        starts = np.concatenate((ctx_start[ctx_first], tail_start[with_tail]))[run_order]
        lens = np.concatenate((n_ctx[ctx_first], t_len))[run_order]
        run_pos0 = np.concatenate((np.zeros(ctx_first.size, dtype=np.int64), n_ctx[ctx_first][t_seg]))[run_order]
        within = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        positions = within + np.repeat(run_pos0, lens)
        branches = np.repeat(run_branch[run_order], lens)
        group_tail = np.full(groups.fed_first.size, -1, dtype=np.int64)  # fed group -> its distinct tail
        group_tail[groups.fed_group[with_tail]] = np.arange(with_tail.size)
        tail_of = group_tail[groups.fed_group]  # [N], -1: no tail
        tail_at = n_ctx.copy()
        tail_at[tail_of >= 0] = t_off[tail_of[tail_of >= 0]]
    tokens = source[run_indices(starts, lens)]
    if share == "tree":
        seg_len = np.bincount(run_seg[run_order], weights=lens, minlength=ctx_first.size).astype(np.int64)
    else:
        seg_len = lens.reshape(-1, 2).sum(axis=1)
    bounds = _bounds(seg_len)
    # pairs: token j of request i is read at offset n_ctx - 1 (j = 0) or tail_at + j - 1
    first_pair = checked.continuation_bounds[:-1]
    pair_request = np.repeat(np.arange(n, dtype=np.int64), n_cont)
    j = np.arange(int(checked.continuation_bounds[-1]), dtype=np.int64) - np.repeat(first_pair, n_cont)
    seg_of = request_seg[pair_request]
    off_of = np.where(j == 0, n_ctx[pair_request] - 1, tail_at[pair_request] + j - 1)
    width = int(seg_len.max()) + 1  # offsets < width: (segment, offset) -> one int key
    unique, inverse = np.unique(seg_of * width + off_of, return_inverse=True)
    return ScoreLayout(
        tokens=tokens, bounds=bounds, positions=positions, branches=branches,
        unique_segment=unique // width, unique_offset=unique % width,
        pair_unique=inverse.reshape(-1).astype(np.int64), pair_target=checked.continuation_tokens,
        pair_request=pair_request, num_requests=n,
    )  # fmt: skip
