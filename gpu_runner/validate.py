"""Prompt validation shared by both prefill paths (`runner.prefill` and `PrefillEngine`):
one set of rules, one set of messages, checked before any device work."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np
import torch

from gpu_runner.inputs import prompt_lengths
from gpu_runner.plan import text_config
from gpu_runner.positions import forward_rule
from packers.limits import check_num_prompts
from gpu_runner.support import UnsupportedModelError, local_window, model_type

__all__ = ["check_prompts", "sliding_window", "validate_prompts"]

_BOOLS = frozenset({bool, np.bool_})


def _normalize(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, (torch.Tensor, np.ndarray)):
            if p.ndim != 1:
                raise ValueError(f"prompt {i} must be 1-D token ids, got shape {tuple(p.shape)}")
            p = p.tolist()
        elif isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
            raise ValueError(f"prompt {i} must be a sequence of token ids, got {type(p).__name__}")
        out.append(p if type(p) is list else list(p))
    return out


def sliding_window(config: Any) -> int | None:
    """The smallest local-attention span any layer of the model uses (sliding window,
    attention chunk, local window: `support.local_window`), or None."""
    return local_window(config)


def check_prompts(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, local_attention: bool = False
) -> tuple[list[list[int]], list[int], np.ndarray]:
    """`validate_prompts` (same checks, same errors), also returning the flat token ids it
    checked (an integer array, prompts back to back) for callers that lay them out
    themselves (the engine)."""
    prompts = _normalize(prompts)
    if prompts:  # an empty list: prompt_lengths says so
        check_num_prompts(len(prompts))
    lengths = prompt_lengths(prompts)
    ids = list(chain.from_iterable(prompts))
    if not _BOOLS.isdisjoint(map(type, ids)):  # numpy would read [True, 5] as [1, 5]
        raise ValueError("token ids must be integers, not bools: every prompt must be a flat list of ints")
    try:
        tokens = np.asarray(ids)
    except (ValueError, TypeError):
        tokens = np.asarray([None])
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError("token ids must be integers: every prompt must be a flat list of ints")
    vocab = model.get_input_embeddings().num_embeddings
    bad = (tokens < 0) | (tokens >= vocab)
    if bad.any():
        flat = int(np.flatnonzero(bad)[0])
        prompt = int(np.searchsorted(np.cumsum(lengths), flat, side="right"))
        raise ValueError(
            f"prompt {prompt} has token id {int(tokens[flat])} outside the vocabulary [0, {vocab})"
        )
    longest = max(lengths)
    config = text_config(model.config)
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and context > 0:  # XLNet says -1: no limit
        context = forward_rule(model).max_tokens(context)  # RoBERTa: positions start at padding_idx + 1
        if longest > context:
            i = lengths.index(longest)
            raise ValueError(f"prompt {i} has {longest} tokens, over the model's context ({context})")
    window = sliding_window(config)
    if not local_attention and window is not None and longest > window:
        i = lengths.index(longest)
        raise UnsupportedModelError(
            f"prompt {i} has {longest} tokens, over the model's sliding window ({window}) "
            f"(local attention, model_type {model_type(model)!r}): packed prefill uses full causal masks"
        )
    return prompts, lengths, tokens


def validate_prompts(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], *, local_attention: bool = False
) -> tuple[list[list[int]], list[int]]:
    """Check prompts against the model; return (prompts as lists, lengths).

    `ValueError` for: an empty list, more prompts than `packers.limits.MAX_PROMPTS`, an
    empty prompt, a non-integer token id (bools and floats included), a token id outside
    [0, vocab), a prompt longer than `max_position_embeddings`, or a prompt longer than the
    model's local attention span (sliding window / attention chunk; `support.UnsupportedModelError`,
    a ValueError) unless `local_attention`: a caller that builds windowed masks passes True
    and asks `support.require_supported(..., lengths=...)` per path instead.
    """
    prompts, lengths, _ = check_prompts(model, prompts, local_attention=local_attention)
    return prompts, lengths
