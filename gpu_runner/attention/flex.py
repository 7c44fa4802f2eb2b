"""The `flex` backend: a FlexAttention `BlockMask` (attention/masks.py) under the attention
function registered here with transformers as `prepack_flex`.

On CUDA it is transformers' own `flex_attention_forward` (which runs a `torch.compile`d
`flex_attention`: the fused Triton kernel that skips untouched 128 x 128 tiles). On CPU it
calls `flex_attention` eagerly instead: in torch 2.13 the inductor CPU template that
transformers' compiled call lowers to fails to build (C++ error "cur_qSplitSize8 was not
declared") once shapes change and it recompiles with dynamic shapes at head_dim 64, and
compiling costs seconds per shape anyway. Eager CPU flex materializes the scores (exact,
slow): a correctness path, not a fast one. Attention sinks (`s_aux`, one logit per head:
GPT-OSS and others) are applied on CPU as transformers applies them on CUDA, by
renormalizing with the log-sum-exp: out * exp(lse - logsumexp(lse, sink)).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from gpu_runner.attention.dense import cpu_scores_bytes
from gpu_runner.attention.masks import flex_block_mask, packed_masks
from gpu_runner.attention.registry import AttentionBackend, register_backend
from gpu_runner.inputs import PackedInputs
from simulator import names

__all__ = ["FLEX", "FLEX_ATTN_IMPLEMENTATION", "flex_attention_forward"]

FLEX_ATTN_IMPLEMENTATION = "prepack_flex"


def flex_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: Any,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention contract: query [B, Hq, L, D], key/value [B, Hkv, S, D], a
    FlexAttention `BlockMask` as attention_mask; returns ([B, L, Hq, D], None)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if query.device.type != "cpu":
        from transformers.integrations.flex_attention import flex_attention_forward as hf_flex

        return hf_flex(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if not isinstance(attention_mask, BlockMask):
        raise ValueError(
            f"{FLEX_ATTN_IMPLEMENTATION!r} needs a BlockMask, got {type(attention_mask).__name__}"
        )
    softcap = kwargs.get("softcap")
    sinks = kwargs.get("s_aux")

    def score_mod(score, b, h, q_idx, kv_idx):
        return score if softcap is None else softcap * torch.tanh(score / softcap)

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = flex_attention(
            query,
            key,
            value,
            score_mod=score_mod if softcap is not None else None,
            block_mask=attention_mask,
            scale=scaling,
            enable_gqa=query.shape[1] != key.shape[1],
            **({} if sinks is None else _lse_request()),
        )
    if sinks is not None:
        out, aux = out
        lse = (getattr(aux, "lse", aux)).float().unsqueeze(-1)  # [B, H, L, 1]
        sink = sinks.float().view(1, -1, 1, 1).expand_as(lse)
        combined = torch.logsumexp(torch.cat([lse, sink], dim=-1), dim=-1, keepdim=True)
        out = (out.float() * torch.exp(lse - combined)).to(query.dtype)
    return out.transpose(1, 2).contiguous(), None


def _lse_request() -> dict[str, Any]:
    """flex_attention's keyword asking for the log-sum-exp: `return_aux=AuxRequest(lse=True)`
    (torch >= 2.9) or `return_lse=True` (older)."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return {"return_lse": True}
    return {"return_aux": AuxRequest(lse=True)}


def _register() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(FLEX_ATTN_IMPLEMENTATION, flex_attention_forward)


_register()


def _flex_unavailable(device: torch.device, dtype: torch.dtype) -> str | None:
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return f"torch {torch.__version__} has no FlexAttention"
    return None


def _flex_kwargs(inputs: PackedInputs) -> dict[str, Any]:
    return {"attention_mask": packed_masks(inputs.segment_ids, inputs.windows, flex_block_mask)}


FLEX = register_backend(
    AttentionBackend(
        name=names.FLEX,
        attn_implementation=FLEX_ATTN_IMPLEMENTATION,
        forward_kwargs=_flex_kwargs,
        unavailable=_flex_unavailable,
        description="FlexAttention BlockMask (document-causal mask_mod); compiled on CUDA, eager on CPU",
        extra_bytes=cpu_scores_bytes,  # the compiled kernel materializes nothing; eager CPU flex does
    )
)
