"""The engine's device forward: one flat row through every layer (RMSNorm, QKV + RoPE,
block-diagonal attention, O into the residual, SwiGLU MLP, down into the residual), then
the final norm and lm_head on each prompt's last token. What `PrefillEngine` runs eagerly
or captures into a CUDA graph per bucket; see `gpu_runner.engine` for the whole data flow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from gpu_runner.engine import matmul as mm
from gpu_runner.engine.family import ACTIVATIONS, xielu
from gpu_runner.engine.kernels import (GATED_ACTIVATIONS, QKNorm, gated_act, packed_attention, rmsnorm, rope_attention,
                                       rope_store)
from gpu_runner.engine.reference import packed_attention_torch
from gpu_runner.engine.rope import to_model_order
from gpu_runner.engine.staging import layout, num_chunks
from gpu_runner.engine.weights import FusedLayer
from simulator.names import FLASH, PACKED

__all__ = ["Row", "attend", "embed", "final_logits", "final_norm", "forward", "head_qk_norm", "hidden_states", "mlp_act",
           "project_qkv", "qk_norm_", "residual_add", "scale_logits"]


@dataclass(frozen=True)
class Row:
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



def forward(eng: Any, t: int, p: int, max_len: int) -> torch.Tensor:
    """Device part of one prefill of `eng` (a PrefillEngine) over its input buffer; returns
    logits [p, vocab]. Reads only the engine's attributes (layers, embed, cos / sin, _kv, ...)."""
    h = hidden_states(eng, t, p, max_len, eng._in_dev, eng._kv)
    last = eng._in_dev[layout(t, p, num_chunks(t, p, eng.q_chunk, eng.attention))["last"]]
    return final_logits(eng, h.index_select(0, last))  # last tokens only


def final_norm(eng: Any, h: torch.Tensor) -> torch.Tensor:
    """The model's final RMSNorm of rows h [n, hidden] (fp32 statistics, HF's rounding; the
    family's norm offset is folded into eng.final_norm at construction)."""
    x = h.float()
    return eng.final_norm * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eng.eps)).to(h.dtype)


def hidden_states(eng: Any, t: int, p: int, max_len: int, buf: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """The flat row's last hidden states [t, hidden] (before the final norm), inputs read
    from `buf` (laid out as `staging.layout(t, p, ...)` says); layer i's roped K / V go to
    kv[i], or all to kv[0] when kv holds one layer (scoring: no cache is kept)."""
    s = num_chunks(t, p, eng.q_chunk, eng.attention)
    lay = layout(t, p, s)
    ids, pos = buf[lay["ids"]], buf[lay["pos"]]
    cu = buf[lay["cu"]].to(torch.int32)
    if s:
        cu_q, cu_k, used_k = (buf[lay[k]].to(torch.int32) for k in ("cu_q", "cu_k", "used_k"))
        max_q, max_k = eng.q_chunk, eng.max_positions
    else:
        cu_q, cu_k, used_k, max_q, max_k = cu, cu, None, max_len, max_len
    cos_t = sin_t = None
    if any(w.qkv_rope for w in eng.layers):  # each token's RoPE rows, once per forward
        cos_t, sin_t = eng.cos.index_select(0, pos), eng.sin.index_select(0, pos)
    row = Row(pos=pos, seg=buf[lay["seg"]], cos=cos_t, sin=sin_t, cu=cu, cu_q=cu_q, cu_k=cu_k, used_k=used_k,
               max_q=max_q, max_k=max_k)
    h = embed(eng, ids)
    # References are dropped as soon as a buffer is consumed: the peak stays at about
    # h + x + q (or qkv) + the MLP activation (the graph's memory pool is sized by it). The residual
    # stream h is updated inside the O and down matmuls (addmm_, beta = 1): no separate add pass.
    for li, w in enumerate(eng.layers):
        kv_l = kv[li if kv.shape[0] > 1 else 0]
        a = attend(eng, h, w, kv_l[0, :t], kv_l[1, :t], row)
        residual_add(eng, h, a.reshape(t, -1), w.o, w.post_attn)
        a = None
        x = h if w.ln2 is None else rmsnorm(h, w.ln2, eng.eps)
        act = mlp_act(eng, x, w, fused=eng.fused_mlp)
        x = None
        residual_add(eng, h, act, w.down, w.post_mlp)
        act = None
    return h


def embed(eng: Any, ids: torch.Tensor) -> torch.Tensor:
    """Token embeddings [T, hidden] (times the family's embedding scale; RMS-normed by the
    final norm where the family norms them: NanoChat)."""
    h = F.embedding(ids, eng.embed)
    if eng.family.embed_scale != 1.0:
        h = h.mul_(eng.family.embed_scale)
    return rmsnorm(h, eng.final_norm, eng.eps) if eng.family.embed_norm else h


def residual_add(eng: Any, h: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, post: torch.Tensor | None) -> None:
    """h += residual_scale * (x @ weight.T), inside the matmul (addmm_); with a post-norm
    weight (OLMo2) the product is RMS-normed first."""
    if post is None:
        h.addmm_(x, weight.t(), alpha=eng.family.residual_scale)
    else:
        h.add_(rmsnorm(x @ weight.t(), post, eng.eps), alpha=eng.family.residual_scale)


def head_qk_norm(eng: Any, w: FusedLayer) -> QKNorm | None:
    """Layer w's per-head QK-norm as the RoPE kernels fuse it before RoPE (`kernels.QKNorm`:
    Qwen3's rounding, normed value cast then times the weight; Gemma-style offsets are already
    in the stored weight, `family.norm_weight`), or None: no QK-norm, OLMo 2's whole-projection
    one (`project_qkv` applies it) or one after RoPE (HunYuan: `qk_norm_` after `rope_store`)."""
    if w.q_norm is None or w.q_norm.numel() != eng.head_dim or eng.family.qk_norm_after_rope:
        return None
    return QKNorm(w.q_norm, w.k_norm, eng.family.qk_eps)


def project_qkv(eng: Any, x: torch.Tensor, w: FusedLayer, *, head_norm_fused: bool = False) -> torch.Tensor:
    """The fused QKV projection [T, (Hq + 2 Hkv) D] of normed x; with a QK-norm before RoPE,
    q and k RMS-normalized in place (`qk_norm_`), ready for RoPE. head_norm_fused: the
    caller's RoPE kernel applies the per-head norm (`head_qk_norm`), so it is skipped here."""
    qkv = F.linear(x, w.qkv, w.qkv_bias)
    if w.q_norm is not None and not eng.family.qk_norm_after_rope and not head_norm_fused:
        t, d, hq, hkv = qkv.shape[0], eng.head_dim, eng.num_q_heads, eng.num_kv_heads
        qk_norm_(eng, qkv[:, : hq * d].view(t, hq, d), qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d), w)
    return qkv


def qk_norm_(eng: Any, q: torch.Tensor, k: torch.Tensor, w: FusedLayer) -> None:
    """RMS-normalize q [T, Hq, D] and k [T, Hkv, D] (views, rows contiguous) in place with the
    layer's QK-norm weights (HF's rounding): per head (Qwen3, HunYuan: a [D] weight) or over
    the whole projection (OLMo 2: [Hq D] / [Hkv D])."""
    for part, weight in ((q, w.q_norm), (k, w.k_norm)):
        x = part if weight.numel() == part.shape[-1] else part.view(part.shape[0], -1)
        y = x.float()
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eng.family.qk_eps)
        x.copy_(weight * y.to(x.dtype))


def mlp_act(eng: Any, x: torch.Tensor, w: FusedLayer, *, fused: bool) -> torch.Tensor:
    """The MLP's activation [T, I] of normed x: SiLU or GeLU-tanh gated (the fused gated matmul
    where `fused`, `matmul.swiglu`, else cuBLAS then the gated activation kernel), else the
    family's activation with torch ops: act(up) (`EngineFamily.gated` False: Arcee's ReLU^2,
    Apertus's xIELU with the layer's parameters)."""
    fam = eng.family
    if fam.gated and fam.activation in GATED_ACTIVATIONS:
        if fused:
            return mm.swiglu(x, w.gate_up, counters=eng._counters, activation=fam.activation)
        return gated_act(F.linear(x, w.gate_up), fam.activation)
    act = ACTIVATIONS.get(fam.activation) or (lambda x: xielu(x, *w.act_params))
    if not fam.gated:
        return act(F.linear(x, w.gate_up))
    gate, up = F.linear(x, w.gate_up).chunk(2, dim=-1)
    return gate.copy_(act(gate) * up)


def final_logits(eng: Any, h: torch.Tensor) -> torch.Tensor:
    """Logits [n, vocab] of final hidden states [n, hidden]: the final RMSNorm (HF's
    rounding), lm_head, then the family's logits scaling (`scale_logits`)."""
    return scale_logits(eng, F.linear(final_norm(eng, h), eng.lm_head))


def scale_logits(eng: Any, logits: torch.Tensor) -> torch.Tensor:
    """Logits in the model dtype divided by the family's logits divisor (Granite) or times its
    multiplier (HyperCLOVA X), then soft-capped (NanoChat), as HF's head does; a new tensor
    where any applies."""
    fam = eng.family
    if fam.logits_divisor != 1.0:
        logits = logits / fam.logits_divisor
    if fam.logits_multiplier != 1.0:
        logits = logits * fam.logits_multiplier
    if fam.final_softcap is not None:  # NanoChat: as HF, / cap, tanh, * cap
        logits = torch.tanh(logits / fam.final_softcap) * fam.final_softcap
    return logits


def attend(eng: Any, h: torch.Tensor, w: FusedLayer, k_out: torch.Tensor, v_out: torch.Tensor, row: Row) -> torch.Tensor:
    """Layer w's attention over the flat row: [T, Hq, D]; its roped K and V go to k_out / v_out
    (K in the model's head-dim order: `rope.to_model_order`, after the attention read it)."""
    x = h if w.ln1 is None else rmsnorm(h, w.ln1, eng.eps)
    if w.qkv_rope:  # Q, K, V roped in the QKV matmul's epilogue, K and V written to the cache there
        q = mm.qkv_rope(x, w.qkv, row.cos, row.sin, k_out, v_out, eng.num_q_heads, bias=w.qkv_bias,
                        counters=eng._counters)
        out = packed_attention(q, k_out, v_out, row.seg, eng.scale)
    else:
        norm = head_qk_norm(eng, w)  # fused into the RoPE kernels below
        qkv = project_qkv(eng, x, w, head_norm_fused=norm is not None)
        if eng.attention == PACKED and not eng.family.qk_norm_after_rope:
            out = rope_attention(qkv, row.pos, w.cos, w.sin, row.seg, k_out, v_out, eng.num_q_heads, eng.scale,
                                 qk_norm=norm)
        else:
            q = rope_store(qkv, row.pos, w.cos, w.sin, k_out, v_out, eng.num_q_heads, qk_norm=norm)
            if eng.family.qk_norm_after_rope:  # HunYuan: the norm sits between RoPE and attention
                qk_norm_(eng, q, k_out, w)
            if eng.attention == PACKED:
                out = packed_attention(q, k_out, v_out, row.seg, eng.scale)
            elif eng.attention == FLASH:
                out = _attention_flash(q, k_out, v_out, row.cu_q, row.cu_k, row.used_k, row.max_q, row.max_k,
                                       eng.scale)
            else:
                out = packed_attention_torch(q, k_out, v_out, row.seg, eng.scale)  # the dense-mask CPU reference
    to_model_order(k_out, eng.rope.inverse)
    return out
