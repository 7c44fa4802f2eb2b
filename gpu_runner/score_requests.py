"""Scoring requests: their validation and their layout as packed segments.

A scoring request is a (context ids, continuation ids) pair. The model is fed
context + continuation[:-1] (the last continuation token is never an input, as in
lm-evaluation-harness) and the log-prob of continuation token m is read at the fed token
just before it. This module turns N requests into S segments (token runs that the packer
places) and P scored pairs (request, segment offset, target token), with three ways to
share work between requests (`SHARE_MODES`):

  none       one segment per request.
  identical  requests whose fed tokens are identical share one segment, and a position
             scored by several of them is projected once (the 4 one-token choices of an
             MMLU question: one context forward, one lm_head row). Always exact.
  tree       requests with the same context share one segment: the context once, then
             each distinct continuation tail (continuation[:-1]) after it; a tail token
             sees the context and its own tail only (`branch` ids, a tree mask), and its
             position id continues from the context's length. Dense masks only.

Everything here is host-side numpy / Python over requests, never over the vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["SHARE_MODES", "TREE_MIN_SAVING", "ScoreLayout", "auto_share", "layout_requests", "validate_requests"]

SHARE_MODES = ("none", "identical", "tree")
# share_contexts="auto" picks "tree" when it feeds at least this fraction fewer tokens than
# "identical" (HellaSwag-shaped sets: 55% fewer; MMLU-shaped: 0%, so "identical").
TREE_MIN_SAVING = 0.10


def _ids(value: Any, what: str) -> np.ndarray:
    """A 1-D int64 array of token ids, or ValueError naming `what`."""
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


def validate_requests(
    requests: Sequence[Any], *, vocab_size: int, max_input_tokens: int | None, window: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Check (context, continuation) pairs; return them as int64 arrays, caller's order.

    One `ValueError` naming the request index for: a non-list `requests` or request, an
    empty list, a request that is not a pair, an empty context or continuation, a non-int
    (or bool) id, an id outside [0, vocab_size), fed tokens (len(context) +
    len(continuation) - 1) over `max_input_tokens` (the model's context) or over a
    sliding attention `window`.
    """
    if isinstance(requests, (str, bytes, dict)) or not isinstance(requests, Sequence):
        raise ValueError(f"requests must be a list of (context, continuation) pairs, got {type(requests).__name__}")
    if len(requests) == 0:
        raise ValueError("requests is empty: nothing to score")
    out = []
    for i, request in enumerate(requests):
        if not (type(request) in (tuple, list) and len(request) == 2) and (  # fast for plain pairs
            isinstance(request, (str, bytes, dict)) or not isinstance(request, Sequence) or len(request) != 2
        ):
            raise ValueError(f"request {i} must be a (context ids, continuation ids) pair, got {request!r:.80}")
        context = _ids(request[0], f"request {i} context")
        continuation = _ids(request[1], f"request {i} continuation")
        if context.size == 0:
            raise ValueError(f"request {i} has an empty context: the first continuation token needs one "
                             "token before it (prepend a BOS token)")
        if continuation.size == 0:
            raise ValueError(f"request {i} has an empty continuation: nothing to score")
        out.append((context, continuation))
    # Vocabulary and length checks over all requests at once (one numpy pass, not N).
    n_ctx = np.fromiter((c.size for c, _ in out), dtype=np.int64, count=len(out))
    n_cont = np.fromiter((t.size for _, t in out), dtype=np.int64, count=len(out))
    for part, arrays, sizes in (("context", [c for c, _ in out], n_ctx), ("continuation", [t for _, t in out], n_cont)):
        flat = np.concatenate(arrays)
        bad = (flat < 0) | (flat >= vocab_size)
        if bad.any():
            at = int(bad.argmax())
            i = int(np.searchsorted(np.cumsum(sizes), at, side="right"))
            raise ValueError(f"request {i} {part} has token id {int(flat[at])} outside the vocabulary [0, {vocab_size})")
    fed = n_ctx + n_cont - 1
    for limit, what in ((max_input_tokens, "the model's context"), (window, "the model's sliding window")):
        if limit is not None and (fed > limit).any():
            i = int((fed > limit).argmax())
            raise ValueError(f"request {i} feeds {int(fed[i])} tokens (context {int(n_ctx[i])} + continuation "
                             f"{int(n_cont[i])} - 1), over {what} ({limit})"
                             + (": packed masks are full causal" if what.endswith("window") else ""))
    return out


def auto_share(requests: list[tuple[np.ndarray, np.ndarray]]) -> str:
    """What share_contexts="auto" runs: "tree" if it feeds >= TREE_MIN_SAVING fewer tokens
    than "identical" (contexts shared by continuations that differ before their last token),
    else "identical" (exact under every attention backend, no tree mask)."""
    tails: dict[bytes, set[bytes]] = {}
    sizes: dict[bytes, int] = {}
    for context, continuation in requests:
        key = context.tobytes()
        tails.setdefault(key, set()).add(continuation[:-1].tobytes())
        sizes[key] = context.size
    itemsize = np.dtype(np.int64).itemsize
    tail_tokens = sum(len(t) // itemsize for group in tails.values() for t in group)
    identical = sum(sizes[k] * len(group) for k, group in tails.items()) + tail_tokens
    tree = sum(sizes.values()) + tail_tokens
    return "tree" if tree <= (1.0 - TREE_MIN_SAVING) * identical else "identical"


@dataclass(frozen=True)
class ScoreLayout:
    """Segments to pack and the pairs to score in them.

    segments:       S token-id arrays (what the packer places; lengths = packed lengths).
    positions:      S position-id arrays, or None when every segment counts 0, 1, 2, ...
    branches:       S branch-id arrays (0 = shared context, k > 0 = tail k), or None when
                    plain causal attention inside a segment is right (modes none, identical).
    unique_segment, unique_offset: U distinct scored positions (segment, offset), sorted.
    pair_unique:    P indices into the U positions, request-major then token order.
    pair_target:    P target token ids; pair_request: P request indices.
    num_requests:   N.
    """

    segments: tuple[np.ndarray, ...]
    positions: tuple[np.ndarray, ...] | None
    branches: tuple[np.ndarray, ...] | None
    unique_segment: np.ndarray
    unique_offset: np.ndarray
    pair_unique: np.ndarray
    pair_target: np.ndarray
    pair_request: np.ndarray
    num_requests: int

    def __post_init__(self) -> None:
        s = len(self.segments)
        if s == 0 or any(seg.size == 0 for seg in self.segments):
            raise ValueError("a layout needs at least one segment and no empty segment")
        for name in ("positions", "branches"):
            arrays = getattr(self, name)
            if arrays is not None and [a.size for a in arrays] != [g.size for g in self.segments]:
                raise ValueError(f"{name} must match the segments' lengths")
        p = self.pair_unique.size
        if self.pair_target.size != p or self.pair_request.size != p:
            raise ValueError("pair arrays must have one length")
        if self.unique_segment.size != self.unique_offset.size:
            raise ValueError("unique_segment and unique_offset must have one length")

    @property
    def lengths(self) -> list[int]:
        return [int(seg.size) for seg in self.segments]

    @property
    def num_fed_tokens(self) -> int:
        return int(sum(seg.size for seg in self.segments))


def layout_requests(requests: list[tuple[np.ndarray, np.ndarray]], share: str) -> ScoreLayout:
    """Lay validated requests out as segments and scored pairs (module docstring: `share`)."""
    if share not in SHARE_MODES:
        raise ValueError(f"share_contexts must be one of {SHARE_MODES}, got {share!r}")
    segments: list[np.ndarray] = []
    parts: list[list[np.ndarray]] = []  # tree: per segment, the context then each distinct tail
    pair_seg: list[np.ndarray] = []
    pair_off: list[np.ndarray] = []
    keys: dict[bytes, int] = {}
    tails: list[dict[bytes, int]] = []  # tree: per segment, tail bytes -> offset of its first token
    sizes: list[int] = []  # tree: tokens laid out so far per segment
    request_seg: list[int] = []  # none / identical: each request's segment
    for context, continuation in requests:
        n_ctx, n_cont = context.size, continuation.size
        if share == "tree":
            key = context.tobytes()
            seg = keys.get(key)
            if seg is None:
                seg = keys[key] = len(parts)
                parts.append([context])
                tails.append({})
                sizes.append(n_ctx)
            tail = continuation[:-1]
            if tail.size:
                seen = tails[seg]
                start = seen.get(tail.tobytes())
                if start is None:
                    start = seen[tail.tobytes()] = sizes[seg]
                    parts[seg].append(tail)
                    sizes[seg] += tail.size
                offsets = np.concatenate(([n_ctx - 1], np.arange(start, start + tail.size, dtype=np.int64)))
            else:
                offsets = np.asarray([n_ctx - 1], dtype=np.int64)
            pair_off.append(offsets)
            pair_seg.append(np.full(n_cont, seg, dtype=np.int64))
        else:  # pair offsets n_ctx - 1 ... n_ctx + n_cont - 2, built after the loop
            fed = np.concatenate((context, continuation[:-1]))
            key = fed.tobytes() if share == "identical" else None
            seg = keys.get(key) if key is not None else None
            if seg is None:
                seg = len(segments)
                segments.append(fed)
                if key is not None:
                    keys[key] = seg
            request_seg.append(seg)
    positions: list[np.ndarray] = []
    branches: list[np.ndarray] = []
    if share == "tree":
        for group in parts:
            n_ctx = group[0].size
            segments.append(np.concatenate(group))
            positions.append(np.concatenate([np.arange(n_ctx)] + [n_ctx + np.arange(t.size) for t in group[1:]]))
            branches.append(np.repeat(np.arange(len(group), dtype=np.int64), [t.size for t in group]))
    if share == "tree":
        seg_of = np.concatenate(pair_seg)
        off_of = np.concatenate(pair_off)
    else:
        n_ctx_all = np.fromiter((c.size for c, _ in requests), dtype=np.int64, count=len(requests))
        n_cont_all = np.fromiter((t.size for _, t in requests), dtype=np.int64, count=len(requests))
        seg_of = np.repeat(np.asarray(request_seg, dtype=np.int64), n_cont_all)
        first = np.cumsum(n_cont_all) - n_cont_all
        off_of = np.repeat(n_ctx_all - 1 - first, n_cont_all) + np.arange(int(n_cont_all.sum()), dtype=np.int64)
    width = max(s.size for s in segments) + 1  # offsets < width: (segment, offset) -> one int key
    unique, inverse = np.unique(seg_of * width + off_of, return_inverse=True)
    tree = share == "tree"
    return ScoreLayout(
        segments=tuple(segments),
        positions=tuple(positions) if tree else None,
        branches=tuple(branches) if tree else None,
        unique_segment=unique // width,
        unique_offset=unique % width,
        pair_unique=inverse.reshape(-1).astype(np.int64),
        pair_target=np.concatenate([c for _, c in requests]),
        pair_request=np.repeat(np.arange(len(requests), dtype=np.int64), [c.size for _, c in requests]),
        num_requests=len(requests),
    )
