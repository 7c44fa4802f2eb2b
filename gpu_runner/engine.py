"""The fast prefill path: one flat varlen row per batch, static token buckets, CUDA graphs.

This module owns `PrefillEngine`, which keeps state across batches (fused weights, RoPE
tables, the KV buffer, one captured CUDA graph per shape bucket) so that a stream of
batches of changing size runs without recompiling or re-launching kernels one by one.

How one batch runs (T = the batch's real tokens rounded up to `token_bucket`):
  1. host: prompts are laid out back to back in the caller's order in one row of T tokens
     (positions restart at 0 per prompt; the tail padding is its own segment), written with
     one host-to-device copy from a pinned buffer: no syncs, no Python loop over tokens;
  2. device: embedding, then per layer:
     - attention: on Hopper (`fused_qkv`), one QKV matmul (weights concatenated once) whose
       epilogue applies RoPE and writes roped Q and the KV cache directly (Triton
       `qkv_rope`: the [T, (Hq + 2 Hkv) D] projection is never written), then
       block-diagonal causal attention over the flat row (`packed_attention`: tiles mix
       prompts, no mask tensor, no work on padding pairs). Elsewhere: cuBLAS QKV, then RoPE
       fused into the attention kernel (`rope_attention`), or with `attention="flash"`
       RoPE then torch's flash varlen kernel;
     - the O matmul adding into the residual stream (addmm_, beta = 1: no add pass);
     - one gate/up matmul with SiLU * up in its epilogue (Triton `swiglu` on Hopper;
       elsewhere cuBLAS, then a SiLU * up kernel), the down matmul adding into the residual;
     - an RMSNorm kernel before the QKV and the gate/up matmuls;
     finally the norm and lm_head on each prompt's LAST token only;
  3. on CUDA the whole device part is one CUDA graph per bucket (T, prompt slots, longest
     segment), captured the first time the bucket is seen into one shared memory pool and
     replayed afterwards.

Weights: the QKV and gate/up projections are concatenated once at construction; by default
the HF module's own weights become views into the fused tensors, so no weight memory is
duplicated and the HF model keeps working unchanged.

Supported: Llama-family decoder layers (Llama, Mistral, Qwen2: GQA and QKV bias included)
with SiLU MLPs and static RoPE (default / linear / llama3 scaling); everything else is
refused at construction with `support.UnsupportedModelError` (`gpu_runner.engine_support`
lists what the engine implements: O-projection and MLP biases, QK-norms, multipliers, ...). Results hold views into
the engine's buffers: they are valid until the next `prefill` call (`EngineOutput.clone()`
keeps them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpu_runner import matmul_kernels as mm
from gpu_runner.engine_kernels import packed_attention, rmsnorm, rope_attention, rope_store, silu_mul, use_triton
from gpu_runner.support import require_supported

__all__ = ["EngineOutput", "PrefillEngine", "bucket_tokens"]

def bucket_tokens(num_tokens: int, token_bucket: int) -> int:
    """Token count rounded up to a multiple of `token_bucket` (the static shape of the row)."""
    return -(-int(num_tokens) // token_bucket) * token_bucket


def _next_pow2(n: int, floor: int) -> int:
    return max(floor, 1 << (int(n) - 1).bit_length())


@dataclass(frozen=True)
class _Layer:
    ln1: torch.Tensor
    qkv: torch.Tensor  # [(Hq + 2 Hkv) * D, hidden]
    qkv_bias: torch.Tensor | None
    qkv_rope: bool  # the QKV matmul ropes and writes Q and the KV cache itself (matmul_kernels.qkv_rope)
    o: torch.Tensor
    ln2: torch.Tensor
    gate_up: torch.Tensor  # [2 I, hidden]
    down: torch.Tensor


@dataclass(frozen=True)
class _Row:
    """Device views of one forward's flat-row inputs (T tokens), shared by every layer."""

    pos: torch.Tensor  # [T] position of each token in its prompt
    seg: torch.Tensor  # [T] index of the first token of each token's prompt
    cos: torch.Tensor | None  # [T, D/2] each token's RoPE rows (for qkv_rope)
    sin: torch.Tensor | None
    cu: torch.Tensor  # int32 prompt bounds (then the tail padding)
    cu_q: torch.Tensor  # flash query chunks (see _stage_chunks)
    cu_k: torch.Tensor
    used_k: torch.Tensor | None
    max_q: int
    max_k: int


@dataclass(frozen=True)
class EngineOutput:
    """What one `PrefillEngine.prefill` call produced (N prompts, caller's order).

    logits:     [N, vocab], next-token logits of each prompt (its last token only)
    kv:         [layers, 2, T, Hkv, D], keys (roped) and values of the flat row
    cu_seqlens: [N + 1] int64 on the host: prompt i owns rows cu_seqlens[i]:cu_seqlens[i+1]
    """

    logits: torch.Tensor
    kv: torch.Tensor
    cu_seqlens: np.ndarray

    def __post_init__(self) -> None:
        if self.logits.shape[0] + 1 != len(self.cu_seqlens):
            raise ValueError("logits and cu_seqlens disagree on the number of prompts")

    @property
    def num_prompts(self) -> int:
        return int(self.logits.shape[0])

    def prompt_kv(self, i: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Prompt i's cache: per layer (key, value), each a [Hkv, len_i, D] view."""
        a, b = int(self.cu_seqlens[i]), int(self.cu_seqlens[i + 1])
        return [(layer[0, a:b].transpose(0, 1), layer[1, a:b].transpose(0, 1)) for layer in self.kv]

    def clone(self) -> EngineOutput:
        """A copy that the next `prefill` call does not overwrite."""
        total = int(self.cu_seqlens[-1])
        return EngineOutput(self.logits.clone(), self.kv[:, :, :total].clone(), self.cu_seqlens.copy())


def _attention_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float) -> torch.Tensor:
    """Block-diagonal causal attention with a dense mask (reference path for CPU)."""
    t, hq, _ = q.shape
    seg = torch.searchsorted(cu[1:].to(torch.int64), torch.arange(t, device=q.device), right=True)
    idx = torch.arange(t, device=q.device)
    mask = (seg[:, None] == seg[None, :]) & (idx[:, None] >= idx[None, :])
    rep = hq // k.shape[1]
    kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)
    vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=mask, scale=scale)
    return out.transpose(0, 1)


def _attention_flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_k: torch.Tensor,
    used_k: torch.Tensor | None, max_q: int, max_k: int, scale: float,
) -> torch.Tensor:
    """Flash varlen attention (the kernel behind torch.nn.attention.varlen.varlen_attn).

    Called through the aten op, whose positional signature is the same from torch 2.5 to
    2.13, while varlen_attn's keywords changed (is_causal vs window_size); GQA is native.
    With query chunks: query segment j is rows cu_q[j]:cu_q[j+1], its keys are rows
    cu_k[j] : cu_k[j] + used_k[j] (the prompt's start up to the chunk's end); causal masking
    is bottom-right aligned, so each chunk sees exactly its prompt's prefix.
    """
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, max_q, max_k, 0.0, True, False, scale=scale, seqused_k=used_k
    )
    return out[0]


class PrefillEngine:
    """Prefill of many prompts as one flat varlen row, with CUDA graphs per shape bucket.

    model:         an HF Llama-family causal LM (on its device, in its dtype)
    token_bucket:  the row length is the real token count rounded up to a multiple of this
                   (static shapes: few distinct graphs, at most token_bucket - 1 wasted tokens)
    cuda_graphs:   capture and replay CUDA graphs (CUDA only; False = eager, same kernels)
    share_weights: make the HF module's projection weights views into the fused tensors
                   (no duplicated weight memory); False keeps separate copies
    max_tokens:    pre-size the KV buffer for batches up to this many tokens (grows on demand;
                   growing drops the captured graphs)
    attention:     "packed": the fused RoPE + attention Triton kernel tiled over the flat row
                   (short prompts share tiles; the default where Triton runs), "flash":
                   torch's flash varlen kernel (FA2) per prompt, "torch": dense-mask sdpa
                   (CPU reference); "auto" picks
    fused_mlp:     the gate/up matmul with SiLU * up in its epilogue (`matmul_kernels.swiglu`:
                   one persistent Triton TMA kernel on Hopper, no [T, 2 I] intermediate); False =
                   cuBLAS then the silu_mul kernel, which is also what runs where the fused
                   kernel cannot (no Triton, pre-Hopper GPUs, CPU)
    fused_qkv:     packed attention on Hopper: the QKV matmul with RoPE in its epilogue writes
                   roped Q and the KV cache directly (`matmul_kernels.qkv_rope`: the projection
                   is never written, no RoPE in the attention loop), then `packed_attention`
                   over them; False (or where its tiles do not fit the head layout) = cuBLAS QKV
                   then `rope_attention`, RoPE fused into the attention kernel
    q_chunk:       flash only: attention runs over query chunks of at most this many tokens (each with its
                   prompt's key prefix), so the flash grid is sized by q_chunk, not by the
                   longest prompt: no idle thread blocks, and the graph key ignores prompt
                   lengths. 0 = one query segment per prompt, grid sized by the longest.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        *,
        token_bucket: int = 128,
        cuda_graphs: bool = True,
        share_weights: bool = True,
        max_tokens: int = 0,
        q_chunk: int = 128,
        attention: str = "auto",
        fused_mlp: bool = True,
        fused_qkv: bool = True,
    ) -> None:
        if token_bucket < 1:
            raise ValueError(f"token_bucket must be >= 1, got {token_bucket}")
        require_supported(model, "engine")  # every module and field the engine implements
        cfg = model.config
        inner = model.model
        self.model = model
        self.token_bucket = int(token_bucket)
        if q_chunk < 0:
            raise ValueError(f"q_chunk must be >= 0 (0 = no query chunks), got {q_chunk}")
        self.q_chunk = int(q_chunk)
        if attention not in ("auto", "packed", "flash", "torch"):
            raise ValueError(f"attention must be auto, packed, flash or torch, got {attention!r}")
        self.device = model.lm_head.weight.device
        self.dtype = model.lm_head.weight.dtype
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        probe = torch.empty(0, device=self.device)
        if attention == "auto":
            attention = "packed" if use_triton(probe) else "flash" if self.device.type == "cuda" else "torch"
        if attention == "packed" and not use_triton(probe):
            raise ValueError("attention 'packed' needs Triton and a CUDA device")
        if attention == "flash" and self.device.type != "cuda":
            raise ValueError("attention 'flash' needs a CUDA device")
        self.attention = attention
        self.fused_mlp = bool(fused_mlp)
        self.fused_qkv = bool(fused_qkv)
        # the fused matmul's split-tile counters: zeroed once here, outside any graph capture
        self._counters = torch.zeros(mm.counter_slots(self.device), dtype=torch.int32, device=self.device)
        self.num_q_heads = int(cfg.num_attention_heads)
        self.num_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        self.vocab_size = int(model.lm_head.weight.shape[0])
        self.scale = self.head_dim**-0.5
        self.sliding_window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        self.pad_token_id = 0
        self.eps = float(inner.norm.variance_epsilon)
        self.embed = inner.embed_tokens.weight
        self.final_norm = inner.norm.weight
        self.lm_head = model.lm_head.weight
        self.layers = [self._fuse(layer, share_weights) for layer in inner.layers]
        rotary = inner.rotary_emb
        self.max_positions = int(getattr(cfg, "max_position_embeddings", 4096))
        freqs = torch.arange(self.max_positions, device=self.device, dtype=torch.float32)[:, None] * rotary.inv_freq.to(
            device=self.device, dtype=torch.float32
        )[None, :]
        scaling = float(getattr(rotary, "attention_scaling", 1.0))
        self.cos = (freqs.cos() * scaling).to(self.dtype).contiguous()  # [P, D/2], HF's bf16 rounding
        self.sin = (freqs.sin() * scaling).to(self.dtype).contiguous()
        self._graphs: dict[tuple[int, int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = None
        self._warm = False
        self._t_cap = 0
        self._p_cap = 0
        self._kv: torch.Tensor | None = None
        self._ensure_capacity(bucket_tokens(max(max_tokens, 1), self.token_bucket), 16)

    # ------------------------------------------------------------------ construction

    def _fuse(self, layer: torch.nn.Module, share: bool) -> _Layer:
        attn, mlp = layer.self_attn, layer.mlp
        for name, m in (("o_proj", attn.o_proj), ("gate_proj", mlp.gate_proj), ("up_proj", mlp.up_proj),
                        ("down_proj", mlp.down_proj)):
            if getattr(m, "bias", None) is not None:
                raise ValueError(f"unsupported model: {name} has a bias (the engine supports QKV biases only)")
        projs = [attn.q_proj, attn.k_proj, attn.v_proj]
        with torch.no_grad():
            qkv = torch.cat([p.weight for p in projs]).contiguous()
            bias = None
            if attn.q_proj.bias is not None:
                bias = torch.cat([p.bias for p in projs]).contiguous()
            gate_up = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous()
            if share:
                self._rebind(projs, qkv, "weight")
                if bias is not None:
                    self._rebind(projs, bias, "bias")
                self._rebind([mlp.gate_proj, mlp.up_proj], gate_up, "weight")
            probe = torch.empty((1, gate_up.shape[1]), dtype=gate_up.dtype, device=gate_up.device)
            fused_qkv = (self.fused_qkv and self.attention == "packed"
                         and mm.qkv_fusable(probe, qkv, self.num_q_heads, self.num_kv_heads, self.head_dim))
        return _Layer(ln1=layer.input_layernorm.weight, qkv=qkv, qkv_bias=bias, qkv_rope=fused_qkv, o=attn.o_proj.weight,
                      ln2=layer.post_attention_layernorm.weight, gate_up=gate_up, down=mlp.down_proj.weight)

    @staticmethod
    def _rebind(modules: list[torch.nn.Module], fused: torch.Tensor, name: str) -> None:
        row = 0
        for m in modules:
            p = getattr(m, name)
            n = p.shape[0]
            p.data = fused[row : row + n]
            row += n

    def _ensure_capacity(self, num_tokens: int, num_slots: int) -> None:
        if num_tokens <= self._t_cap and num_slots <= self._p_cap:
            return
        self._t_cap = max(num_tokens, self._t_cap)
        self._p_cap = max(num_slots, self._p_cap)
        self._graphs.clear()
        self._pool = None
        self._warm = False
        self._kv = None  # free before allocating the larger one
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        shape = (len(self.layers), 2, self._t_cap, self.num_kv_heads, self.head_dim)
        self._kv = torch.empty(shape, dtype=self.dtype, device=self.device)
        n_in = self._layout(self._t_cap, self._p_cap, self._num_chunks(self._t_cap, self._p_cap))["used_k"].stop
        self._in_dev = torch.zeros(n_in, dtype=torch.int64, device=self.device)
        self._in_host = torch.zeros(n_in, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        self._copied = None

    # ------------------------------------------------------------------ the forward

    def _num_chunks(self, t: int, p: int) -> int:
        """Static count of query-chunk slots: every prompt and the tail padding, plus one per
        q_chunk tokens (a segment of l tokens has ceil(l / q_chunk) <= 1 + l // q_chunk chunks)."""
        return p + 1 + t // self.q_chunk if (self.q_chunk and self.attention == "flash") else 0

    @staticmethod
    def _layout(t: int, p: int, s: int) -> dict[str, slice]:
        """Where each input lives in the int64 input buffer (the same for host and device)."""
        cuts = {"ids": t, "pos": t, "seg": t, "cu": p + 2, "last": p, "cu_q": s + 1, "cu_k": s + 1, "used_k": s}
        out, at = {}, 0
        for name, n in cuts.items():
            out[name] = slice(at, at + n)
            at += n
        return out

    def _forward(self, t: int, p: int, max_len: int) -> torch.Tensor:
        """Device part of one prefill over the input buffer; returns logits [p, vocab]."""
        buf = self._in_dev
        s = self._num_chunks(t, p)
        lay = self._layout(t, p, s)
        ids, pos, last = buf[lay["ids"]], buf[lay["pos"]], buf[lay["last"]]
        cu = buf[lay["cu"]].to(torch.int32)
        if s:
            cu_q, cu_k, used_k = (buf[lay[k]].to(torch.int32) for k in ("cu_q", "cu_k", "used_k"))
            max_q, max_k = self.q_chunk, self.max_positions
        else:
            cu_q, cu_k, used_k, max_q, max_k = cu, cu, None, max_len, max_len
        cos_t = sin_t = None
        if any(w.qkv_rope for w in self.layers):  # each token's RoPE rows, once per forward
            cos_t, sin_t = self.cos.index_select(0, pos), self.sin.index_select(0, pos)
        row = _Row(pos=pos, seg=buf[lay["seg"]], cos=cos_t, sin=sin_t, cu=cu, cu_q=cu_q, cu_k=cu_k, used_k=used_k,
                   max_q=max_q, max_k=max_k)
        h = F.embedding(ids, self.embed)
        # References are dropped as soon as a buffer is consumed: the peak stays at about
        # h + x + q (or qkv) + the MLP activation (the graph's memory pool is sized by it). The residual
        # stream h is updated inside the O and down matmuls (addmm_, beta = 1): no separate add pass.
        for li, w in enumerate(self.layers):
            a = self._attend(h, w, self._kv[li, 0, :t], self._kv[li, 1, :t], row)
            h.addmm_(a.reshape(t, -1), w.o.t())
            a = None
            x = rmsnorm(h, w.ln2, self.eps)
            if self.fused_mlp:
                act = mm.swiglu(x, w.gate_up, counters=self._counters)
            else:
                act = silu_mul(F.linear(x, w.gate_up))
            x = None
            h.addmm_(act, w.down.t())
            act = None
        hl = h.index_select(0, last)  # last tokens only
        xl = hl.float()
        xl = self.final_norm * (xl * torch.rsqrt(xl.pow(2).mean(-1, keepdim=True) + self.eps)).to(hl.dtype)
        return F.linear(xl, self.lm_head)

    def _attend(self, h: torch.Tensor, w: _Layer, k_out: torch.Tensor, v_out: torch.Tensor, row: _Row) -> torch.Tensor:
        """Layer w's attention over the flat row: [T, Hq, D]; its roped K and V go to k_out / v_out."""
        x = rmsnorm(h, w.ln1, self.eps)
        if w.qkv_rope:  # Q, K, V roped in the QKV matmul's epilogue, K and V written to the cache there
            q = mm.qkv_rope(x, w.qkv, row.cos, row.sin, k_out, v_out, self.num_q_heads, bias=w.qkv_bias,
                            counters=self._counters)
            return packed_attention(q, k_out, v_out, row.seg, self.scale)
        qkv = F.linear(x, w.qkv, w.qkv_bias)
        if self.attention == "packed":
            return rope_attention(qkv, row.pos, self.cos, self.sin, row.seg, k_out, v_out, self.num_q_heads, self.scale)
        q = rope_store(qkv, row.pos, self.cos, self.sin, k_out, v_out, self.num_q_heads)
        if self.attention == "flash":
            return _attention_flash(q, k_out, v_out, row.cu_q, row.cu_k, row.used_k, row.max_q, row.max_k, self.scale)
        return _attention_torch(q, k_out, v_out, row.cu, self.scale)

    # ------------------------------------------------------------------ host side

    def _stage(self, prompts: Sequence[Sequence[int]]) -> tuple[int, int, int, np.ndarray]:
        """Validate, lay out the flat row in the pinned buffer; return (T, slots, max_len, cu)."""
        n = len(prompts)
        if n == 0:
            raise ValueError("prompts is empty: nothing to prefill")
        lengths = np.fromiter(map(len, prompts), dtype=np.int64, count=n)
        if lengths.min() == 0:
            raise ValueError(f"prompt {int(np.argmin(lengths))} is empty: every prompt needs at least one token")
        longest = int(lengths.max())
        if longest > self.max_positions:
            raise ValueError(f"prompt {int(np.argmax(lengths))} has {longest} tokens, over the model's context of {self.max_positions}")
        if self.sliding_window and longest > self.sliding_window:
            raise ValueError(f"prompt of {longest} tokens exceeds the sliding window ({self.sliding_window}): not supported")
        total = int(lengths.sum())
        tokens = np.fromiter(chain.from_iterable(prompts), dtype=np.int64, count=total)
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= self.vocab_size:
            raise ValueError(f"token id {lo if lo < 0 else hi} is outside the vocabulary [0, {self.vocab_size})")
        t = bucket_tokens(total, self.token_bucket)
        p = _next_pow2(n, 16)
        # With query chunks the graph does not depend on prompt lengths (max_len = 0 in its key).
        max_len = 0 if (self.q_chunk or self.attention != "flash") else _next_pow2(max(longest, t - total), 128)
        self._ensure_capacity(t, p)
        cu = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        if self._copied is not None:
            self._copied.synchronize()  # the previous batch's copy has left the pinned buffer
        s = self._num_chunks(t, p)
        lay = self._layout(t, p, s)
        host = self._in_host.numpy()
        ids, pos = host[lay["ids"]], host[lay["pos"]]
        ids[:] = self.pad_token_id
        ids[:total] = tokens
        pos[:] = 0
        pos[:total] = np.arange(total, dtype=np.int64) - np.repeat(cu[:-1], lengths)
        seg_start = host[lay["seg"]]
        seg_start[:total] = np.repeat(cu[:-1], lengths)
        seg_start[total:] = total  # the tail padding is its own segment
        bounds = host[lay["cu"]]
        bounds[: n + 1] = cu
        bounds[n + 1 :] = t  # tail padding is one segment; then empty segments
        last = host[lay["last"]]
        last[:] = 0
        last[:n] = cu[1:] - 1
        if s:
            self._stage_chunks(host, lay, cu, t)
        return t, p, max_len, cu

    def _stage_chunks(self, host: np.ndarray, lay: dict[str, slice], cu: np.ndarray, t: int) -> None:
        """Query chunks of <= q_chunk tokens: chunk j of a segment starting at a covers queries
        a + j c .. min(end, a + (j + 1) c) and keys a .. that end (its prompt's prefix)."""
        c = self.q_chunk
        starts = cu[:-1]
        ends = cu[1:]
        if t > cu[-1]:  # the tail padding attends within itself
            starts = np.append(starts, cu[-1])
            ends = np.append(ends, t)
        counts = -(-(ends - starts) // c)
        seg_of = np.repeat(np.arange(len(starts)), counts)
        first = np.cumsum(counts) - counts
        j = np.arange(len(seg_of)) - np.repeat(first, counts)
        q_end = np.minimum(starts[seg_of] + (j + 1) * c, ends[seg_of])
        k_start = starts[seg_of]
        m = len(seg_of)
        cu_q, cu_k, used_k = host[lay["cu_q"]], host[lay["cu_k"]], host[lay["used_k"]]
        cu_q[0] = 0
        cu_q[1 : m + 1] = q_end
        cu_q[m + 1 :] = t  # empty chunks
        cu_k[:m] = k_start
        cu_k[m:] = t
        used_k[:m] = q_end - k_start
        used_k[m:] = 0

    @torch.no_grad()
    def prefill(self, prompts: Sequence[Sequence[int]]) -> EngineOutput:
        """Prefill `prompts` (token-id lists); returns next-token logits and the flat KV.

        Raises ValueError for an empty list, an empty prompt, a prompt over the context,
        or token ids outside the vocabulary, before any device work.
        """
        t, p, max_len, cu = self._stage(prompts)
        n_in = self._layout(t, p, self._num_chunks(t, p))["used_k"].stop
        self._in_dev[:n_in].copy_(self._in_host[:n_in], non_blocking=True)
        if self.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        if self.cuda_graphs:
            logits = self._replay((t, p, max_len))
        else:
            logits = self._forward(t, p, max_len)
        n = len(prompts)
        return EngineOutput(logits=logits[:n], kv=self._kv[:, :, :t], cu_seqlens=cu)

    def _replay(self, key: tuple[int, int, int]) -> torch.Tensor:
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key)
            self._graphs[key] = entry
        graph, logits = entry
        graph.replay()
        return logits

    def _capture(self, key: tuple[int, int, int]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        if not self._warm:  # first use: Triton compiles, cuBLAS/flash initialise outside capture
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._forward(*key)
            torch.cuda.current_stream().wait_stream(side)
            self._warm = True
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._forward(*key)
        return graph, logits

    def prefill_result(self, prompts: Sequence[Sequence[int]]) -> Any:
        """`prefill`, handed back as the library's `runner.PrefillResult` (one flat row as the
        packing, backend "engine"); its logits and kv are views into the engine's buffers,
        valid until the next call. Building per-prompt kv lists costs host time (N x layers
        views): use `prefill` in hot loops."""
        from gpu_runner.runner import ForwardPlan, PrefillResult
        from packers import Packing

        out = self.prefill(prompts)
        lengths = tuple(int(x) for x in np.diff(out.cu_seqlens))
        total = int(out.cu_seqlens[-1])
        packing = Packing(lengths=lengths, capacity=total, bins=(tuple(range(len(lengths))),), packer="flat",
                          meta={"lower_bound": 1, "status": "optimal", "solve_time_s": 0.0})
        plan = ForwardPlan(bins=(0,), num_rows=1, row_len=int(out.kv.shape[2]), estimated_bytes=0)
        kv = [out.prompt_kv(i) for i in range(out.num_prompts)]
        return PrefillResult(logits=out.logits, kv=kv, packing=packing, backend="engine", forwards=(plan,),
                             config=self.model.config)

    @property
    def num_graphs(self) -> int:
        """CUDA graphs captured so far (one per shape bucket seen)."""
        return len(self._graphs)
