"""The attention-backend registry: how a packed forward keeps prompts apart.

A backend names the transformers attention implementation the model runs under and builds
the forward keyword arguments that carry the packing's attention structure:

  dense   4D bool block-diagonal causal mask [R, 1, L, L] under `sdpa` (the paper's method).
  flex    FlexAttention `BlockMask` under `prepack_flex` (attention/flex.py): transformers'
          compiled flex_attention on CUDA, eager (exact, unfused) flex_attention on CPU.
  varlen  `torch.nn.attention.varlen.varlen_attn` over the flattened rows under
          `prepack_varlen` (attention/varlen.py); CUDA, fp16/bf16 and compute capability >= 8.
  auto    varlen or dense, whichever can run and the simulator's cost model prices lower
          for this packing on this GPU (see `auto_backend_name`).

One registry (`BACKENDS`), one lookup (`get_backend`) that lists valid names on a miss, and
`register_backend` for third-party (or test) backends (the built-in ones register
themselves in attention/dense.py, flex.py, varlen.py). `unavailable(device, dtype)` says why
a backend cannot run, before any device work; `extra_bytes` is the backend's own term of
`plan.estimate_forward_bytes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gpu_runner.inputs import PackedInputs
from simulator.names import AUTO, AUTO_CANDIDATES, DENSE

__all__ = [
    "no_extra_bytes",
    "AUTO",
    "AUTO_CANDIDATES",
    "BACKENDS",
    "AttentionBackend",
    "auto_backend_name",
    "available_backends",
    "cheapest_by_cost_model",
    "get_backend",
    "register_backend",
    "resolve_backend",
]



@dataclass(frozen=True)
class AttentionBackend:
    """One way to run packed attention.

    name:                registry name.
    attn_implementation: transformers attention implementation the model runs under
                         (`model.set_attn_implementation`), e.g. "sdpa".
    forward_kwargs:      PackedInputs -> extra keyword arguments for the decoder's forward
                         (e.g. {"attention_mask": mask}); built on the inputs' device.
    unavailable:         (device, dtype) -> None if it can run there, else the reason.
    description:         one line for error messages and docs.
    extra_bytes:         (num_rows, row_len, q_heads, device) -> peak bytes the backend's
                         attention adds to a forward (mask, materialized scores); 0 default.
    """

    name: str
    attn_implementation: str
    forward_kwargs: Callable[[PackedInputs], dict[str, Any]]
    unavailable: Callable[[torch.device, torch.dtype], str | None]
    description: str = ""
    extra_bytes: Callable[[int, int, int, torch.device], int] = field(default=None, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not self.name or self.name == AUTO:
            raise ValueError(f"backend name must be non-empty and not {AUTO!r}")
        if not callable(self.forward_kwargs) or not callable(self.unavailable):
            raise ValueError("forward_kwargs and unavailable must be callables")
        if self.extra_bytes is None:
            object.__setattr__(self, "extra_bytes", no_extra_bytes)
        elif not callable(self.extra_bytes):
            raise ValueError("extra_bytes must be a callable")


def no_extra_bytes(num_rows: int, row_len: int, q_heads: int, device: torch.device) -> int:
    """`extra_bytes` of a backend that materializes nothing beyond its inputs."""
    return 0


BACKENDS: dict[str, AttentionBackend] = {}


def register_backend(backend: AttentionBackend, *, replace: bool = False) -> AttentionBackend:
    """Add `backend` to the registry (`ValueError` on a taken name unless `replace`)."""
    if backend.name in BACKENDS and not replace:
        raise ValueError(f"attention backend {backend.name!r} is already registered")
    BACKENDS[backend.name] = backend
    return backend


def available_backends() -> list[str]:
    """Every name `get_backend` / `prefill(backend=...)` accepts, "auto" included."""
    return [AUTO, *sorted(BACKENDS)]


def get_backend(name: str) -> AttentionBackend:
    """The registered backend `name` (not "auto"); `ValueError` listing valid names."""
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; valid: {', '.join(available_backends())}")
    return BACKENDS[name]




def gpu_table_name(device: torch.device) -> str | None:
    """The simulator GPU-table name of a CUDA device (`simulator.gpus.match_gpu`), or None
    off CUDA, without the simulator, or on a card the table lacks (auto then cannot price
    the candidates and takes the first that runs)."""
    if device.type != "cuda":
        return None
    try:
        from simulator.gpus import match_gpu

        return match_gpu(torch.cuda.get_device_name(device))
    except (ImportError, ValueError):
        return None


def cheapest_by_cost_model(candidates: list[str], config: Any, packing: Any, gpu: str) -> str | None:
    """The candidate with the lowest modeled prefill time for `packing` (simulator
    `CostModel(ModelSpec.from_hf_config(config), gpu, name).cost(packing).est_time_s`), or
    None if the simulator is missing or cannot price this model / GPU / backend."""
    try:
        from simulator import CostModel, ModelSpec

        spec = ModelSpec.from_hf_config(config)
        times = {name: CostModel(spec, gpu, name).cost(packing).est_time_s for name in candidates}
    except (ImportError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return min(candidates, key=lambda name: (times[name], candidates.index(name)))


def auto_backend_name(
    device: torch.device, dtype: torch.dtype, *, config: Any = None, packing: Any = None
) -> str:
    """The rule behind backend="auto".

    Candidates: varlen and dense, those that can run on `device` in `dtype` (so on CPU, or
    on CUDA in fp32, only dense: the paper's method, which runs anywhere with sdpa). With
    both available (CUDA, fp16/bf16, sm80+), the simulator's cost model prices this
    packing on this GPU for each and the cheaper wins: calibrated on H100 anchors, it
    picks dense for small batches of short prompts (1.3B shape, 16 MMLU prompts: 18.6 vs
    20.9 modeled ms; measured 18.1 vs 19.0) and varlen for larger ones (7B, 64 prompts:
    140 vs 149; measured 135 vs 142). Without a model config, packing, simulator or known
    GPU, varlen (fewer attention pairs, no padding tokens) wins.
    """
    candidates = [
        name
        for name in AUTO_CANDIDATES
        if name in BACKENDS and BACKENDS[name].unavailable(device, dtype) is None
    ]
    if not candidates:
        return DENSE
    if len(candidates) > 1 and config is not None and packing is not None:
        gpu = gpu_table_name(device)
        if gpu is not None:
            choice = cheapest_by_cost_model(candidates, config, packing, gpu)
            if choice is not None:
                return choice
    return candidates[0]


def resolve_backend(
    name: str, device: torch.device, dtype: torch.dtype, *, config: Any = None, packing: Any = None
) -> AttentionBackend:
    """Look up `name` (resolving "auto", with `config` and `packing` if known) and check it
    can run on `device` in `dtype`.

    Raises `ValueError` for an unknown name or a backend that cannot run there (with why).
    """
    if name == AUTO:
        name = auto_backend_name(device, dtype, config=config, packing=packing)
    backend = get_backend(name)
    reason = backend.unavailable(device, dtype)
    if reason is not None:
        raise ValueError(f"attention backend {name!r} cannot run here: {reason}")
    return backend
