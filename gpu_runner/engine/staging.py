"""Host staging of one engine batch: validate the prompts, then write the flat row's inputs
(token ids, positions, segment starts, prompt bounds, last-token indices, flash query
chunks) into the engine's pinned int64 buffer with numpy, no Python loop over tokens, for
one host-to-device copy. `layout` says where each input lives in that buffer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from gpu_runner.validate import check_prompts
from simulator.names import FLASH

__all__ = ["bucket_tokens", "layout", "next_pow2", "num_chunks", "stage", "stage_chunks", "write_row"]


def bucket_tokens(num_tokens: int, token_bucket: int) -> int:
    """Token count rounded up to a multiple of `token_bucket` (the static shape of the row)."""
    return -(-int(num_tokens) // token_bucket) * token_bucket


def next_pow2(n: int, floor: int) -> int:
    return max(floor, 1 << (int(n) - 1).bit_length())


def num_chunks(t: int, p: int, q_chunk: int, attention: str) -> int:
    """Static count of query-chunk slots: every prompt and the tail padding, plus one per
    q_chunk tokens (a segment of l tokens has ceil(l / q_chunk) <= 1 + l // q_chunk chunks)."""
    return p + 1 + t // q_chunk if (q_chunk and attention == FLASH) else 0


def layout(t: int, p: int, s: int, g: int = 0, q: int = 0) -> dict[str, slice]:
    """Where each input lives in the int64 input buffer (the same for host and device).
    Scoring (`engine.scorer`) appends g gathered row positions ("gpos") and q scored pairs
    (each an index into the gathered positions, "pair_u", and a target token, "target")
    after the prefill inputs, whose places do not depend on g and q."""
    cuts = {"ids": t, "pos": t, "seg": t, "cu": p + 2, "last": p, "cu_q": s + 1, "cu_k": s + 1, "used_k": s,
            "gpos": g, "pair_u": q, "target": q}
    out, at = {}, 0
    for name, n in cuts.items():
        out[name] = slice(at, at + n)
        at += n
    return out


def stage(eng: Any, prompts: Sequence[Sequence[int]]) -> tuple[int, int, int, np.ndarray]:
    """Validate `prompts`, lay out `eng`'s flat row in its pinned host buffer (growing the
    engine's buffers if needed); return (T, slots, max_len, cu)."""
    prompts, length_list, token_ids = check_prompts(eng.model, prompts)
    n = len(prompts)
    lengths = np.asarray(length_list, dtype=np.int64)
    longest = int(lengths.max())
    total = int(lengths.sum())
    tokens = token_ids.astype(np.int64, copy=False)
    t = bucket_tokens(total, eng.token_bucket)
    p = next_pow2(n, 16)
    # With query chunks the graph does not depend on prompt lengths (max_len = 0 in its key).
    max_len = 0 if (eng.q_chunk or eng.attention != FLASH) else next_pow2(max(longest, t - total), 128)
    eng._ensure_capacity(t, p)
    cu = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    if eng._copied is not None:
        eng._copied.synchronize()  # the previous batch's copy has left the pinned buffer
    s = num_chunks(t, p, eng.q_chunk, eng.attention)
    lay = layout(t, p, s)
    write_row(eng._in_host.numpy(), lay, tokens, lengths, cu, t, eng.pad_token_id, eng.q_chunk if s else 0)
    return t, p, max_len, cu


def write_row(host: np.ndarray, lay: dict[str, slice], tokens: np.ndarray, lengths: np.ndarray, cu: np.ndarray,
              t: int, pad_token_id: int, q_chunk: int) -> None:
    """Write one flat row (prompts `tokens` back to back, `lengths`, bounds `cu` [n + 1],
    padded to t tokens) into `host` at `lay`: ids, positions, segment starts, prompt bounds,
    last-token indices and, with q_chunk > 0, the flash query chunks. Vectorized numpy."""
    n, total = len(lengths), int(cu[-1])
    ids, pos = host[lay["ids"]], host[lay["pos"]]
    ids[:total] = tokens
    ids[total:] = pad_token_id
    starts = np.repeat(cu[:-1], lengths)
    pos[:total] = np.arange(total, dtype=np.int64) - starts
    pos[total:] = 0
    seg_start = host[lay["seg"]]
    seg_start[:total] = starts
    # each tail-padding token is a segment of its own (it attends to itself alone): as one
    # segment, a tail of P tokens cost P^2 / 2 attention (a scoring stream runs its lightest
    # row in the largest row's shape: H200 1.3B, a 40k-token tail took 440 of 650 ms)
    seg_start[total:] = np.arange(total, t, dtype=np.int64)
    bounds = host[lay["cu"]]
    bounds[: n + 1] = cu
    bounds[n + 1 :] = t  # tail padding is one segment; then empty segments
    last = host[lay["last"]]
    last[:] = 0
    last[:n] = cu[1:] - 1
    if q_chunk:
        stage_chunks(host, lay, cu, t, q_chunk)


def stage_chunks(host: np.ndarray, lay: dict[str, slice], cu: np.ndarray, t: int, q_chunk: int) -> None:
    """Query chunks of <= q_chunk tokens: chunk j of a segment starting at a covers queries
    a + j c .. min(end, a + (j + 1) c) and keys a .. that end (its prompt's prefix)."""
    c = q_chunk
    starts = cu[:-1]
    ends = cu[1:]
    if t > cu[-1]:  # the tail padding: chunks that attend within themselves
        starts = np.append(starts, cu[-1])
        ends = np.append(ends, t)
    counts = -(-(ends - starts) // c)
    seg_of = np.repeat(np.arange(len(starts)), counts)
    first = np.cumsum(counts) - counts
    j = np.arange(len(seg_of)) - np.repeat(first, counts)
    q_end = np.minimum(starts[seg_of] + (j + 1) * c, ends[seg_of])
    k_start = starts[seg_of]
    if t > cu[-1]:  # a tail chunk attends within itself only (its outputs are never read): linear, not quadratic
        tail = seg_of == len(starts) - 1
        k_start = np.where(tail, starts[seg_of] + j * c, k_start)
    m = len(seg_of)
    cu_q, cu_k, used_k = host[lay["cu_q"]], host[lay["cu_k"]], host[lay["used_k"]]
    cu_q[0] = 0
    cu_q[1 : m + 1] = q_end
    cu_q[m + 1 :] = t  # empty chunks
    cu_k[:m] = k_start
    cu_k[m:] = t
    used_k[:m] = q_end - k_start
    used_k[m:] = 0
