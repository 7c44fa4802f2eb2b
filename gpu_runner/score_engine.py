"""The engine path of `gpu_runner.score`: when it applies, and a whole request set through it.

This module owns the glue between `score(..., path=...)` and `engine.scorer.EngineScorer`:
whether the engine path applies (`engine_score_unsupported` returns the reason it does
not, or None), the scorer cached on the model next to generation's engine (one
`PrefillEngine` per model, its weights fused once; `clear_score_cache` frees the scorer's
buffers and graphs, `clear_generation_cache` everything), `plan_rows`, which packs a
`ScoreLayout`'s segments into the fewest flat rows of at most `batch_tokens` tokens,
balanced (`balanced_rows`: near-equal tokens, segments and scored positions per row, so
one graph bucket fits every row with little padding in the layers and the head) and lays
every row's inputs out with numpy over the whole set at once, and `engine_score`, which runs the rows back to back
without a host sync (the host gathers and stages row k + 1 while the device runs row k;
all rows in one shape bucket, so one CUDA graph) and hands the results back in two
non-blocking transfers: the rows before the last while the last one runs, then the last.

The engine has no tree masks: the engine path lays requests out with "identical" sharing
(or "none" when asked); share_contexts="tree" is a runner option.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch

import packers
from gpu_runner.engine.scorer import EngineScorer, ScoreBatch
from gpu_runner.generate_engine import cached_engine
from gpu_runner.support import refusal
from gpu_runner.runs import run_indices
from gpu_runner.score_requests import ScoreLayout

__all__ = ["DEFAULT_BATCH_TOKENS", "PATHS", "RowPlan", "balanced_rows", "clear_score_cache", "engine_score", "engine_score_unsupported",
           "engine_scorer", "plan_rows"]

PATHS = ("auto", "engine", "runner")
# Tokens per flat row on the engine path: large enough that per-row host work and launch
# costs vanish next to the forward, small enough for the activations (7B: ~2 GB at 32k).
DEFAULT_BATCH_TOKENS = 32768
_KEY = "scorer"


def engine_score_unsupported(model: torch.nn.Module, *, share_contexts: str, backend: str,
                             need_cuda: bool) -> str | None:
    """Why the engine path does not apply, or None when it does. `need_cuda`: path "auto"
    takes the engine on CUDA only (on CPU it runs reference kernels; "engine" still may)."""
    if share_contexts == "tree":
        return "share_contexts='tree' needs a tree mask, which only the runner path has"
    if backend != "auto":
        return f"backend={backend!r} picks the runner path's attention"
    refused = refusal(model, "engine")  # the engine path only where the zoo proves it exact
    if refused is not None:
        return refused.message()
    device = model.get_input_embeddings().weight.device
    if need_cuda and device.type != "cuda":
        return f"the model is on {device.type}, and the engine path is for CUDA devices"
    try:
        cached_engine(model, max_tokens=0)
    except (ValueError, AttributeError, TypeError) as exc:
        return f"the prefill engine does not support the model ({exc})"
    return None


def engine_scorer(model: torch.nn.Module) -> EngineScorer:
    """The `EngineScorer` cached on `model` (built on first use, on generation's engine)."""
    eng, entry = cached_engine(model, max_tokens=0)  # scoring keeps no KV cache: the engine's buffer stays small
    scorer = entry.get(_KEY)
    if scorer is None or scorer.engine is not eng:
        scorer = entry[_KEY] = EngineScorer(eng)
    return scorer


def clear_score_cache(model: torch.nn.Module) -> None:
    """Free the scoring buffers and CUDA graphs cached on `model` (the engine stays:
    `gpu_runner.clear_generation_cache` frees it too)."""
    from gpu_runner.generate_engine import _ATTR

    entry = model.__dict__.get(_ATTR)
    if entry is not None and entry.pop(_KEY, None) is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class RowPlan:
    """A layout's segments packed into flat rows (`plan_rows`, under `batch_tokens`), and every row's
    inputs for the whole set, as flat arrays; row k owns the slices [bounds[k] : bounds[k + 1]]
    of each per-row array (`row(k)` cuts its `ScoreBatch` out).

    order:        int64 [S] segments in row order; seg_bounds [R + 1] index it
    lengths:      int64 [S] their lengths (row order); tok_bounds [R + 1]: tokens before each row
    gpos, pos_bounds: scored row positions of every row, row by row
    pair_u, target, pair_bounds: every pair's index into its row's positions and its target
    pair_order:   int64 [P] the layout's pair index of each pair in row order
    """

    order: np.ndarray
    seg_bounds: np.ndarray
    lengths: np.ndarray
    tok_bounds: np.ndarray
    gpos: np.ndarray
    pos_bounds: np.ndarray
    pair_u: np.ndarray
    target: np.ndarray
    pair_bounds: np.ndarray
    pair_order: np.ndarray

    @property
    def num_rows(self) -> int:
        return int(self.seg_bounds.size - 1)

    def largest(self) -> tuple[int, int, int, int]:
        """The largest row's (tokens, segments, positions, pairs)."""
        return tuple(int(np.diff(b).max()) for b in (self.tok_bounds, self.seg_bounds, self.pos_bounds,
                                                     self.pair_bounds))  # type: ignore[return-value]

    def row(self, layout: ScoreLayout, k: int) -> ScoreBatch:
        """Row k's `ScoreBatch` (its tokens gathered from `layout` now, one numpy gather)."""
        a, b = self.seg_bounds[k], self.seg_bounds[k + 1]
        lengths = self.lengths[a:b]
        tokens = layout.tokens[run_indices(layout.bounds[self.order[a:b]], lengths)]
        u0, u1, p0, p1 = self.pos_bounds[k], self.pos_bounds[k + 1], self.pair_bounds[k], self.pair_bounds[k + 1]
        return ScoreBatch(tokens=tokens, lengths=lengths, gpos=self.gpos[u0:u1], pair_u=self.pair_u[p0:p1],
                          target=self.target[p0:p1])


def _group_by_row(row: np.ndarray) -> np.ndarray:
    """The stable argsort of row numbers (numpy radix-sorts 16-bit keys: 10-15x faster than
    int64 over the 1.4M scored positions of a HellaSwag-shaped set)."""
    small = row.size == 0 or int(row.max()) < 1 << 16
    return np.argsort(row.astype(np.uint16) if small else row, kind="stable")


def balanced_rows(lengths: np.ndarray, capacity: int, tries: int = 3) -> np.ndarray | None:
    """int64 [S]: the row of each segment, rows of at most `capacity` tokens, balanced: with
    R = ceil(total / capacity) rows (then R + 1, ..., `tries` counts in all), the segments
    are dealt longest first in serpentine order (rows 0..R-1, then R-1..0, ...), so every row
    gets segments of every size class and near-equal tokens, segments and scored positions;
    a row over capacity then hands its shortest segments to the rows with the most room.
    None when no try fits (the caller packs another way)."""
    total, n = int(lengths.sum()), lengths.size
    order = np.argsort(-lengths, kind="stable")
    first = max(1, -(-total // int(capacity)))
    for rows in range(first, min(first + tries, n + 1)):
        rounds, place = np.divmod(np.arange(n, dtype=np.int64), rows)
        row = np.empty(n, dtype=np.int64)
        row[order] = np.where(rounds % 2 == 0, place, rows - 1 - place)
        sums = np.bincount(row, weights=lengths, minlength=rows).astype(np.int64)
        over = np.flatnonzero(sums > capacity).tolist()
        if not over:
            return row
        by_row = np.lexsort((lengths, row))  # each row's segments, shortest first
        row_first = np.concatenate(([0], np.cumsum(np.bincount(row, minlength=rows))))
        fits = True
        for r in over:
            for m in by_row[row_first[r] : row_first[r + 1]].tolist():
                if sums[r] <= capacity:
                    break
                room = capacity - sums
                room[r] = -1
                dest = int(room.argmax())
                if room[dest] < lengths[m]:  # rows with room never go over: only rows over give
                    fits = False
                    break
                row[m] = dest
                sums[dest] += lengths[m]
                sums[r] -= lengths[m]
            if not fits:
                break
        if fits:
            return row
    return None


def plan_rows(layout: ScoreLayout, batch_tokens: int) -> RowPlan:
    """Pack `layout`'s segments into flat rows of at most max(batch_tokens, longest) tokens
    and lay out every row's inputs, numpy over the whole set. The rows are balanced
    (`balanced_rows`): every row runs in the largest row's bucket, so near-equal rows pad
    least, and the scoring head's positions bucket follows the busiest row (first-fit
    decreasing, the fallback, leaves the short segments, so most positions, to the last
    rows: 2,368 positions in one row of an MMLU-shaped set against 494 balanced)."""
    lengths = layout.segment_lengths
    capacity = max(int(batch_tokens), int(lengths.max()))
    row_of_seg = balanced_rows(lengths, capacity)
    if row_of_seg is None:
        bins = packers.make_packer("ffd").pack(lengths.tolist(), capacity).bins
        sizes = np.fromiter(map(len, bins), dtype=np.int64, count=len(bins))
        row_of_seg = np.empty(lengths.size, dtype=np.int64)
        row_of_seg[np.fromiter(chain.from_iterable(bins), dtype=np.int64, count=lengths.size)] = np.repeat(
            np.arange(sizes.size), sizes)
    order = _group_by_row(row_of_seg)  # segments row by row
    sizes = np.bincount(row_of_seg)
    num_rows = int(sizes.size)
    ordered = lengths[order]
    before = np.cumsum(ordered) - ordered  # tokens before each segment, whole set
    seg_first = np.cumsum(sizes) - sizes  # index into order of each row's first segment
    row_tok0 = before[seg_first]
    start = np.empty(lengths.size, dtype=np.int64)
    start[order] = before - np.repeat(row_tok0, sizes)  # each segment's start in its row
    u_row = row_of_seg[layout.unique_segment]
    u_order = _group_by_row(u_row)
    u_counts = np.bincount(u_row, minlength=num_rows)
    u_first = np.cumsum(u_counts) - u_counts
    u_local = np.empty(u_row.size, dtype=np.int64)  # index of a position in its row's gpos
    u_local[u_order] = np.arange(u_row.size) - np.repeat(u_first, u_counts)
    p_row = u_row[layout.pair_unique]
    p_order = _group_by_row(p_row)
    p_counts = np.bincount(p_row, minlength=num_rows)
    return RowPlan(
        order=order, seg_bounds=np.append(seg_first, order.size), lengths=ordered,
        tok_bounds=np.append(row_tok0, int(lengths.sum())),
        gpos=(start[layout.unique_segment] + layout.unique_offset)[u_order], pos_bounds=np.append(u_first, u_row.size),
        pair_u=u_local[layout.pair_unique][p_order], target=layout.pair_target[p_order],
        pair_bounds=np.append(np.cumsum(p_counts) - p_counts, p_row.size), pair_order=p_order,
    )  # fmt: skip


def engine_score(model: torch.nn.Module, layout: ScoreLayout, *,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Score every pair of `layout` through the model's cached engine; yields, as they reach
    the host, (pair indices into the layout's pairs, their log-probs float64, their greedy
    flags bool): all pairs, over at most two yields. `layout` must be plain causal ("none" /
    "identical"). Consume it to the end (the device work is enqueued at the first `next`).

    The host stages row k + 1 while the device runs row k (`EngineScorer.run` enqueues only);
    every row runs in the largest row's bucket (one CUDA graph for the whole set). Results
    gather on the device; before the last row is enqueued, the rows so far go to the host in
    one non-blocking copy, so the caller assembles their results while the last row runs;
    then one more copy for the last row. No other host sync.
    """
    if layout.branches is not None:
        raise ValueError("the engine path has no tree masks: lay requests out with 'identical' or 'none'")
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, (int, np.integer)) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
    return _stream(engine_scorer(model), layout, plan_rows(layout, int(batch_tokens)))


def _stream(scorer: EngineScorer, layout: ScoreLayout,
            plan: RowPlan) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """`engine_score`'s generator (arguments checked, rows planned)."""
    # every row in the largest row's bucket (balanced rows: each pads little)
    shape = scorer.shape_of(*plan.largest())
    device = scorer.engine.device
    cuda = device.type == "cuda"
    num_pairs = layout.pair_target.size
    results = torch.empty((num_pairs, 2), dtype=torch.float32, device=device)  # [log-prob, greedy] per pair
    host = torch.empty((num_pairs, 2), dtype=torch.float32, pin_memory=cuda)
    pb = plan.pair_bounds
    copies: list[tuple[int, int, Any]] = []  # (first pair, end pair, event)

    def to_host(a: int, b: int) -> None:
        host[a:b].copy_(results[a:b], non_blocking=cuda)
        event = None
        if cuda:
            event = torch.cuda.Event()
            event.record()
        copies.append((a, b, event))

    last = plan.num_rows - 1
    for k in range(plan.num_rows):
        if k == last and k > 0:
            to_host(0, int(pb[k]))
        lp, greedy = scorer.run(plan.row(layout, k), shape)
        results[pb[k] : pb[k + 1], 0].copy_(lp)
        results[pb[k] : pb[k + 1], 1].copy_(greedy)
    to_host(int(pb[last]), num_pairs)
    values = host.numpy()
    for a, b, event in copies:
        if event is not None:
            event.synchronize()
        yield plan.pair_order[a:b], values[a:b, 0].astype(np.float64), values[a:b, 1] != 0
