"""The engine path of `gpu_runner.score`: when it applies, and a whole request set through it.

This module owns the glue between `score(..., path=...)` and `engine.scorer.EngineScorer`:
whether the engine path applies (`engine_score_unsupported` returns the reason it does
not, or None), the scorer cached on the model next to generation's engine (one
`PrefillEngine` per model, its weights fused once; `clear_score_cache` frees the scorer's
buffers and graphs, `clear_generation_cache` everything), and `engine_score`, which
packs a `ScoreLayout`'s segments into flat rows of at most `batch_tokens` tokens (FFD,
so rows fill up to the budget and share one graph bucket), lays every row out with numpy
over the whole set at once, runs the rows back to back without a host sync (the host
stages row k + 1 while the device runs row k; all rows in one shape bucket, so one
CUDA graph) and transfers the results once at the end.

The engine has no tree masks: the engine path lays requests out with "identical" sharing
(or "none" when asked); share_contexts="tree" is a runner option.
"""

from __future__ import annotations

import numpy as np
import torch

import packers
from gpu_runner.engine.scorer import EngineScorer, ScoreBatch
from gpu_runner.generate_engine import cached_engine
from gpu_runner.support import refusal
from gpu_runner.score_requests import ScoreLayout

__all__ = ["DEFAULT_BATCH_TOKENS", "PATHS", "clear_score_cache", "engine_score", "engine_score_unsupported",
           "engine_scorer"]

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
        cached_engine(model)
    except (ValueError, AttributeError, TypeError) as exc:
        return f"the prefill engine does not support the model ({exc})"
    return None


def engine_scorer(model: torch.nn.Module) -> EngineScorer:
    """The `EngineScorer` cached on `model` (built on first use, on generation's engine)."""
    eng, entry = cached_engine(model)
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


def _plan(layout: ScoreLayout, batch_tokens: int) -> dict[str, np.ndarray]:
    """Rows of segments (FFD under batch_tokens) and every row's inputs, for the whole set:
    segment order, per-row offsets into it, the scored positions and pairs sorted by row."""
    lengths = np.asarray(layout.lengths, dtype=np.int64)
    capacity = max(int(batch_tokens), int(lengths.max()))
    bins = packers.make_packer("ffd").pack(lengths.tolist(), capacity).bins
    sizes = np.fromiter((len(b) for b in bins), dtype=np.int64, count=len(bins))
    order = np.fromiter((i for b in bins for i in b), dtype=np.int64, count=int(sizes.sum()))
    num_rows = len(bins)
    row_of_seg = np.empty(lengths.size, dtype=np.int64)
    row_of_seg[order] = np.repeat(np.arange(num_rows), sizes)
    ordered = lengths[order]
    before = np.cumsum(ordered) - ordered  # tokens before each segment, whole set
    seg_first = np.cumsum(sizes) - sizes  # index into order of each row's first segment
    row_tok0 = before[seg_first]
    start = np.empty(lengths.size, dtype=np.int64)
    start[order] = before - np.repeat(row_tok0, sizes)  # each segment's start in its row
    u_row = row_of_seg[layout.unique_segment]
    u_order = np.argsort(u_row, kind="stable")
    u_counts = np.bincount(u_row, minlength=num_rows)
    u_first = np.cumsum(u_counts) - u_counts
    u_local = np.empty(u_row.size, dtype=np.int64)  # index of a position in its row's gpos
    u_local[u_order] = np.arange(u_row.size) - np.repeat(u_first, u_counts)
    p_row = u_row[layout.pair_unique]
    p_order = np.argsort(p_row, kind="stable")
    p_counts = np.bincount(p_row, minlength=num_rows)
    return {
        "order": order, "seg_bounds": np.append(seg_first, order.size),
        "tok_bounds": np.append(row_tok0, int(lengths.sum())), "ordered_lengths": ordered,
        "gpos": (start[layout.unique_segment] + layout.unique_offset)[u_order],
        "u_bounds": np.append(u_first, u_row.size),
        "pair_u": u_local[layout.pair_unique][p_order], "target": layout.pair_target[p_order],
        "p_order": p_order, "p_bounds": np.append(np.cumsum(p_counts) - p_counts, p_row.size),
    }  # fmt: skip


def engine_score(model: torch.nn.Module, layout: ScoreLayout, *,
                 batch_tokens: int = DEFAULT_BATCH_TOKENS) -> tuple[np.ndarray, np.ndarray]:
    """Log-prob (float64) and greedy flag of every scored pair of `layout` (its pair order),
    through the model's cached engine. `layout` must be plain causal ("none" / "identical")."""
    if layout.branches is not None:
        raise ValueError("the engine path has no tree masks: lay requests out with 'identical' or 'none'")
    if isinstance(batch_tokens, bool) or not isinstance(batch_tokens, (int, np.integer)) or batch_tokens < 1:
        raise ValueError(f"batch_tokens must be a positive int, got {batch_tokens!r}")
    scorer = engine_scorer(model)
    plan = _plan(layout, int(batch_tokens))
    tokens = np.concatenate([layout.segments[i] for i in plan["order"]]).astype(np.int64, copy=False)
    seg_b, tok_b, u_b, p_b = plan["seg_bounds"], plan["tok_bounds"], plan["u_bounds"], plan["p_bounds"]
    rows = range(len(seg_b) - 1)
    # every row runs in the largest row's bucket: one CUDA graph for the whole set (rows
    # are FFD-filled up to the budget, so the padding of the few light rows is small)
    shape = scorer.shape_of(int(np.diff(tok_b).max()), int(np.diff(seg_b).max()), int(np.diff(u_b).max()),
                            int(np.diff(p_b).max()))
    device = scorer.engine.device
    num_pairs = layout.pair_target.size
    lp = torch.empty(num_pairs, dtype=torch.float32, device=device)
    greedy = torch.empty(num_pairs, dtype=torch.bool, device=device)
    for k in rows:
        batch = ScoreBatch(tokens=tokens[tok_b[k] : tok_b[k + 1]],
                           lengths=plan["ordered_lengths"][seg_b[k] : seg_b[k + 1]],
                           gpos=plan["gpos"][u_b[k] : u_b[k + 1]], pair_u=plan["pair_u"][p_b[k] : p_b[k + 1]],
                           target=plan["target"][p_b[k] : p_b[k + 1]])  # fmt: skip
        row_lp, row_greedy = scorer.run(batch, shape)
        lp[p_b[k] : p_b[k + 1]].copy_(row_lp)
        greedy[p_b[k] : p_b[k + 1]].copy_(row_greedy)
    out_lp = np.empty(num_pairs, dtype=np.float64)
    out_greedy = np.empty(num_pairs, dtype=bool)
    out_lp[plan["p_order"]] = lp.cpu().numpy()
    out_greedy[plan["p_order"]] = greedy.cpu().numpy()
    return out_lp, out_greedy

