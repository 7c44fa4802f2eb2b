"""The decode cost model: the time of one decode step for B live sequences and their KV.

One step feeds one new token per live sequence through the model. It reads every weight
once and every live sequence's KV cache once, so at the batch sizes of generation it is
bandwidth-bound; the FLOPs only matter at large batches. On top of that roofline comes a
per-step overhead that depends on how the loop is run:

    step_s = max(step_bytes / (bandwidth * bandwidth_efficiency),
                 step_flops / (peak_flops * matmul_efficiency))
             + kv_extra_passes * kv_bytes / bandwidth
             + num_layers * layer_overhead_s + step_overhead_s

One registry, `DECODE_METHODS`, maps a loop's name to its calibrated constants
(`DecodeMethod`); `DecodeCostModel(model, gpu, method).step_time_s(batch, kv_tokens)` prices
steps (numpy arrays welcome). The constants and their sources are in `CALIBRATION_SOURCES`
and simulator/CALIBRATION.md ("Decode").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from simulator.cost import attention_flops, kv_cache_bytes, linear_flops, logits_flops
from simulator.gpus import GPUSpec, get_gpu
from simulator.specs import ModelSpec, get_model

__all__ = [
    "CALIBRATION_SOURCES",
    "DECODE_METHODS",
    "DecodeCostModel",
    "DecodeMethod",
    "ENGINE_PREFILL",
    "available_decode_methods",
    "decode_step_bytes",
    "decode_step_flops",
    "make_decode_method",
]


def decode_step_bytes(model: ModelSpec, batch: int | np.ndarray, kv_tokens: int | np.ndarray) -> Any:
    """HBM bytes one decode step must move: weight_bytes + kv_bytes_per_token * kv_tokens
    (every live sequence's cache read once) + kv_bytes_per_token * batch (the new K/V written).
    kv_tokens = sum over live sequences of their cache length (padding included where the
    loop keeps it)."""
    return model.weight_bytes + kv_cache_bytes(model, kv_tokens) + kv_cache_bytes(model, batch)


def decode_step_flops(model: ModelSpec, batch: int | np.ndarray, kv_tokens: int | np.ndarray) -> Any:
    """FLOPs of one decode step: linear_flops(batch) + attention_flops(kv_tokens) (one query
    per sequence against its cache) + logits_flops(batch)."""
    return linear_flops(model, batch) + attention_flops(model, kv_tokens) + logits_flops(model, batch)


@dataclass(frozen=True)
class DecodeMethod:
    """Calibrated constants of one decode loop (see the module docstring's formula).

    bandwidth_efficiency: achieved fraction of the datasheet HBM bandwidth when streaming
    weights and KV. matmul_efficiency: achieved fraction of peak FLOP/s. kv_extra_passes:
    extra HBM passes over the live KV per step beyond the one read (e.g. a cache grown by
    concatenation copies itself). layer_overhead_s: Python / launch seconds per layer per
    step. step_overhead_s: fixed seconds per step (sampling, scheduling, graph launch).
    call_overhead_s: fixed seconds per call of the generation loop (cache set-up).
    """

    name: str
    bandwidth_efficiency: float = 0.896
    matmul_efficiency: float = 0.718
    kv_extra_passes: float = 0.0
    layer_overhead_s: float = 0.0
    step_overhead_s: float = 0.0
    call_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        for attr in ("bandwidth_efficiency", "matmul_efficiency"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise ValueError(f"DecodeMethod.{attr} must be in (0, 1], got {value!r}")
        for attr in ("kv_extra_passes", "layer_overhead_s", "step_overhead_s", "call_overhead_s"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"DecodeMethod.{attr} must be finite and >= 0, got {value!r}")


# Calibrated constants: one row per loop; where each number comes from is in CALIBRATION_SOURCES.
DECODE_METHODS: dict[str, DecodeMethod] = {
    m.name: m
    for m in (
        # HF transformers eager `model.generate` with a DynamicCache (torch.cat per step).
        DecodeMethod("hf-eager", kv_extra_passes=0.0, layer_overhead_s=1.056e-3, call_overhead_s=8.1e-3),
        # HF `generate_batch` (continuous batching, paged cache): a Python scheduler per step, and a
        # cost per live cache token (kv_extra_passes) fitted on the azure trace.
        DecodeMethod("hf-paged", kv_extra_passes=17.57, step_overhead_s=5.73e-2, call_overhead_s=1.81),
        # our CUDA-graph decode loop: bandwidth-bound, one graph replay per step.
        DecodeMethod("graph", step_overhead_s=2.16e-3),
    )
}

# The prefill engine (CUDA graphs, fused kernels) as `CostModel` constants over one flat varlen row.
ENGINE_PREFILL: dict[str, float] = {"matmul_efficiency": 0.650, "elementwise_passes": 0.0, "layer_overhead_s": 0.0}

CALIBRATION_SOURCES: dict[str, str] = {
    "bandwidth_efficiency": "0.896 = 4.3 TB/s measured device copy (read + write) / 4.8 TB/s H200 datasheet "
    "(../shared/DESIGN.md); all loops",
    "matmul_efficiency": "0.718, the prefill cost model's fitted linear-layer efficiency (CALIBRATION.md)",
    "hf-eager": "kv_extra_passes (fit: 0), layer_overhead_s, call_overhead_s fitted (log least squares, python -m simulator.decode_calibration "
    "--fit) to H200 7B 64 MMLU prompts: HF generate padded 1.55 s / 13.2 s and gpu_runner.generate 1.59 s / 8.78 s "
    "(32 / 256 new tokens)",
    "hf-paged": "step_overhead_s, call_overhead_s, kv_extra_passes fitted to H200 7B HF generate_batch: 64 MMLU prompts "
    "4.2 s / 23.9 s (32 / 256 new tokens) and the first 256 azure_conv requests with their own output lengths, 198.82 s "
    "(benchmarks/results/generate_azure256_h200.json): three points, three constants, in-sample; the same 256 requests on "
    "an H100 (246.41 s) are held out",
    "engine prefill": "matmul_efficiency fitted to the H200 engine prefill of 64 MMLU prompts (seed 0): 88.0 ms "
    "(0.81 of the 764 TFLOP/s roofline; 0.79-0.80 on three other length mixes, ../shared/DESIGN.md); no per-layer "
    "overhead (CUDA graphs) and no separate elementwise traffic (fused into the matmuls)",
    "graph": "step_overhead_s 2.16 ms fitted to the H200 engine decode loop, 7B 64 MMLU prompts, 0.27 s / 1.84 s "
    "(32 / 256 new tokens; benchmarks/results/generate_h200.json): the step ran at 1.39x the read-once bound, "
    "and this constant carries that gap (split-KV attention 2.1 ms vs 1.6 ms of KV, small-M matmuls)",
}


def available_decode_methods() -> list[str]:
    return list(DECODE_METHODS)


def make_decode_method(name: str | DecodeMethod, **overrides: Any) -> DecodeMethod:
    """The registered loop `name` with its calibrated constants, or with `overrides`; an
    instance passes through. Unknown names raise `ValueError` listing the known ones."""
    if isinstance(name, DecodeMethod):
        return name
    key = str(name).strip().lower()
    if key not in DECODE_METHODS:
        raise ValueError(f"unknown decode method {name!r}; known: {', '.join(DECODE_METHODS)}")
    if not overrides:
        return DECODE_METHODS[key]
    from dataclasses import replace

    try:
        return replace(DECODE_METHODS[key], **overrides)
    except TypeError as exc:
        raise ValueError(f"bad parameters for decode method {key!r}: {exc}") from None


@dataclass(frozen=True)
class DecodeCostModel:
    """Prices decode steps of one model on one GPU with one decode loop (names or specs)."""

    model: ModelSpec | str
    gpu: GPUSpec | str
    method: DecodeMethod | str = "graph"

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", get_model(self.model))
        object.__setattr__(self, "gpu", get_gpu(self.gpu))
        object.__setattr__(self, "method", make_decode_method(self.method))

    def roofline_s(self, batch: int | np.ndarray, kv_tokens: int | np.ndarray) -> Any:
        """max(step bytes / achieved bandwidth, step FLOPs / achieved FLOP/s): the loop-free floor."""
        m, g, d = self.model, self.gpu, self.method
        memory_s = decode_step_bytes(m, batch, kv_tokens) / (g.memory_bandwidth_bytes_per_s * d.bandwidth_efficiency)
        compute_s = decode_step_flops(m, batch, kv_tokens) / (g.peak_flops * d.matmul_efficiency)
        return np.maximum(memory_s, compute_s)

    def step_time_s(self, batch: int | np.ndarray, kv_tokens: int | np.ndarray) -> Any:
        """Seconds of one step for `batch` live sequences holding `kv_tokens` cache tokens in all
        (the module docstring's formula). Arrays broadcast: one entry per step."""
        m, g, d = self.model, self.gpu, self.method
        extra_s = d.kv_extra_passes * kv_cache_bytes(m, kv_tokens) / g.memory_bandwidth_bytes_per_s
        return self.roofline_s(batch, kv_tokens) + extra_s + m.num_layers * d.layer_overhead_s + d.step_overhead_s

    def steps_time_s(self, batch: int, kv_tokens_first: int, steps: int, growth_per_step: int | None = None) -> float:
        """Total seconds of `steps` consecutive steps of a fixed batch whose cache starts at
        `kv_tokens_first` tokens (for the first step) and grows by `growth_per_step` tokens a
        step (default `batch`: one per live sequence)."""
        if steps <= 0:
            return 0.0
        growth = batch if growth_per_step is None else growth_per_step
        kv = kv_tokens_first + growth * np.arange(steps, dtype=np.float64)
        return float(np.sum(self.step_time_s(batch, kv)))
