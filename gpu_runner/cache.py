"""transformers-version compatibility for KV caches: the cache keyword of a model's
forward, reading K/V out of a cache after a forward, and building a `DynamicCache` from
per-prompt (key, value) tensors (left-padded for a batch).

Facts handled here (checked in the sources): transformers 5.17 names the forward keyword
`past_key_values` and the output field `past_key_values`; newer 5.x (5.24) names both
`cache` (still accepting `past_key_values` until 5.40 with a deprecation). 5.x caches hold
`cache.layers[i].keys / .values`; 4.x caches held `cache.key_cache[i] / .value_cache[i]`.
Everything is detected from the objects at hand, never from version numbers.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, overload

import torch

__all__ = [
    "KV",
    "PromptKV",
    "cache_from_kv",
    "cache_kwarg_name",
    "cache_layers_kv",
    "left_padded_cache",
    "new_dynamic_cache",
    "output_cache",
]

# One layer's (key, value), each [num_kv_heads, tokens, head_dim] for one prompt.
KV = tuple[torch.Tensor, torch.Tensor]


def cache_kwarg_name(module: torch.nn.Module) -> str:
    """Keyword under which `module.forward` takes its cache: "cache" or "past_key_values"."""
    params = inspect.signature(module.forward).parameters  # follows __wrapped__ of decorators
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise ValueError(
        f"{type(module).__name__}.forward takes neither `cache` nor `past_key_values`: "
        "cannot pass it a KV cache"
    )


def output_cache(output: Any) -> Any:
    """The cache a transformers model output carries (`.cache` or `.past_key_values`)."""
    for name in ("cache", "past_key_values"):
        cache = getattr(output, name, None)
        if cache is not None:
            return cache
    raise ValueError(f"{type(output).__name__} carries no cache: was use_cache off?")


def cache_layers_kv(cache: Any) -> list[KV]:
    """Per-layer (key, value) tensors of a cache, each [batch, kv_heads, tokens, head_dim]
    (of its self-attention part for an `EncoderDecoderCache`, which RoCBert's decoder keeps)."""
    cache = getattr(cache, "self_attention_cache", cache)
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers 5.x
        return [(layer.keys, layer.values) for layer in layers]
    if hasattr(cache, "key_cache"):  # transformers 4.x
        return list(zip(cache.key_cache, cache.value_cache))
    if isinstance(cache, (tuple, list)):  # legacy tuple-of-tuples format
        return [(k, v) for k, v, *_ in cache]
    raise ValueError(f"cannot read keys and values out of a {type(cache).__name__}")


def new_dynamic_cache(config: Any = None) -> Any:
    """An empty `DynamicCache`; with `config`, shaped like the one `generate` would build.

    Without `config` every layer is a plain full-attention layer (never truncated), which
    the prefill needs: a sliding-window layer would keep only the tail of a packed row.
    """
    from transformers import DynamicCache

    if config is not None and "config" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(config=config)
    return DynamicCache()


def cache_from_kv(layers_kv: Sequence[KV], config: Any = None) -> Any:
    """A `DynamicCache` holding `layers_kv`: per layer (key, value) [batch, kv_heads, T, head_dim]."""
    cache = new_dynamic_cache(config)
    for layer_idx, (key, value) in enumerate(layers_kv):
        cache.update(key, value, layer_idx)
    return cache


def left_padded_cache(
    prompts_kv: Sequence[Sequence[KV]], *, config: Any = None, length: int | None = None
) -> tuple[Any, torch.Tensor]:
    """Batch per-prompt caches into one left-padded `DynamicCache` and its attention mask.

    prompts_kv[b][layer] = (key, value), each [kv_heads, len_b, head_dim]; len_b may be 0.
    length: cache length T (default the longest len_b; must be at least that).
    Returns (cache, attention_mask): cache layers [B, kv_heads, T, head_dim] with prompt b in
    the last len_b slots (zeros before), and attention_mask int64 [B, T] (1 on real slots),
    which is what `generate` expects for left-padded prompts: position ids come from its
    cumulative sum, so prompt b's keys (rotated at positions 0..len_b-1) line up.
    """
    if len(prompts_kv) == 0:
        raise ValueError("no prompts to batch")
    num_layers = len(prompts_kv[0])
    if any(len(p) != num_layers for p in prompts_kv):
        raise ValueError("every prompt's cache needs the same number of layers")
    lens = [int(p[0][0].shape[1]) for p in prompts_kv]
    longest = max(lens)
    length = longest if length is None else int(length)
    if length < longest:
        raise ValueError(f"cache length {length} is shorter than the longest prompt cache ({longest})")
    batch = len(prompts_kv)
    mask = torch.zeros(batch, length, dtype=torch.int64, device=prompts_kv[0][0][0].device)
    for b, n in enumerate(lens):
        mask[b, length - n :] = 1
    layers: list[KV] = []
    for layer in range(num_layers):
        k0, v0 = prompts_kv[0][layer]
        keys = k0.new_zeros(batch, k0.shape[0], length, k0.shape[2])
        values = v0.new_zeros(batch, v0.shape[0], length, v0.shape[2])
        for b, n in enumerate(lens):
            if n:
                keys[b, :, length - n :] = prompts_kv[b][layer][0]
                values[b, :, length - n :] = prompts_kv[b][layer][1]
        layers.append((keys, values))
    return cache_from_kv(layers, config), mask


class PromptKV(Sequence[list[KV]]):
    """Per-prompt K/V views into the packed caches of one or more forwards, built on access.

    kv[i] is prompt i's cache: a list over layers of (key, value), each
    [kv_heads, len_i, head_dim], a view (no copy) into the packed [rows, kv_heads, row_len,
    head_dim] tensors of the forward prompt i ran in. Nothing is sliced until asked for, so
    holding the result costs no per-prompt work.
    """

    def __init__(self, num_prompts: int) -> None:
        self._where: list[tuple[int, int] | None] = [None] * num_prompts  # (part, slot)
        self._parts: list[tuple[list[KV], tuple[torch.Tensor, ...]]] = []
        self._spans: dict[int, list[tuple[int, int, int]]] = {}

    def add_forward(
        self,
        layers: list[KV],
        prompts: Sequence[int],
        row_of: torch.Tensor,
        start_of: torch.Tensor,
        lengths: torch.Tensor,
    ) -> None:
        """Record one forward: packed `layers`, and for its j-th prompt (global index
        prompts[j]) its row, first slot and length (int tensors [n], any device)."""
        part = len(self._parts)
        self._parts.append((layers, (row_of, start_of, lengths)))
        for slot, g in enumerate(prompts):
            self._where[g] = (part, slot)

    @classmethod
    def from_flat(cls, kv: torch.Tensor, cu_seqlens: Sequence[int]) -> PromptKV:
        """The caches of one flat row (the engine's layout): `kv` [layers, 2, T, kv_heads,
        head_dim], prompt i on rows cu_seqlens[i]:cu_seqlens[i+1]. Views, no copy."""
        n = len(cu_seqlens) - 1
        if kv.dim() != 5 or kv.shape[1] != 2 or n < 1 or int(cu_seqlens[-1]) > kv.shape[2]:
            raise ValueError(f"kv must be [layers, 2, T >= {int(cu_seqlens[-1])}, kv_heads, head_dim] "
                             f"for {n} prompts, got {tuple(kv.shape)}")
        cu = torch.as_tensor([int(x) for x in cu_seqlens], dtype=torch.int64)
        out = cls(n)
        layers = [(layer[0].transpose(0, 1)[None], layer[1].transpose(0, 1)[None]) for layer in kv]
        out.add_forward(layers, range(n), torch.zeros(n, dtype=torch.int64), cu[:-1], cu[1:] - cu[:-1])
        return out

    def __len__(self) -> int:
        return len(self._where)

    def _spans_of(self, part: int) -> list[tuple[int, int, int]]:
        if part not in self._spans:
            rows, starts, lens = (t.tolist() for t in self._parts[part][1])
            self._spans[part] = list(zip(rows, starts, lens))
        return self._spans[part]

    @overload
    def __getitem__(self, index: int) -> list[KV]: ...
    @overload
    def __getitem__(self, index: slice) -> list[list[KV]]: ...
    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        n = len(self)
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"prompt index {index} is outside 0..{n - 1}")
        where = self._where[i % n]
        if where is None:
            raise IndexError(f"prompt {i} has no cache recorded")
        part, slot = where
        row, start, length = self._spans_of(part)[slot]
        return [
            (k[row, :, start : start + length], v[row, :, start : start + length])
            for k, v in self._parts[part][0]
        ]

    def left_padded(
        self, indices: Sequence[int | None], length: int | None = None
    ) -> tuple[list[KV], torch.Tensor]:
        """Caches of `indices` stacked left-padded, with one gather per layer and forward.

        indices: prompt indices; None stands for a prompt with an empty cache.
        length: cache length T (default the longest of these prompts).
        Returns (layers, attention_mask): per layer (key, value) [B, kv_heads, T, head_dim],
        prompt b in the last len_b slots and zeros before; attention_mask int64 [B, T].
        """
        if len(indices) == 0:
            raise ValueError("no prompts to batch")
        where = []
        for i in indices:
            if i is None:
                where.append(None)
                continue
            if not 0 <= int(i) < len(self) or self._where[int(i)] is None:
                raise IndexError(f"prompt index {i} is outside 0..{len(self) - 1}")
            part, slot = self._where[int(i)]
            where.append((part, *self._spans_of(part)[slot]))
        lens = [0 if w is None else w[3] for w in where]
        longest = max(lens)
        length = longest if length is None else int(length)
        if length < longest:
            raise ValueError(f"cache length {length} is shorter than the longest prompt cache ({longest})")
        ref_layers = self._parts[0][0]
        device = ref_layers[0][0].device
        lens_t = torch.tensor(lens, dtype=torch.int64)
        offset = torch.arange(length, dtype=torch.int64)[None, :] - (length - lens_t)[:, None]  # [B, T]
        valid = offset >= 0
        mask = valid.to(torch.int64).to(device)
        out: list[KV] = []
        parts = sorted({w[0] for w in where if w is not None})
        for layer, (k0, v0) in enumerate(ref_layers):
            batch = len(where)
            keys = k0.new_zeros(batch, k0.shape[1], length, k0.shape[3])
            values = v0.new_zeros(batch, v0.shape[1], length, v0.shape[3])
            for part in parts:
                sel = [b for b, w in enumerate(where) if w is not None and w[0] == part]
                rows = torch.tensor([where[b][1] for b in sel], dtype=torch.int64)
                starts = torch.tensor([where[b][2] for b in sel], dtype=torch.int64)
                src = (starts[:, None] + offset[sel].clamp(min=0)).to(device)  # [b, T] slot in row
                ok = valid[sel].to(device)[:, None, :, None]
                k, v = self._parts[part][0][layer]
                rows_d = rows.to(device)[:, None]
                # Advanced indices on dims 0 and 2 -> [b, T, heads, dim]; back to [b, heads, T, dim].
                gathered_k = k[rows_d, :, src].transpose(1, 2) * ok
                gathered_v = v[rows_d, :, src].transpose(1, 2) * ok
                sel_d = torch.tensor(sel, device=device)
                keys.index_copy_(0, sel_d, gathered_k.to(keys.dtype))
                values.index_copy_(0, sel_d, gathered_v.to(values.dtype))
            out.append((keys, values))
        return out, mask
