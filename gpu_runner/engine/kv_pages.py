"""The decode loop's KV cache: a pool of fixed-size pages sized from a memory budget.

This module owns where every sequence's keys and values live while it generates:
  pool   [layers, 2, pages + 1, page_tokens, Hkv, D]: the last page is scratch, written by the
         padding rows of a batch bucket and never read by a live sequence;
  table  [max_seqs + 1, max_pages] int32 on the device: the page ids of each sequence slot
         (row max_seqs is the padding rows' slot, all its entries the scratch page);
  a host allocator: free slots and free pages (a stack), the host copy of the table.
A sequence is admitted with every page it can ever need (prompt + max_new_tokens - 1 tokens),
so it never waits for memory mid-generation and nothing is preempted; a prompt that does not
fit now waits until pages are released. Pages (not one max-length row per slot) keep memory
proportional to the real lengths: a trace with a few 8,000-token prompts does not size every
slot for 8,000 tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["GenerateOutOfMemoryError", "KVLayout", "PagedKVCache"]


class GenerateOutOfMemoryError(RuntimeError):
    """A buffer of batch generation did not fit in device memory; the message names it."""


@dataclass(frozen=True)
class KVLayout:
    """Shape of one token's cache entry: layers x (K, V) x Hkv x D elements of `dtype_bytes`."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int
    page_tokens: int = 64

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "dtype_bytes", "page_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.page_tokens & (self.page_tokens - 1):
            raise ValueError(f"page_tokens must be a power of two, got {self.page_tokens}")

    @property
    def token_bytes(self) -> int:
        return self.num_layers * 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def page_bytes(self) -> int:
        return self.token_bytes * self.page_tokens

    def pages_for(self, num_tokens: int) -> int:
        """Pages holding `num_tokens` tokens (ceil)."""
        return -(-int(num_tokens) // self.page_tokens)


class PagedKVCache:
    """The page pool, the page table and their allocator (one generation at a time).

    layout: the per-token entry; num_pages: usable pages (one scratch page is added);
    max_seqs: sequence slots (the largest decode batch); max_pages: table width (pages of the
    longest sequence). Raises GenerateOutOfMemoryError naming the pool when it does not fit.
    """

    def __init__(self, layout: KVLayout, *, num_pages: int, max_seqs: int, max_pages: int,
                 device: torch.device, dtype: torch.dtype) -> None:
        if num_pages < 1 or max_seqs < 1 or max_pages < 1:
            raise ValueError(f"num_pages, max_seqs and max_pages must be >= 1, got {num_pages}, {max_seqs}, {max_pages}")
        self.layout, self.num_pages, self.max_seqs, self.max_pages = layout, int(num_pages), int(max_seqs), int(max_pages)
        self.device = torch.device(device)
        shape = (layout.num_layers, 2, self.num_pages + 1, layout.page_tokens, layout.num_kv_heads, layout.head_dim)
        try:
            # zeroed: the torch attention path gathers whole pages, and a NaN in memory past a
            # row's length would reach its output through the masked softmax (0 * NaN)
            self.pool = torch.zeros(shape, dtype=dtype, device=self.device)
        except torch.OutOfMemoryError as exc:
            raise GenerateOutOfMemoryError(
                f"the KV page pool ({self.num_pages + 1} pages of {layout.page_tokens} tokens, "
                f"{(self.num_pages + 1) * layout.page_bytes / 2**30:.2f} GiB) did not fit in device memory: "
                f"pass a smaller kv_budget_bytes") from exc
        self.scratch_slot = self.max_seqs
        self._table_host = np.full((self.max_seqs + 1, self.max_pages), self.num_pages, dtype=np.int32)
        self.table = torch.from_numpy(self._table_host.copy()).to(self.device)
        self._dirty = False
        self._free_pages = list(range(self.num_pages - 1, -1, -1))  # a stack: pop() gives low ids first
        self._free_slots = list(range(self.max_seqs - 1, -1, -1))
        self._pages_of: dict[int, list[int]] = {}

    @property
    def free_pages(self) -> int:
        return len(self._free_pages)

    @property
    def free_slots(self) -> int:
        return len(self._free_slots)

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer `index`'s key and value pools, each [pages + 1, page_tokens, Hkv, D]."""
        return self.pool[index, 0], self.pool[index, 1]

    def admit(self, num_tokens: int) -> int:
        """A free slot with pages for `num_tokens` tokens; ValueError when none is free (the
        caller checks `free_slots` / `free_pages` first) or the sequence exceeds the table."""
        need = self.layout.pages_for(num_tokens)
        if need > self.max_pages:
            raise ValueError(f"a sequence of {num_tokens} tokens needs {need} pages, over the table's {self.max_pages}")
        if not self._free_slots or need > len(self._free_pages):
            raise ValueError(f"no room for {num_tokens} tokens: {self.free_slots} slots, {self.free_pages} pages free")
        slot = self._free_slots.pop()
        pages = [self._free_pages.pop() for _ in range(need)]
        self._pages_of[slot] = pages
        self._table_host[slot, :] = self.num_pages
        self._table_host[slot, :need] = pages
        self._dirty = True
        return slot

    def release(self, slot: int) -> None:
        """Give slot's pages back (its table row keeps stale ids: no live row reads it)."""
        self._free_pages.extend(reversed(self._pages_of.pop(slot)))
        self._free_slots.append(slot)

    def sync_table(self) -> None:
        """Upload the host table if admissions changed it (between steps, not inside a graph)."""
        if self._dirty:
            self.table.copy_(torch.from_numpy(self._table_host))
            self._dirty = False

    def token_index(self, slot: int | np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Flat pool row (page * page_tokens + offset) of the tokens at `positions` of `slot`
        (one slot, or one slot per position)."""
        p = self.layout.page_tokens
        return self._table_host[slot, positions // p].astype(np.int64) * p + positions % p

    def scratch_index(self) -> int:
        """The flat pool row that padding rows write."""
        return self.num_pages * self.layout.page_tokens
