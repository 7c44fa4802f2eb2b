"""Packed scoring: log-likelihoods of continuations given contexts, and rolling
log-likelihoods of long texts (perplexity), on any transformers causal LM.

`score(model, requests)` validates every (context ids, continuation ids) request before
any device work, lays them out as segments (`gpu_runner.score_requests`: context +
continuation[:-1] fed together, requests sharing work as `share_contexts` says), packs the
segments into rows with a packer, plans forwards under a memory budget (`gpu_runner.plan`),
and runs each packed forward through the decoder only. The final hidden states are
gathered at the scored positions alone and projected through the lm_head there, in chunks
of `LOGIT_CHUNK_TOKENS` (never a [tokens, vocab] tensor for a whole row), with
log_softmax in fp32. Results stay on the device until one transfer at the end (the
engine path: `gpu_runner.score_engine`, two, and results assembled as they arrive).

`score_rolling(model, texts, prefix_token_id=...)` cuts each text into lm-evaluation-
harness's disjoint rolling windows (`rolling_windows`) and scores them all in one `score`.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import packers
from gpu_runner.attention import get_backend, resolve_backend
from gpu_runner.attention.masks import dense_block_causal_mask
from gpu_runner.inputs import pack_inputs
from gpu_runner.model_guard import inference_call, model_lock
from gpu_runner.plan import estimate_forward_bytes, plan_forwards, text_config
from gpu_runner.positions import PositionRule, forward_rule
from gpu_runner.result import PrefillOutOfMemoryError
from gpu_runner.runner import decoder_of, model_device_dtype, project_logits, resolve_capacity, sub_packing
from gpu_runner.support import UnsupportedModelError, auto_backend, model_type, refusal, require_backend, require_supported
from gpu_runner.validate import sliding_window
from gpu_runner.score_engine import DEFAULT_BATCH_TOKENS, PATHS, engine_score, engine_score_unsupported
from simulator.names import DENSE
from gpu_runner.score_requests import (
    SHARE_MODES,
    ScoreLayout,
    _ids,
    auto_share,
    layout_requests,
    share_groups,
    validate_requests,
)
from gpu_runner.runs import run_indices

__all__ = ["LOGIT_CHUNK_TOKENS", "Route", "ScoreResult", "rolling_windows", "rounded_logprob", "route", "score", "score_rolling"]

# Scored positions projected through the lm_head per step: 4096 x 32000 fp32 = 0.5 GB.
LOGIT_CHUNK_TOKENS = 4096
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class ScoreResult:
    """One request's score.

    logprob:        sum over continuation tokens of log p(token | everything before it), nats.
    is_greedy:      every continuation token is the argmax of its next-token distribution.
    token_logprobs: the per-token log-probs (continuation order), or None if not asked for.
    """

    logprob: float
    is_greedy: bool
    token_logprobs: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.logprob, float) or not self.logprob <= 1e-3:  # NaN fails the comparison
            raise ValueError(f"logprob must be a float <= 0, got {self.logprob!r}")
        if not isinstance(self.is_greedy, bool):
            raise ValueError(f"is_greedy must be a bool, got {self.is_greedy!r}")
        if self.token_logprobs is not None and len(self.token_logprobs) == 0:
            raise ValueError("token_logprobs, when given, holds one value per continuation token")


def rounded_logprob(token_logprobs: Sequence[float], dtype: torch.dtype) -> float:
    """A continuation's log-likelihood as lm-eval's `HFLM` computes it when its log_softmax
    runs in `dtype` (HFLM's default: the model's dtype, e.g. bfloat16): each token's log-prob
    rounded to `dtype`, then summed as torch sums a `dtype` tensor (float32 accumulation,
    the total rounded to `dtype`). `score` itself keeps float32 (more accurate: on a bf16
    model HFLM's totals sit on the bf16 grid, one step 0.0625 at magnitudes 8-16); this is
    for results that must line up with HFLM's bit for bit where the logits agree."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    if len(token_logprobs) == 0:
        raise ValueError("token_logprobs must hold one value per continuation token")
    return float(torch.tensor(list(token_logprobs), dtype=torch.float32).to(dtype).sum())


def _tree_extras(layout: ScoreLayout, members: list[int], rows: np.ndarray, starts: np.ndarray,
                 row_len: int, num_rows: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Position ids and branch ids [num_rows, row_len] of a tree-layout forward (padding:
    position 0, branch -1)."""
    assert layout.positions is not None and layout.branches is not None
    members = np.asarray(members, dtype=np.int64)
    lengths = layout.segment_lengths[members]
    dest = run_indices(rows * row_len + starts, lengths)
    source = run_indices(layout.bounds[members], lengths)
    pos = np.zeros(num_rows * row_len, dtype=np.int64)
    branch = np.full(num_rows * row_len, -1, dtype=np.int64)
    pos[dest] = layout.positions[source]
    branch[dest] = layout.branches[source]
    shape = (num_rows, row_len)
    return (torch.from_numpy(pos.reshape(shape)).to(device), torch.from_numpy(branch.reshape(shape)).to(device))


def _slots(packing: packers.Packing) -> tuple[np.ndarray, np.ndarray]:
    """Row and start offset of each prompt of `packing` (its own prompt order), host-side."""
    rows = np.empty(packing.num_prompts, dtype=np.int64)
    starts = np.empty(packing.num_prompts, dtype=np.int64)
    for r, members in enumerate(packing.bins):
        offset = 0
        for i in members:
            rows[i], starts[i] = r, offset
            offset += packing.lengths[i]
    return rows, starts


def score(
    model: torch.nn.Module,
    requests: Sequence[Any],
    *,
    packer: str | packers.Packer = "ffd",
    capacity: int | str = "max",
    backend: str = "auto",
    return_token_logprobs: bool = False,
    share_contexts: str = "auto",
    memory_budget_bytes: int | None = None,
    pad_token_id: int = 0,
    path: str = "auto",
    batch_tokens: int = DEFAULT_BATCH_TOKENS,
) -> list[ScoreResult]:
    """Log-likelihood of each continuation given its context, in the caller's order.

    requests: N (context ids, continuation ids) pairs, each a non-empty list / 1-D tensor of
              ints; the model is fed context + continuation[:-1] (<= max_position_embeddings).
    packer, capacity ("max" = the longest segment, or an int), backend ("auto", "dense",
              "flex", "varlen"), memory_budget_bytes: as for `gpu_runner.prefill`.
    share_contexts: "none", "identical", "tree" (`gpu_runner.score_requests`; "tree" runs
              the dense backend) or "auto": "tree" where it feeds >= 10% fewer tokens than
              "identical" and the backend allows it (`score_requests.auto_share`), else
              "identical". All give the same scores up to float summation order.
    return_token_logprobs: also hand back each continuation token's log-prob.
    path: "runner" (the above: HF decoder over packed rows), "engine" (the CUDA-graph
              `PrefillEngine`: flat rows of <= `batch_tokens` tokens, "identical" sharing
              unless "none" is asked; packer, capacity, memory_budget_bytes and pad_token_id
              do not apply; `gpu_runner.score_engine`), or "auto": the engine where it
              applies (CUDA, a model type it supports, backend "auto", share_contexts not
              "tree", and, with share_contexts "auto", no tree layout that feeds >= 10%
              fewer tokens: there the runner's tree pays more), else the runner. ValueError if "engine" is asked where it cannot run.
    Raises `ValueError` naming the request index on bad input, before any device work;
    `support.UnsupportedModelError` (a ValueError) when the backend is not proven exact for
    the model ("auto" picks one that is);
    `PrefillOutOfMemoryError` naming the forward if the device runs out of memory.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    with _gc_paused():  # tens of thousands of small objects: the cyclic GC would walk the caller's heap
        return _score(model, requests, packer=packer, capacity=capacity, backend=backend,
                      return_token_logprobs=return_token_logprobs, share_contexts=share_contexts,
                      memory_budget_bytes=memory_budget_bytes, pad_token_id=pad_token_id, path=path,
                      batch_tokens=batch_tokens)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off inside (restored after: score's host work allocates
    one object per request, which would trigger full collections over large request lists)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@dataclass(frozen=True)
class Route:
    """How `score` runs a validated request list.

    path:   "engine" (`gpu_runner.score_engine`, CUDA graphs) or "runner" (packed HF forwards)
    share:  the layout's sharing mode ("none", "identical" or "tree"; the engine's is never "tree")
    groups: the share groups computed while deciding (reused by the layout), or None
    """

    path: str
    share: str
    groups: Any = None


def route(model: torch.nn.Module, checked: Sequence[Any], *, share_contexts: str = "auto", path: str = "auto",
          backend: str = "auto", positions: PositionRule | None = None) -> Route:
    """The path and sharing mode `score(model, requests, share_contexts=..., path=...,
    backend=...)` takes for `checked` (requests as `validate_requests` returns them): the
    one decision, also what benchmarks record. share_contexts "auto" takes the tree where a
    dense tree mask is proven exact and feeds >= 10% fewer tokens (`auto_share`), else
    "identical"; path "auto" takes the engine unless the sharing is a tree (measured, H200,
    7B, HellaSwag-shaped: the runner's tree 2.48x HFLM, the engine 1.76x) or the engine
    cannot run the model (`engine_score_unsupported`, CUDA required). path "engine" raises
    ValueError with the engine's reason where it cannot run."""
    positions = forward_rule(model) if positions is None else positions
    share, groups = share_contexts, None
    if share == "auto" and path != "engine":  # the engine path shares "identical" (no tree masks)
        tree_ok = backend in ("auto", "dense") and refusal(model, DENSE) is None and positions.plain  # dense tree mask
        groups = share_groups(checked) if tree_ok else None
        share = auto_share(checked, groups) if tree_ok else "identical"
    if path == "auto" and share == "tree":
        path = "runner"
    if path != "runner":
        reason = engine_score_unsupported(model, share_contexts=share_contexts, backend=backend,
                                          need_cuda=path == "auto")
        if reason is None:
            return Route("engine", "none" if share_contexts == "none" else "identical", groups)
        if path == "engine":
            raise ValueError(f"path='engine' cannot score this: {reason}")
    return Route("runner", share, groups)


def _score(model: torch.nn.Module, requests: Sequence[Any], *, packer: str | packers.Packer, capacity: int | str,
           backend: str, return_token_logprobs: bool, share_contexts: str, memory_budget_bytes: int | None,
           pad_token_id: int, path: str, batch_tokens: int) -> list[ScoreResult]:
    """`score` (same arguments, path already checked)."""
    if share_contexts != "auto" and share_contexts not in SHARE_MODES:
        raise ValueError(f"share_contexts must be 'auto' or one of {SHARE_MODES}, got {share_contexts!r}")
    if share_contexts == "tree" and backend not in ("auto", "dense"):
        raise ValueError(f"share_contexts='tree' needs a tree mask: backend must be 'auto' or 'dense', got {backend!r}")
    config = text_config(model.config)
    vocab = model.get_input_embeddings().num_embeddings
    positions = forward_rule(model)  # RoBERTa-style offsets; UnsupportedModelError for an unknown rule
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and context > 0:
        context = positions.max_tokens(context)
    if share_contexts == "tree" and not positions.plain:
        raise UnsupportedModelError(
            f"share_contexts='tree' is not supported for model_type {model_type(model)!r} (position offset): "
            "tree layouts number positions from 0; use share_contexts='identical' or 'none'"
        )
    checked = validate_requests(requests, vocab_size=vocab, window=sliding_window(config),
                                max_input_tokens=context)
    if not 0 <= int(pad_token_id) < vocab:
        raise ValueError(f"pad_token_id {pad_token_id} is outside the vocabulary [0, {vocab})")
    if memory_budget_bytes is not None:
        memory_budget_bytes = packers.validate_capacity(memory_budget_bytes)
    way = route(model, checked, share_contexts=share_contexts, path=path, backend=backend, positions=positions)
    if way.path == "engine":
        layout = layout_requests(checked, way.share, way.groups)
        with model_lock(model):  # the cached scorer's buffers are per model: one call at a time
            return _stream_results(layout, engine_score(model, layout, batch_tokens=batch_tokens),
                                   return_token_logprobs)
    share, groups = way.share, way.groups
    device, dtype = model_device_dtype(model)
    layout = layout_requests(checked, share, groups)
    cap = resolve_capacity(capacity, layout.lengths)
    packer_obj = packers.make_packer(packer) if isinstance(packer, str) else packer
    packing = packers.checked_pack(packer_obj, layout.lengths, cap)  # a plug-in's result is checked
    if share == "tree":
        require_supported(model, DENSE, lengths=layout.lengths)  # not proven exact: UnsupportedModelError
        attn = get_backend(DENSE)
    elif backend == "auto":  # the cheapest backend proven exact for this model
        attn = resolve_backend(auto_backend(model, device, dtype, lengths=layout.lengths, packing=packing),
                               device, dtype)
    else:
        attn = resolve_backend(backend, device, dtype)
        require_backend(model, backend, lengths=layout.lengths)

    def estimate(rows: int, width: int, n: int) -> int:
        return estimate_forward_bytes(
            model.config, num_rows=rows, row_len=width, num_prompts=min(LOGIT_CHUNK_TOKENS, rows * width),
            backend=attn.name, dtype=dtype, device=device, return_kv=False,
        )  # fmt: skip

    plans = plan_forwards(packing, estimate, memory_budget_bytes=memory_budget_bytes)
    num_pairs = layout.pair_target.size
    pair_lp = torch.empty(num_pairs, dtype=torch.float32, device=device)
    pair_greedy = torch.empty(num_pairs, dtype=torch.bool, device=device)
    unique_forward = np.empty(layout.unique_segment.size, dtype=np.int64)
    unique_flat = np.empty(layout.unique_segment.size, dtype=np.int64)
    decoder = decoder_of(model)
    with inference_call(model, attn.attn_implementation):  # the model to itself, eval mode
        for k, plan in enumerate(plans):
            if len(plan.bins) == packing.num_bins:
                members, sub = list(range(packing.num_prompts)), packing
            else:
                members, sub = sub_packing(packing, plan.bins)
            rows, starts = _slots(sub)
            # Scored positions of this forward: flat index (row * row_len + start + offset).
            local = np.full(packing.num_prompts, -1, dtype=np.int64)
            local[members] = np.arange(len(members))
            here = np.flatnonzero(local[layout.unique_segment] >= 0)
            j = local[layout.unique_segment[here]]
            unique_forward[here] = k
            unique_flat[here] = rows[j] * plan.row_len + starts[j] + layout.unique_offset[here]
            try:
                _run_forward(model, decoder, attn, layout, members, sub, plan, rows, starts, here,
                             unique_flat, pad_token_id, device, pair_lp, pair_greedy, positions)  # fmt: skip
            except _OUT_OF_MEMORY as exc:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                raise PrefillOutOfMemoryError(
                    f"out of memory in scoring forward {k + 1}/{len(plans)}: {plan.num_rows} rows x "
                    f"{plan.row_len} tokens (estimated {plan.estimated_bytes} bytes); pass "
                    "memory_budget_bytes to split it into smaller forwards"
                ) from exc
    return _results(layout, pair_lp.cpu().numpy().astype(np.float64), pair_greedy.cpu().numpy(),
                    return_token_logprobs)


def _results(layout: ScoreLayout, lp: np.ndarray, greedy: np.ndarray, return_token_logprobs: bool,
             requests: np.ndarray | None = None) -> list[ScoreResult]:
    """Results of `requests` (default all, in order) from per-pair log-probs and greedy flags
    (the layout's pair order; only these requests' pairs are read)."""
    counts = np.bincount(layout.pair_request, minlength=layout.num_requests)
    first = np.cumsum(counts) - counts
    sums = np.add.reduceat(lp, first)
    all_greedy = np.logical_and.reduceat(greedy, first)
    if requests is not None:
        sums, all_greedy, first, counts = sums[requests], all_greedy[requests], first[requests], counts[requests]
    sums, all_greedy = sums.tolist(), all_greedy.tolist()  # Python floats / bools: no numpy scalar per request
    if not return_token_logprobs:
        return [ScoreResult(logprob, flag) for logprob, flag in zip(sums, all_greedy)]
    ends = (first + counts).tolist()
    flat = lp.tolist()
    return [ScoreResult(logprob, flag, tuple(flat[a:b]))
            for logprob, flag, a, b in zip(sums, all_greedy, first.tolist(), ends)]


def _stream_results(layout: ScoreLayout, chunks: Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]],
                    return_token_logprobs: bool) -> list[ScoreResult]:
    """Per-request results, caller's order, from (pair indices, log-probs, greedy flags)
    chunks as they arrive: a request's result is built as soon as its last pair has arrived
    (so the results of early chunks are assembled while the device computes later ones).
    RuntimeError if a pair never arrives."""
    n = layout.num_requests
    lp = np.zeros(layout.pair_target.size, dtype=np.float64)
    greedy = np.zeros(layout.pair_target.size, dtype=bool)
    missing = np.bincount(layout.pair_request, minlength=n)  # pairs still to come per request
    out: list[ScoreResult | None] = [None] * n
    for pairs, chunk_lp, chunk_greedy in chunks:
        lp[pairs], greedy[pairs] = chunk_lp, chunk_greedy
        touched = np.unique(layout.pair_request[pairs])
        missing -= np.bincount(layout.pair_request[pairs], minlength=n)
        done = touched[missing[touched] == 0]
        if done.size == n:
            out = _results(layout, lp, greedy, return_token_logprobs)  # type: ignore[assignment]
        else:
            for i, result in zip(done.tolist(), _results(layout, lp, greedy, return_token_logprobs, done)):
                out[i] = result
    if missing.any():
        raise RuntimeError(f"the engine returned no score for request {int(np.flatnonzero(missing).min())}")
    return out  # type: ignore[return-value]


def _run_forward(model, decoder, attn, layout: ScoreLayout, members, sub, plan, rows, starts, here,
                 unique_flat, pad_token_id, device, pair_lp, pair_greedy, positions: PositionRule) -> None:
    """One packed forward; writes the log-prob and greedy flag of every pair it scores."""
    inputs = pack_inputs([layout.segment(g) for g in members], sub, row_len=plan.row_len,
                         num_rows=plan.num_rows, pad_token_id=pad_token_id, device=device,
                         positions=positions)  # fmt: skip
    position_ids = inputs.position_ids
    if layout.branches is not None:
        position_ids, branch = _tree_extras(layout, members, rows, starts, plan.row_len, plan.num_rows, device)
        same_branch = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
        kwargs = {"attention_mask": dense_block_causal_mask(inputs.segment_ids) & same_branch.unsqueeze(1)}
    else:
        kwargs = attn.forward_kwargs(inputs)
    out = decoder(input_ids=inputs.input_ids, position_ids=position_ids, use_cache=False, **kwargs)
    hidden = out.last_hidden_state.reshape(-1, out.last_hidden_state.shape[-1])
    # Pairs of this forward, grouped by their scored position (contiguous slices per chunk).
    rank = np.full(layout.unique_segment.size, -1, dtype=np.int64)
    rank[here] = np.arange(here.size)
    pair_rank = rank[layout.pair_unique]
    pairs = np.flatnonzero(pair_rank >= 0)
    pairs = pairs[np.argsort(pair_rank[pairs], kind="stable")]
    sorted_rank = pair_rank[pairs]
    flat = torch.from_numpy(unique_flat[here]).to(device)
    for lo in range(0, here.size, LOGIT_CHUNK_TOKENS):
        hi = min(lo + LOGIT_CHUNK_TOKENS, here.size)
        a, b = np.searchsorted(sorted_rank, [lo, hi])
        logits = project_logits(model, hidden.index_select(0, flat[lo:hi])).float()
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = torch.from_numpy(sorted_rank[a:b] - lo).to(device)
        target = torch.from_numpy(layout.pair_target[pairs[a:b]]).to(device)
        dest = torch.from_numpy(pairs[a:b]).to(device)
        pair_lp[dest] = logprobs[chosen, target]
        pair_greedy[dest] = logprobs.argmax(-1)[chosen] == target


def rolling_windows(tokens: Sequence[int], prefix_token_id: int, max_length: int,
                    context_len: int = 1) -> list[tuple[list[int], list[int]]]:
    """lm-evaluation-harness's disjoint rolling windows of one text: (context, continuation)
    pairs that predict every token exactly once, each window feeding <= max_length tokens
    (the first conditioned on `prefix_token_id`, later ones on as much earlier text as fits).

    Same as `lm_eval.utils.make_disjoint_window` over `get_rolling_token_windows`.
    """
    if not 1 <= context_len <= max_length:
        raise ValueError(f"need 1 <= context_len <= max_length, got {context_len} and {max_length}")
    tokens = list(tokens)
    windows: list[tuple[list[int], list[int]]] = []
    if not tokens:
        return windows
    pred_len = max_length - context_len + 1
    first = min(max_length, len(tokens))
    raw = [([prefix_token_id] + tokens[: first - 1], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, pred_len)
        end = predicted + n
        raw.append((tokens[max(end - max_length - 1, 0) : end - 1], tokens[end - n : end]))
        predicted += n
    for fed, target in raw:
        windows.append((fed[: len(fed) - (len(target) - 1)], target))
    return windows


def score_rolling(
    model: torch.nn.Module,
    texts: Sequence[Sequence[int]],
    *,
    prefix_token_id: int,
    max_length: int | None = None,
    context_len: int = 1,
    **options: Any,
) -> list[float]:
    """Total log-likelihood (nats) of each token-id text, caller's order: every token is
    predicted once, in disjoint windows of <= `max_length` fed tokens (default the model's
    max_position_embeddings), the first conditioned on `prefix_token_id` (e.g. BOS/EOS), as
    lm-evaluation-harness's `loglikelihood_rolling` does. `options` go to `score`.
    ValueError naming the text index for an empty or non-int text, before device work.
    """
    config = text_config(model.config)
    vocab = model.get_input_embeddings().num_embeddings
    context = getattr(config, "max_position_embeddings", None)
    if max_length is None:
        max_length = context
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1 or (
        context is not None and max_length > context
    ):
        raise ValueError(f"max_length must be an int in [1, {context}], got {max_length!r}")
    if isinstance(prefix_token_id, bool) or not isinstance(prefix_token_id, (int, np.integer)) or not (
        0 <= prefix_token_id < vocab
    ):
        raise ValueError(f"prefix_token_id must be a token id in [0, {vocab}), got {prefix_token_id!r}")
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError("texts must be a non-empty list of token-id lists")
    requests: list[tuple[list[int], list[int]]] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        ids = _ids(text, f"text {i}")
        if ids.size == 0:
            raise ValueError(f"text {i} is empty: nothing to score")
        bad = (ids < 0) | (ids >= vocab)
        if bad.any():
            raise ValueError(f"text {i} has token id {int(ids[bad.argmax()])} outside the vocabulary [0, {vocab})")
        windows = rolling_windows(ids.tolist(), int(prefix_token_id), max_length, context_len)
        requests += windows
        owner += [i] * len(windows)
    results = score(model, requests, **options)
    totals = np.zeros(len(texts), dtype=np.float64)
    np.add.at(totals, owner, [r.logprob for r in results])
    return totals.tolist()
