"""The `varlen` attention function: packed rows flattened into one token stream and run
through `torch.nn.attention.varlen.varlen_attn` with the packing's `cu_seqlens`, plugged
into transformers through `AttentionInterface.register` under the name `prepack_varlen`.

`varlen_attn`'s signature differs across torch versions (2.9/2.10: positional `is_causal`;
2.13: keyword-only `window_size`, `scale`, `enable_gqa`, ...), so the call is built from
`inspect.signature` of the kernel at hand. The kernel is CUDA-only (flash attention, fp16 /
bf16); `varlen_unavailable_reason` says why it cannot run on a device. For CPU tests,
`reference_varlen_attn` is a slow loop-over-segments sdpa with the torch 2.13 signature,
and `reference_varlen_attn_legacy` one with the older positional `is_causal` signature:
they exist to test this module's plumbing, never for real work.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F

from gpu_runner.attention.registry import AttentionBackend, register_backend
from gpu_runner.inputs import PackedInputs
from simulator import names

__all__ = [
    "VARLEN",
    "VARLEN_ATTN_IMPLEMENTATION",
    "call_varlen_kernel",
    "make_varlen_attention",
    "reference_varlen_attn",
    "reference_varlen_attn_legacy",
    "register_varlen_attention",
    "torch_varlen_kernel",
    "varlen_forward_kwargs",
    "varlen_unavailable_reason",
]

VARLEN_ATTN_IMPLEMENTATION = "prepack_varlen"

Kernel = Callable[..., Any]


def torch_varlen_kernel() -> Kernel | None:
    """`torch.nn.attention.varlen.varlen_attn`, or None where this torch lacks it."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn


def varlen_unavailable_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """None if torch's varlen kernel can run on `device` in `dtype`, else why not."""
    if torch_varlen_kernel() is None:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn"
    if device.type != "cuda":
        return f"varlen_attn is a CUDA (flash attention) kernel; the model is on {device.type}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"varlen_attn needs float16 or bfloat16; the model is {dtype}"
    major, _ = torch.cuda.get_device_capability(device)
    if major < 8:
        return f"varlen_attn needs compute capability >= 8.0 (flash attention); got {major}.x"
    return None


@lru_cache(maxsize=8)
def _kernel_params(kernel: Kernel) -> frozenset[str]:
    return frozenset(inspect.signature(kernel).parameters)


def call_varlen_kernel(
    kernel: Kernel,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    scale: float,
) -> torch.Tensor:
    """Causal attention within each segment of a flat token stream.

    query [T, Hq, D], key/value [T, Hkv, D] (Hq a multiple of Hkv), cu_seqlens int32 [S+1]
    (segment boundaries, cu_seqlens[-1] == T), max_seqlen tokens. Returns [T, Hq, D].
    Causality, scale and GQA are passed in whatever form the kernel's signature takes.
    """
    params = _kernel_params(kernel)
    kwargs: dict[str, Any] = {}
    if "is_causal" in params:
        kwargs["is_causal"] = True
    elif "window_size" in params:
        kwargs["window_size"] = (-1, 0)
    else:
        raise RuntimeError(
            "varlen kernel takes neither is_causal nor window_size: cannot ask for causal attention"
        )
    if "scale" in params:
        kwargs["scale"] = scale
    elif abs(scale - query.shape[-1] ** -0.5) > 1e-9 * scale:
        raise RuntimeError(
            f"varlen kernel takes no `scale` and the model's scale {scale} is not 1/sqrt(head_dim)"
        )
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            key = key.repeat_interleave(groups, dim=1)
            value = value.repeat_interleave(groups, dim=1)
    out = kernel(query, key, value, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, **kwargs)
    return out[0] if isinstance(out, tuple) else out


def make_varlen_attention(
    kernel_factory: Callable[[], Kernel | None],
) -> Callable[..., tuple[torch.Tensor, None]]:
    """A transformers attention function running `kernel_factory()` over packed rows.

    Contract (transformers `AttentionInterface`): query [B, Hq, L, D], key/value
    [B, Hkv, L, D] (prefill only: no cached prefix), returns ([B, L, Hq, D], None). It reads
    the packing from the forward kwargs `cu_seq_lens_q` (int32 [S+1] over the flattened
    B * L stream) and `max_length_q` (int), which `varlen_forward_kwargs` passes.
    """

    def varlen_attention_forward(
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        scaling: float | None = None,
        dropout: float = 0.0,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        cu_seqlens = kwargs.get("cu_seq_lens_q")
        max_seqlen = kwargs.get("max_length_q")
        if cu_seqlens is None or max_seqlen is None:
            raise ValueError(
                f"attention implementation {VARLEN_ATTN_IMPLEMENTATION!r} needs cu_seq_lens_q and "
                "max_length_q: run it through gpu_runner.prefill"
            )
        batch, q_heads, length, dim = query.shape
        if key.shape[2] != length:
            raise ValueError(
                f"{VARLEN_ATTN_IMPLEMENTATION!r} runs prefill only: {key.shape[2]} keys for {length} queries"
            )
        kernel = kernel_factory()
        if kernel is None:
            raise RuntimeError(f"no varlen kernel: torch {torch.__version__} lacks varlen_attn")
        scale = float(scaling) if scaling is not None else dim**-0.5
        flat = batch * length
        out = call_varlen_kernel(
            kernel,
            query.transpose(1, 2).reshape(flat, q_heads, dim),
            key.transpose(1, 2).reshape(flat, key.shape[1], dim),
            value.transpose(1, 2).reshape(flat, value.shape[1], value.shape[3]),
            cu_seqlens,
            int(max_seqlen),
            scale,
        )
        return out.view(batch, length, q_heads, -1), None

    return varlen_attention_forward


def register_varlen_attention(name: str, kernel_factory: Callable[[], Kernel | None]) -> str:
    """Register `make_varlen_attention(kernel_factory)` with transformers under `name`."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, make_varlen_attention(kernel_factory))
    return name


def _reference_segments(query, key, value, cu_seq_q, scale, causal) -> torch.Tensor:
    out = torch.empty(*query.shape[:-1], value.shape[-1], dtype=query.dtype, device=query.device)
    groups = query.shape[1] // key.shape[1]
    bounds = cu_seq_q.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        q = query[start:end].transpose(0, 1)
        k = key[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        v = value[start:end].transpose(0, 1).repeat_interleave(groups, dim=0)
        out[start:end] = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale).transpose(
            0, 1
        )
    return out


def reference_varlen_attn(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor | None,
    max_q: int,
    max_k: int,
    *,
    scale: float | None = None,
    window_size: tuple[int, int] = (-1, -1),
    enable_gqa: bool = False,
) -> torch.Tensor:
    """TEST-ONLY stand-in for torch 2.13's `varlen_attn` (same signature subset); slow."""
    if window_size not in ((-1, -1), (-1, 0)):
        raise ValueError(f"reference supports full or causal windows only, got {window_size}")
    if key.shape[1] != query.shape[1] and not enable_gqa:
        raise ValueError("GQA shapes without enable_gqa=True")
    return _reference_segments(query, key, value, cu_seq_q, scale, window_size == (-1, 0))


def reference_varlen_attn_legacy(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    cu_seq_q: torch.Tensor,
    cu_seq_k: torch.Tensor,
    max_q: int,
    max_k: int,
    is_causal: bool = False,
    return_aux: Any = None,
) -> torch.Tensor:
    """TEST-ONLY stand-in for torch 2.9/2.10's `varlen_attn` (positional is_causal, no
    scale, no GQA); slow."""
    if key.shape[1] != query.shape[1]:
        raise ValueError("legacy varlen_attn has no GQA: heads must match")
    return _reference_segments(query, key, value, cu_seq_q, None, is_causal)


register_varlen_attention(VARLEN_ATTN_IMPLEMENTATION, torch_varlen_kernel)


def varlen_forward_kwargs(inputs: PackedInputs) -> dict[str, Any]:
    """Forward kwargs for any varlen-style backend: no mask, the flat segment boundaries."""
    return {
        "attention_mask": None,
        "cu_seq_lens_q": inputs.cu_seqlens,
        "cu_seq_lens_k": inputs.cu_seqlens,
        "max_length_q": inputs.max_seqlen,
        "max_length_k": inputs.max_seqlen,
    }


VARLEN = register_backend(
    AttentionBackend(
        name=names.VARLEN,
        attn_implementation=VARLEN_ATTN_IMPLEMENTATION,
        forward_kwargs=varlen_forward_kwargs,
        unavailable=varlen_unavailable_reason,
        description="torch varlen_attn (flash) over the flattened rows; CUDA fp16/bf16 only",
    )
)
