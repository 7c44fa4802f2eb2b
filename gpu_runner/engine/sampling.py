"""Next-token choice on the device: greedy, or sampling with temperature, top-k and top-p.

This module owns how logits become tokens in batch generation. `SamplingParams` is the
validated record of the options (HF generate's names and order: temperature, then top-k,
then top-p); `sample` draws with a seeded `torch.Generator` by the exponential race
(argmax of p / E with E ~ Exp(1) is a draw from p), so there is no host sync and one
generator gives the same tokens for the same seed, schedule and device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["SamplingParams", "sample"]


@dataclass(frozen=True)
class SamplingParams:
    """do_sample False = greedy (argmax; the other fields are then ignored).
    temperature > 0; top_k >= 0 (0 = off); 0 < top_p <= 1 (1 = off); seed: an int or None."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.do_sample, bool):
            raise ValueError(f"do_sample must be a bool, got {self.do_sample!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)) \
                or not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")

    def generator(self, device: torch.device) -> torch.Generator | None:
        """A generator on `device` seeded with `seed` (None when greedy or unseeded)."""
        if not self.do_sample or self.seed is None:
            return None
        return torch.Generator(device=device).manual_seed(self.seed)


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens [n] (int64, on logits' device) from logits [n, vocab]."""
    if not params.do_sample:
        return logits.argmax(-1)
    scores = logits.float() / params.temperature
    vocab = scores.shape[-1]
    if 0 < params.top_k < vocab:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the better tokens: drop once it reaches top_p
        drop = before >= params.top_p
        drop[:, 0] = False  # always keep the best token
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    race = torch.empty_like(probs).exponential_(generator=generator)
    return (probs / race).argmax(-1)
