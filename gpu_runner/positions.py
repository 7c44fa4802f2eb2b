"""Position ids of one prompt run alone, as the model (or HF `generate`) numbers them, so
that packed rows can restart them per prompt: the one place that knows position rules.

Most models number a prompt's tokens 0, 1, 2, ... RoBERTa-family models (RoBERTa,
XLM-RoBERTa(-XL), CamemBERT, Data2Vec-text, X-MOD, RoBERTa-PreLayerNorm) compute them in
their embeddings when given none (fairseq's `make_positions`, transformers'
`create_position_ids_from_input_ids`): `padding_idx + 1, padding_idx + 2, ...`, a token
equal to `padding_idx` taking position `padding_idx` and not advancing the count.

HF `generate`, however, passes position ids of its own (`attention_mask.cumsum(-1) - 1`:
0, 1, 2, ...) to every decoder-only model whose forward takes `position_ids` (5.17 and
5.25 alike), so a prefill that `generate` continues numbers the prompt that way
(`generate_rule`); a plain prefill matches the model's forward on the prompt alone
(`forward_rule`). The model-zoo test proves both against the prompt run alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["PLAIN", "PositionRule", "forward_rule", "generate_rule"]


@dataclass(frozen=True)
class PositionRule:
    """How one prompt's tokens are numbered.

    first:      position of a prompt's first (counted) token.
    skip_token: a token id that takes position `skip_token` and is not counted (RoBERTa's
                `padding_idx`), or None: every token counts.
    """

    first: int = 0
    skip_token: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.first, int) or self.first < 0:
            raise ValueError(f"first position must be an int >= 0, got {self.first!r}")
        if self.skip_token is not None and (not isinstance(self.skip_token, int) or self.skip_token < 0):
            raise ValueError(f"skip_token must be None or a token id >= 0, got {self.skip_token!r}")

    @property
    def plain(self) -> bool:
        return self.first == 0 and self.skip_token is None

    def positions(self, tokens: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Position ids int64 [T] of prompts laid back to back: `tokens` int64 [T], the
        prompts' `lengths` int64 [N] (each >= 1, summing to T)."""
        first_of = np.cumsum(lengths) - lengths
        if self.skip_token is None:
            return np.arange(tokens.size, dtype=np.int64) - np.repeat(first_of, lengths) + self.first
        counted = (tokens != self.skip_token).astype(np.int64)
        running = np.cumsum(counted)
        before = np.repeat(running[first_of] - counted[first_of], lengths)  # counted tokens of earlier prompts
        rank = running - before  # 1-based count within the prompt, this token included
        return np.where(counted == 1, self.first - 1 + rank, self.skip_token).astype(np.int64)

    def max_tokens(self, max_position_embeddings: int) -> int:
        """The longest prompt whose positions stay below `max_position_embeddings`."""
        return max_position_embeddings - self.first


PLAIN = PositionRule()


def _position_maker(model: torch.nn.Module) -> tuple[torch.nn.Module, int] | None:
    """The embeddings module that computes position ids from input ids, and its padding_idx."""
    for module in model.modules():
        make = getattr(module, "create_position_ids_from_input_ids", None)
        pad = getattr(module, "padding_idx", None)
        if callable(make) and isinstance(pad, int) and not isinstance(pad, bool):
            return module, pad
    return None


def forward_rule(model: torch.nn.Module) -> PositionRule:
    """The rule the model's forward applies to a prompt given no position ids: `PLAIN`, or
    RoBERTa's offset rule, checked by calling the model's own position function on probe
    rows. `ValueError` when the model computes positions some other way (then no packed
    layout is known to match it)."""
    from gpu_runner.support import UnsupportedModelError, model_type

    found = _position_maker(model)
    if found is None:
        return PLAIN
    module, pad = found
    rule = PositionRule(first=pad + 1, skip_token=pad)
    other = pad + 1
    probe = torch.tensor([[other, other, pad, other], [other, pad, pad, other]])
    lengths = np.array([4, 4], dtype=np.int64)
    expected = rule.positions(probe.flatten().numpy().astype(np.int64), lengths).reshape(2, 4)
    try:
        got = module.create_position_ids_from_input_ids(probe, pad)
        same = got.tolist() == expected.tolist()
    except Exception:  # noqa: BLE001 - any other signature or result: not the rule proven here
        same = False
    if not same:
        raise UnsupportedModelError(
            f"model_type {model_type(model)!r} computes position ids in "
            f"{type(module).__name__}.create_position_ids_from_input_ids, not by the padding_idx + 1 "
            "offset rule (fairseq make_positions) that packed rows reproduce; use HF's own forward per prompt"
        )
    return rule


def generate_rule(model: torch.nn.Module) -> PositionRule:
    """The rule under which HF `generate` runs a prompt alone: `PLAIN` (it passes
    `attention_mask.cumsum(-1) - 1`) when the model's forward takes `position_ids`,
    else the model's own `forward_rule`."""
    if "position_ids" in inspect.signature(model.forward).parameters and not getattr(
        model.config, "is_encoder_decoder", False
    ):
        return PLAIN
    return forward_rule(model)
