"""`EngineScorer`: log-probs of given target tokens at any positions of a `PrefillEngine`'s
flat row, with the engine's kernels and CUDA graphs (what `gpu_runner.score` runs on its
engine path).

One `run(batch)` lays a `ScoreBatch` out with numpy into one of two pinned host buffers
(alternating, so the host stages batch k + 1 while the device still runs batch k), copies
it with one host-to-device transfer into a static device buffer, and replays the graph of
its bucket. The graph holds the whole device part: the layers (`forward.hidden_states`;
every layer's K / V go to one scratch layer, no cache is kept), then the scoring head
(`score_head`): the final norm at the gathered positions only, the lm_head in chunks of
`logit_chunk` positions with fp32 logsumexp, argmax and the targets' logits read per chunk
(never a [positions, vocab] fp32 tensor beyond one chunk). Buckets: tokens rounded up to
`token_bucket`, segments and pairs to powers of two, gathered positions to a power of two
up to `logit_chunk`, to a multiple of it above; padding gathers
row 0 and scores target 0, results the caller ignores. Outputs stay on the device, in
static buffers valid until the next `run`: no host sync per batch. A caller running many
rows passes one `shape` (the bucket of its largest row) to every `run`: one graph, captured
once, serves the whole stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpu_runner.engine.forward import final_norm, hidden_states, scale_logits
from gpu_runner.engine.staging import bucket_tokens, layout, next_pow2, num_chunks, write_row
from simulator.names import FLASH

__all__ = ["EngineScorer", "ScoreBatch", "score_head"]


@dataclass(frozen=True)
class ScoreBatch:
    """One flat row to score: n segments back to back, g positions read, q (position, target) pairs.

    tokens:  int64 [sum(lengths)] the segments' token ids, back to back
    lengths: int64 [n] segment lengths (each >= 1)
    gpos:    int64 [g] row positions whose next-token distribution is read (0 <= gpos < total)
    pair_u:  int64 [q] for each scored pair, the index of its position in gpos
    target:  int64 [q] for each scored pair, the token whose log-prob is read there
    """

    tokens: np.ndarray
    lengths: np.ndarray
    gpos: np.ndarray
    pair_u: np.ndarray
    target: np.ndarray

    def __post_init__(self) -> None:
        if self.lengths.size == 0 or self.lengths.min() < 1 or int(self.lengths.sum()) != self.tokens.size:
            raise ValueError("lengths must be >= 1 each and add up to the number of tokens")
        if self.gpos.size == 0 or self.gpos.min() < 0 or self.gpos.max() >= self.tokens.size:
            raise ValueError(f"gpos must be non-empty row positions in [0, {self.tokens.size})")
        if self.pair_u.size == 0 or self.pair_u.size != self.target.size:
            raise ValueError("pair_u and target must be non-empty and of one length")
        if self.pair_u.min() < 0 or self.pair_u.max() >= self.gpos.size:
            raise ValueError(f"pair_u must index gpos: values in [0, {self.gpos.size})")


def score_head(eng: Any, h: torch.Tensor, gpos: torch.Tensor, pair_u: torch.Tensor, target: torch.Tensor,
               chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob [q] (fp32) of target[j] at row position gpos[pair_u[j]] of hidden states h,
    and whether it is the argmax there [q] (bool), the lm_head run `chunk` positions at a time."""
    x = final_norm(eng, h.index_select(0, gpos))
    g = x.shape[0]
    lse = torch.empty(g, dtype=torch.float32, device=x.device)
    best = torch.empty(g, dtype=torch.int64, device=x.device)
    picked = torch.zeros(pair_u.shape[0], dtype=torch.float32, device=x.device)
    for c0 in range(0, g, chunk):
        n = min(chunk, g - c0)
        logits = scale_logits(eng, F.linear(x[c0 : c0 + n], eng.lm_head)).float()  # model dtype, as HF
        lse[c0 : c0 + n] = torch.logsumexp(logits, dim=-1)
        best[c0 : c0 + n] = logits.argmax(dim=-1)
        local = pair_u - c0
        inside = (local >= 0) & (local < n)
        picked = torch.where(inside, logits[local.clamp(0, n - 1), target], picked)
        logits = None
    return picked - lse.index_select(0, pair_u), best.index_select(0, pair_u) == target


class EngineScorer:
    """Scoring through `engine` (a PrefillEngine): buffers, staging and one CUDA graph per bucket.

    token_bucket: the row length is the batch's tokens rounded up to a multiple of this
    logit_chunk:  positions per lm_head step inside the head (fp32 logits of this many rows)
    """

    def __init__(self, engine: Any, *, token_bucket: int = 128, logit_chunk: int = 1024) -> None:
        if token_bucket < 1 or logit_chunk < 1:
            raise ValueError(f"token_bucket and logit_chunk must be >= 1, got {token_bucket}, {logit_chunk}")
        self.engine = engine
        self.token_bucket = int(token_bucket)
        self.logit_chunk = int(logit_chunk)
        self._caps = (0, 0, 0, 0)  # tokens, segment slots, positions, pairs
        self._graphs: dict[tuple[int, ...], tuple[Any, tuple[torch.Tensor, torch.Tensor]]] = {}
        self._pool = None
        self._kv: torch.Tensor | None = None
        self._dev: torch.Tensor | None = None
        self._host: list[torch.Tensor] = []
        self._copied: list[Any] = [None, None]
        self._turn = 0

    def shape_of(self, num_tokens: int, num_segments: int, num_positions: int, num_pairs: int) -> tuple[int, ...]:
        """The bucket (t, segment slots, positions, pairs) a batch of these sizes runs in."""
        positions = next_pow2(num_positions, 64)
        if positions > self.logit_chunk:  # the head runs whole chunks: round to one, not to a power of two
            positions = bucket_tokens(num_positions, self.logit_chunk)
        return (bucket_tokens(num_tokens, self.token_bucket), next_pow2(num_segments, 16), positions,
                next_pow2(num_pairs, 64))

    def reserve(self, num_tokens: int, num_segments: int, num_positions: int, num_pairs: int) -> None:
        """Size the buffers for batches up to these sizes (call before a stream of `run`s:
        growing drops the captured graphs)."""
        want = self.shape_of(num_tokens, num_segments, num_positions, num_pairs)
        if all(w <= c for w, c in zip(want, self._caps)):
            return
        eng = self.engine
        self._caps = tuple(max(w, c) for w, c in zip(want, self._caps))
        self._graphs.clear()
        self._pool, self._kv, self._dev, self._host = None, None, None, []
        if eng.device.type == "cuda":
            torch.cuda.synchronize(eng.device)
            torch.cuda.empty_cache()
        t, p, g, q = self._caps
        self._kv = torch.empty((1, 2, t, eng.num_kv_heads, eng.head_dim), dtype=eng.dtype, device=eng.device)
        n_in = layout(t, p, num_chunks(t, p, eng.q_chunk, eng.attention), g, q)["target"].stop
        self._dev = torch.zeros(n_in, dtype=torch.int64, device=eng.device)
        pinned = eng.device.type == "cuda"
        self._host = [torch.zeros(n_in, dtype=torch.int64, pin_memory=pinned) for _ in range(2)]
        self._copied = [None, None]

    @torch.no_grad()
    def run(self, batch: ScoreBatch,
            shape: tuple[int, int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Score `batch`: (log-probs [q] fp32, greedy flags [q] bool), device views valid until
        the next `run`. Enqueues device work only (no host sync on CUDA). `shape`: the bucket
        to run in (a `shape_of` of sizes >= the batch's; callers pass one for a whole stream
        of rows so that one graph serves them all), default the batch's own."""
        eng = self.engine
        n, total = batch.lengths.size, batch.tokens.size
        own = self.shape_of(total, n, batch.gpos.size, batch.pair_u.size)
        if shape is None:
            shape = own
        if any(o > w for o, w in zip(own, shape)):
            raise ValueError(f"the batch needs the bucket {own}, over the shape {shape} asked for")
        self.reserve(*shape)
        t, p, g, q = shape
        s = num_chunks(t, p, eng.q_chunk, eng.attention)
        max_len = 0
        if eng.attention == FLASH and not eng.q_chunk:
            max_len = next_pow2(max(int(batch.lengths.max()), t - total), 128)
        lay = layout(t, p, s, g, q)
        turn = self._turn
        self._turn ^= 1
        if self._copied[turn] is not None:
            self._copied[turn].synchronize()  # this pinned buffer's last copy has left it
        host = self._host[turn]
        arr = host.numpy()
        cu = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(batch.lengths, out=cu[1:])
        write_row(arr, lay, batch.tokens, batch.lengths, cu, t, eng.pad_token_id, eng.q_chunk if s else 0)
        for name, values in (("gpos", batch.gpos), ("pair_u", batch.pair_u), ("target", batch.target)):
            part = arr[lay[name]]
            part[: values.size] = values
            part[values.size :] = 0
        n_in = lay["target"].stop
        self._dev[:n_in].copy_(host[:n_in], non_blocking=True)
        if eng.device.type == "cuda":
            self._copied[turn] = torch.cuda.Event()
            self._copied[turn].record()
        full = (t, p, max_len, g, q)
        lp, greedy = self._replay(full) if eng.cuda_graphs else self._forward(full)
        return lp[: batch.pair_u.size], greedy[: batch.pair_u.size]

    def _forward(self, key: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        t, p, max_len, g, q = key
        eng = self.engine
        lay = layout(t, p, num_chunks(t, p, eng.q_chunk, eng.attention), g, q)
        h = hidden_states(eng, t, p, max_len, self._dev, self._kv)
        return score_head(eng, h, self._dev[lay["gpos"]], self._dev[lay["pair_u"]], self._dev[lay["target"]],
                          min(self.logit_chunk, g))

    def _replay(self, key: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        entry = self._graphs.get(key)
        if entry is None:
            # A new bucket's first row runs eagerly (its results are this row's: Triton
            # compiles for the shapes and cuBLAS initialises outside any capture, and no
            # forward is spent on warming up), then the graph is captured for the next rows.
            out = self._forward(key)
            if self._pool is None:
                self._pool = torch.cuda.graph_pool_handle()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self._pool):
                static = self._forward(key)
            self._graphs[key] = (graph, static)
            return out
        graph, out = entry
        graph.replay()
        return out

    @property
    def num_graphs(self) -> int:
        """CUDA graphs captured so far (one per bucket seen)."""
        return len(self._graphs)
