"""One decode step of batch generation over the prefill engine's weights, with CUDA graphs.

This module owns the device work of a decode step: for every batch row (one live sequence),
feed its last token at its position and return next-token logits. Per layer, as the prefill
engine (`gpu_runner.engine`), with its fused weights, RoPE tables and kernels:
  RMSNorm -> fused QKV (+ bias, + the family's QK-norm) -> RoPE at each row's position (the
  layer's cos/sin table, HF's rounding; Q and K then in the model's head-dim order: `rope`)
  with K, V written to the row's page (`kv_pages.PagedKVCache`) -> attention over the row's
  cache (`decode_kernels.decode_attention`, split-KV by default: lengths and page table read
  from device memory) -> O matmul adding into the residual -> RMSNorm -> gate/up,
  act(gate) * up, down adding into the residual; then the final norm and lm_head on the bucket's
  rows (the family's constants as in the prefill: `family.EngineFamily`, `forward`'s helpers).

Static shapes: rows are padded up to a batch-size bucket (1, 2, 4, 8, 16, 32, 48, 64, 96,
128, ...); padding rows write their K/V to the pool's scratch page and attend to it alone.
On CUDA each bucket is one CUDA graph, captured on first use (one shared memory pool) and
replayed afterwards; the inputs (token ids, positions, slots, write rows) reach the device in
one copy from a pinned buffer. Elsewhere the same code runs eagerly (torch reference paths).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from gpu_runner.engine.decode_kernels import KERNELS, decode_attention
from gpu_runner.engine.forward import embed, final_logits, head_qk_norm, mlp_act, project_qkv, qk_norm_, residual_add
from gpu_runner.engine.graphs import GraphCapture
from gpu_runner.engine.kernels import rmsnorm, rope_store
from gpu_runner.engine.kv_pages import GenerateOutOfMemoryError, PagedKVCache
from gpu_runner.engine.rope import to_model_order

__all__ = ["DecodeStep", "batch_buckets"]

_FIELDS = ("ids", "pos", "slot", "dest")  # the int64 input buffer: four [max_batch] segments


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """Batch-size buckets up to max_batch: 1, 2, 4, 8, 16, 32, then steps of 16 to 64, 32 to
    128, 64 to 256, ... (at most a third of a bucket is padding beyond 32 rows); max_batch last."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
    out, b = [], 1
    while b < min(max_batch, 32):
        out.append(b)
        b *= 2
    step = 16
    b = 32
    while b < max_batch:
        out.append(b)
        if b >= 4 * step:
            step *= 2
        b += step
    out.append(max_batch)
    return tuple(sorted(set(out)))


class DecodeStep:
    """Decode steps over `engine`'s weights (a `PrefillEngine`) and `cache`'s page pool.

    cuda_graphs: capture one graph per bucket on CUDA (ignored elsewhere). attention_kernel:
    "split" (default) or "head", and attention_splits: the split kernel's S (None: the rule of
    `decode_kernels.decode_splits` per bucket), fixed when a bucket's graph is captured (the
    decode profile compares them). Call `run` between admissions; its logits are views valid
    until the next call.
    """

    def __init__(self, engine, cache: PagedKVCache, *, cuda_graphs: bool = True, attention_kernel: str = "split",
                 attention_splits: int | None = None) -> None:
        if attention_kernel not in KERNELS:
            raise ValueError(f"unknown decode attention kernel {attention_kernel!r}; choose from {', '.join(KERNELS)}")
        self.attention_kernel, self.attention_splits = attention_kernel, attention_splits
        self.engine, self.cache = engine, cache
        self.device = engine.device
        self.buckets = batch_buckets(cache.max_seqs)
        self.max_batch = self.buckets[-1]
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        pinned = self.device.type == "cuda"
        self._in_host = torch.zeros(len(_FIELDS) * self.max_batch, dtype=torch.int64, pin_memory=pinned)
        self._in_dev = torch.zeros_like(self._in_host, device=self.device)
        self._copied: torch.cuda.Event | None = None
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._capture_graph = GraphCapture()

    def bucket(self, rows: int) -> int:
        """The smallest bucket holding `rows` rows."""
        for b in self.buckets:
            if b >= rows:
                return b
        raise ValueError(f"{rows} rows exceed the largest decode bucket ({self.max_batch})")

    def _field(self, buf: torch.Tensor, name: str, rows: int) -> torch.Tensor:
        at = _FIELDS.index(name) * self.max_batch
        return buf[at : at + rows]

    # ------------------------------------------------------------------ device part

    def _forward(self, rows: int, num_pages: int | None) -> torch.Tensor:
        """Logits [rows, vocab] for the staged inputs; `num_pages` bounds the torch attention's
        gather (None in graphs: the whole table)."""
        eng, buf = self.engine, self._in_dev
        ids, pos = self._field(buf, "ids", rows), self._field(buf, "pos", rows)
        slot, dest = self._field(buf, "slot", rows), self._field(buf, "dest", rows)
        lengths = pos + 1  # the new token's key is the last one the row attends to
        h = embed(eng, ids)
        for li, w in enumerate(eng.layers):
            k_pool, v_pool = self.cache.layer(li)
            x = h if w.ln1 is None else rmsnorm(h, w.ln1, eng.eps)
            norm = head_qk_norm(eng, w)  # fused into rope_store
            qkv = project_qkv(eng, x, w, head_norm_fused=norm is not None)
            k_new = torch.empty((rows, eng.num_kv_heads, eng.head_dim), dtype=h.dtype, device=h.device)
            v_new = torch.empty_like(k_new)
            q = rope_store(qkv, pos, w.cos, w.sin, k_new, v_new, eng.num_q_heads, qk_norm=norm)
            if eng.family.qk_norm_after_rope:  # HunYuan
                qk_norm_(eng, q, k_new, w)
            # the pages hold K in the model's head-dim order (as the prefill hands it over): Q joins it
            q = to_model_order(q, eng.rope.inverse)
            to_model_order(k_new, eng.rope.inverse)
            k_pool.view(-1, eng.num_kv_heads, eng.head_dim).index_copy_(0, dest, k_new)
            v_pool.view(-1, eng.num_kv_heads, eng.head_dim).index_copy_(0, dest, v_new)
            a = decode_attention(q.contiguous(), k_pool, v_pool, self.cache.table, slot, lengths, eng.scale,
                                 num_pages=num_pages, kernel=self.attention_kernel, splits=self.attention_splits)
            residual_add(eng, h, a.reshape(rows, -1), w.o, w.post_attn)
            x = h if w.ln2 is None else rmsnorm(h, w.ln2, eng.eps)
            residual_add(eng, h, mlp_act(eng, x, w, fused=False), w.down, w.post_mlp)
        return final_logits(eng, h)

    def _capture(self, rows: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        try:
            graph, logits = self._capture_graph(lambda: self._forward(rows, None))
        except torch.OutOfMemoryError as exc:
            raise GenerateOutOfMemoryError(
                f"the decode step's CUDA graph for a batch of {rows} rows did not fit in device memory next to "
                f"the KV page pool: pass a smaller kv_budget_bytes or max_batch") from exc
        return graph, logits

    # ------------------------------------------------------------------ host part

    def run(self, ids: Sequence[int], positions: Sequence[int], slots: Sequence[int]) -> torch.Tensor:
        """Next-token logits [n, vocab] of n live rows: row i feeds token ids[i] at position
        positions[i] of the sequence in slot slots[i] (whose pages were admitted for it)."""
        n = len(ids)
        if n == 0 or len(positions) != n or len(slots) != n:
            raise ValueError(f"run needs n >= 1 rows of ids, positions and slots alike, got {n}, "
                             f"{len(positions)}, {len(slots)}")
        rows = self.bucket(n)
        self.cache.sync_table()
        if self._copied is not None:
            self._copied.synchronize()  # the previous step's copy has left the pinned buffer
        host = self._in_host.numpy()
        pos = np.asarray(positions, dtype=np.int64)
        slot = np.asarray(slots, dtype=np.int64)
        fields = {
            "ids": np.asarray(ids, dtype=np.int64), "pos": pos, "slot": slot,
            "dest": self.cache.token_index(slot, pos),
        }
        pad = {"ids": 0, "pos": 0, "slot": self.cache.scratch_slot, "dest": self.cache.scratch_index()}
        for name, values in fields.items():
            seg = self._field(host, name, rows)
            seg[:n] = values
            seg[n:] = pad[name]
        self._in_dev.copy_(self._in_host, non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        if not self.cuda_graphs:
            pages = int(pos.max()) // self.cache.layout.page_tokens + 1
            return self._forward(rows, pages)[:n]
        entry = self._graphs.get(rows)
        if entry is None:
            entry = self._graphs[rows] = self._capture(rows)
        entry[0].replay()
        return entry[1][:n]

    @property
    def num_graphs(self) -> int:
        """CUDA graphs captured so far (one per bucket used)."""
        return len(self._graphs)
