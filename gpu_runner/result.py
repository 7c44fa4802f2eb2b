"""What a prefill hands back: `PrefillResult` (per-prompt logits and KV caches, caller's
order) and `PrefillOutOfMemoryError`. Both prefill paths (`runner.prefill` and
`engine.PrefillEngine.prefill_result`) produce this type, with a `PromptKV` as `.kv`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from gpu_runner.cache import KV, PromptKV, cache_from_kv
from gpu_runner.plan import ForwardPlan
from packers import Packing

__all__ = ["OUT_OF_MEMORY", "PrefillOutOfMemoryError", "PrefillResult"]

# torch >= 2.5 exposes the CUDA out-of-memory error as torch.OutOfMemoryError.
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class PrefillOutOfMemoryError(RuntimeError):
    """A packed forward ran out of device memory; the message names the forward and its prompts."""


@dataclass(frozen=True)
class PrefillResult:
    """What a prepacked prefill hands back, in the caller's prompt order.

    logits:  [N, vocab], each prompt's next-token logits (model dtype), from its last token.
    kv:      kv[i][layer] = (key, value), each [num_kv_heads, len_i, head_dim]: prompt i's
             cache, keys after RoPE as transformers caches store them (a `PromptKV`: views
             into the packed cache of its forward, sliced on access, no copy); None when
             prefill ran with return_kv=False.
    packing: the packing that ran; backend: the attention backend's name;
    forwards: the packed forwards, in the order they ran.
    """

    logits: torch.Tensor
    kv: PromptKV | None
    packing: Packing
    backend: str
    forwards: tuple[ForwardPlan, ...]
    config: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.packing.num_prompts
        if self.logits.dim() != 2 or self.logits.shape[0] != n:
            raise ValueError(f"logits must be [{n}, vocab], got {tuple(self.logits.shape)}")
        if self.kv is not None and len(self.kv) != n:
            raise ValueError(f"kv holds {len(self.kv)} prompts for {n}")

    @property
    def num_prompts(self) -> int:
        return self.packing.num_prompts

    def _kv_of(self, index: int) -> list[KV]:
        if self.kv is None:
            raise ValueError("this prefill ran with return_kv=False: no caches to hand out")
        if (
            isinstance(index, bool)
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < self.num_prompts
        ):
            raise ValueError(f"prompt index {index!r} is outside 0..{self.num_prompts - 1}")
        return self.kv[int(index)]

    def cache_for(self, index: int) -> Any:
        """Prompt `index`'s cache as a transformers `DynamicCache` (batch 1, len_i tokens).

        Continue with `model.generate(input_ids=prompt + [next_token], <cache kwarg>=cache)`,
        where `next_token` comes from `logits[index]`.
        """
        return cache_from_kv([(k[None], v[None]) for k, v in self._kv_of(index)], self.config)

    def cache_for_batch(self, indices: Sequence[int]) -> tuple[Any, torch.Tensor]:
        """Caches of `indices` as one left-padded `DynamicCache` and its attention mask.

        Returns (cache, attention_mask): layers [B, kv_heads, T, head_dim] with
        T = the longest of these prompts, and attention_mask int64 [B, T], 1 on real tokens.
        Feed `generate` left-padded input ids whose first T columns are these prompts, with
        the attention mask extended over the new columns.
        """
        if len(indices) == 0:
            raise ValueError("indices is empty")
        for i in indices:
            self._kv_of(i)  # validates
        layers, mask = self.kv.left_padded(indices)
        return cache_from_kv(layers, self.config), mask
