"""The analytical prefill cost model: pure formula functions and `CostModel`.

`CostModel(model_spec, gpu_spec, attention).cost(packing) -> PackingCost` prices one batch
(one `Packing`, the padded baseline included) on one GPU: FLOPs (total and useful), padded
tokens, memory (weights, KV cache, mask, activation peak), the forward passes a memory
budget forces, and a modeled time = matmul FLOPs at an achieved efficiency + elementwise
memory traffic + attention FLOPs + materialized-score traffic + a fixed per-layer overhead
per forward. Constants come from the H100 calibration
(simulator/CALIBRATION.md); other GPUs reuse the same efficiencies (an assumption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from packers import Packing
from packers.limits import check_memory_bytes
from simulator.attention import AttentionCost, make_attention
from simulator.gpus import GPUSpec, get_gpu
from simulator.layout import RowLayout
from simulator.specs import ModelSpec, get_model

__all__ = [
    "ELEMENTWISE_PASSES",
    "MATMUL_EFFICIENCY",
    "CostModel",
    "PackingCost",
    "activation_bytes_per_token",
    "attention_flops",
    "elementwise_bytes",
    "kv_cache_bytes",
    "linear_flops",
    "logits_flops",
]

# Achieved fraction of peak bf16 FLOP/s on the linear layers (fitted, CALIBRATION.md).
MATMUL_EFFICIENCY = 0.718
# HBM passes over a token's hidden + intermediate activations per layer by the elementwise
# kernels of eager mode (norms in fp32, rotary, SiLU*mul, residual adds, copies) (fitted).
ELEMENTWISE_PASSES = 26.7
LOGITS_BYTES_PER_ELEMENT = 4  # last-token logits are upcast to fp32


def linear_flops(model: ModelSpec, tokens: int | np.ndarray) -> int | np.ndarray:
    """Q, K, V, O and MLP matmuls: 2 * layer_matmul_params * num_layers * tokens."""
    return 2 * model.layer_matmul_params * model.num_layers * tokens


def attention_flops(model: ModelSpec, pairs: int | np.ndarray) -> int | np.ndarray:
    """QK^T and PV over `pairs` query-key pairs per head: 4 * num_heads * head_dim * num_layers * pairs."""
    return 4 * model.num_heads * model.head_dim * model.num_layers * pairs


def logits_flops(model: ModelSpec, prompts: int | np.ndarray) -> int | np.ndarray:
    """LM head on the last token of each prompt only: 2 * hidden_size * vocab_size * prompts."""
    return 2 * model.hidden_size * model.vocab_size * prompts


def elementwise_bytes(model: ModelSpec, tokens: int | np.ndarray, passes: float) -> float | np.ndarray:
    """Memory traffic of the non-matmul kernels:
    passes * activation_bytes * (hidden_size + intermediate_size) * num_layers * tokens."""
    return passes * model.activation_bytes * (model.hidden_size + model.intermediate_size) * model.num_layers * tokens


def kv_cache_bytes(model: ModelSpec, tokens: int | np.ndarray) -> int | np.ndarray:
    """K and V of every layer: 2 * num_layers * num_kv_heads * head_dim * activation_bytes * tokens."""
    return model.kv_bytes_per_token * tokens


def activation_bytes_per_token(model: ModelSpec) -> int:
    """Live activations per token at the peak inside one layer:
    activation_bytes * (2 * hidden (residual + normed) + max(attention: 2*q_width + 2*kv_width,
    MLP: (3 if gated else 2) * intermediate))."""
    attn = 2 * model.q_width + 2 * model.kv_width
    mlp = (3 if model.gated_mlp else 2) * model.intermediate_size
    return model.activation_bytes * (2 * model.hidden_size + max(attn, mlp))


def _exact_sum(values: np.ndarray) -> int:
    """Sum of an int64 array as a Python int, exact even where the int64 sum would wrap."""
    if values.size == 0:
        return 0
    if int(np.abs(values).max()) <= (2**62) // values.size:
        return int(values.sum())
    return sum(values.tolist())


@dataclass(frozen=True)
class PackingCost:
    """The modeled cost of one batch. Units in the names; FLOPs are counts, not rates.

    forwards is the number of forward passes the memory budget forces (rows split into
    equal groups), or None when not even one row fits (then fits is False and the time and
    peak are those of a single forward). padded_tokens = forward_tokens - real_tokens.
    """

    packer: str
    attention: str
    capacity: int
    num_prompts: int
    num_bins: int
    lower_bound: int
    row_width_tokens: int
    real_tokens: int
    forward_tokens: int
    padded_tokens: int
    attention_pairs: int
    useful_attention_pairs: int
    flops: float
    useful_flops: float
    weight_bytes: int
    kv_cache_bytes: int
    mask_bytes: int
    activation_peak_bytes: int
    peak_memory_bytes: int
    memory_budget_bytes: int
    forwards: int | None
    est_time_s: float
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.padded_tokens < 0 or self.padded_tokens != self.forward_tokens - self.real_tokens:
            raise ValueError("padded_tokens must equal forward_tokens - real_tokens >= 0")
        if self.useful_flops > self.flops * (1 + 1e-12) or self.est_time_s < 0:
            raise ValueError("useful_flops must not exceed flops and est_time_s must be >= 0")

    @property
    def fits(self) -> bool:
        return self.forwards is not None

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.forward_tokens


@dataclass(frozen=True)
class CostModel:
    """Prices packings of one model on one GPU with one attention backend.

    model, gpu, attention accept names (looked up in the tables) or specs. memory_budget_bytes
    defaults to the GPU's memory. matmul_efficiency is the achieved fraction of peak on the
    linear layers; elementwise_passes scales the per-token memory traffic of the non-matmul
    kernels (`elementwise_bytes`).

    Time of one batch, with k forwards (see `row_times_s` for the per-row terms):
        est_time_s = max(sum(row_times_s), k * weight_bytes / bandwidth)
                     + k * num_layers * attention.layer_overhead_s
    """

    model: ModelSpec | str
    gpu: GPUSpec | str
    attention: AttentionCost | str = "dense"
    memory_budget_bytes: int | None = None
    matmul_efficiency: float = MATMUL_EFFICIENCY
    elementwise_passes: float = ELEMENTWISE_PASSES

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", get_model(self.model))
        object.__setattr__(self, "gpu", get_gpu(self.gpu))
        object.__setattr__(self, "attention", make_attention(self.attention))
        budget = self.gpu.memory_bytes if self.memory_budget_bytes is None else self.memory_budget_bytes
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
            raise ValueError(f"memory_budget_bytes must be a positive integer, got {budget!r}")
        object.__setattr__(self, "memory_budget_bytes", check_memory_bytes(budget, "memory_budget_bytes"))
        if not 0 < self.matmul_efficiency <= 1:
            raise ValueError(f"matmul_efficiency must be in (0, 1], got {self.matmul_efficiency!r}")
        if not self.elementwise_passes >= 0:
            raise ValueError(f"elementwise_passes must be >= 0, got {self.elementwise_passes!r}")

    # -- per-unit prices (seconds) ------------------------------------------------------
    def _prices(self) -> tuple[float, float, float, float]:
        """(per token, per attention pair, per materialized score element, per prompt) seconds."""
        cached = self.__dict__.get("_prices_cache")
        if cached is not None:
            return cached
        m, g, a = self.model, self.gpu, self.attention
        per_token_s = linear_flops(m, 1) / (g.peak_flops * self.matmul_efficiency) + elementwise_bytes(
            m, 1, self.elementwise_passes
        ) / g.memory_bandwidth_bytes_per_s
        per_pair_s = attention_flops(m, 1) / (g.peak_flops * a.attention_efficiency)
        per_score_s = a.score_traffic_passes * m.num_heads * m.activation_bytes * m.num_layers / (
            g.memory_bandwidth_bytes_per_s
        )
        per_prompt_s = logits_flops(m, 1) / (g.peak_flops * self.matmul_efficiency)
        prices = (per_token_s, per_pair_s, per_score_s, per_prompt_s)
        object.__setattr__(self, "_prices_cache", prices)
        return prices

    def _layout(self, packing: Packing, layout: RowLayout | None) -> RowLayout:
        layout = RowLayout.from_packing(packing) if layout is None else layout
        self.attention.check(layout)
        return layout

    def row_times_s(self, packing: Packing, layout: RowLayout | None = None) -> np.ndarray:
        """(num_bins,) modeled compute seconds of each packed row, in bin order:
            per_token * row_tokens + per_pair * attention_pairs
            + per_score * materialized score elements + per_prompt * prompts (last-token logits)
        with per_token = matmul FLOPs at matmul_efficiency + elementwise bytes at bandwidth.
        Excludes the per-forward terms (fixed overhead, weight-read floor), which
        `cost().est_time_s` adds once per forward. `layout` may be passed to skip rebuilding it."""
        layout = self._layout(packing, layout)
        per_token_s, per_pair_s, per_score_s, per_prompt_s = self._prices()
        a = self.attention
        return (
            per_token_s * a.row_tokens(layout)
            + per_pair_s * a.pairs_per_row(layout)
            + per_score_s * a.score_elements_per_row(layout)
            + per_prompt_s * layout.prompts_per_row()
        )

    def forward_overhead_s(self) -> float:
        """Fixed seconds per forward: num_layers * attention.layer_overhead_s."""
        return self.model.num_layers * self.attention.layer_overhead_s

    # -- the whole batch ----------------------------------------------------------------
    def cost(self, packing: Packing, layout: RowLayout | None = None) -> PackingCost:
        """Price one packing (see the class docstring). `layout` (= RowLayout.from_packing
        of this packing) may be passed to share it between backends. The packing is trusted:
        `simulate` / `choose_capacity` get theirs from `packers.checked_pack`; do the same
        for a packing from an untrusted packer. Counts are exact ints or float64 (pairs,
        scores, bytes), never wrapping int64."""
        if not isinstance(packing, Packing):
            raise TypeError(f"cost() prices a Packing, got {type(packing).__name__}")
        m, a = self.model, self.attention
        layout = self._layout(packing, layout)
        row_tokens = a.row_tokens(layout)
        pairs = a.pairs_per_row(layout)
        scores = a.score_elements_per_row(layout)
        forward_tokens = _exact_sum(row_tokens)
        pairs_total, scores_total = int(pairs.sum()), int(scores.sum())
        real_tokens = layout.real_tokens
        n = layout.num_prompts
        causal_pairs = layout.causal_pairs_total()
        flops = float(linear_flops(m, forward_tokens) + attention_flops(m, pairs_total) + logits_flops(m, n))
        useful = float(linear_flops(m, real_tokens) + attention_flops(m, causal_pairs) + logits_flops(m, n))
        mask_bytes = a.mask_bytes(layout)
        kv_bytes = int(kv_cache_bytes(m, forward_tokens))

        forwards, act_peak = self._forwards(layout, row_tokens, scores, mask_bytes, kv_bytes)
        k = forwards or 1
        weight_read_s = m.weight_bytes / self.gpu.memory_bandwidth_bytes_per_s
        per_token_s, per_pair_s, per_score_s, per_prompt_s = self._prices()
        # = sum(row_times_s), without building the per-row array
        compute_s = per_token_s * forward_tokens + per_pair_s * pairs_total + per_score_s * scores_total + per_prompt_s * n
        est_time_s = max(compute_s, k * weight_read_s) + k * self.forward_overhead_s()
        return PackingCost(
            packer=packing.packer,
            attention=a.name,
            capacity=packing.capacity,
            num_prompts=n,
            num_bins=packing.num_bins,
            lower_bound=packing.lower_bound,
            row_width_tokens=layout.width_tokens,
            real_tokens=real_tokens,
            forward_tokens=forward_tokens,
            padded_tokens=forward_tokens - real_tokens,
            attention_pairs=pairs_total,
            useful_attention_pairs=causal_pairs,
            flops=flops,
            useful_flops=useful,
            weight_bytes=m.weight_bytes,
            kv_cache_bytes=kv_bytes,
            mask_bytes=mask_bytes,
            activation_peak_bytes=act_peak,
            peak_memory_bytes=m.weight_bytes + kv_bytes + act_peak,
            memory_budget_bytes=self.memory_budget_bytes,
            forwards=forwards,
            est_time_s=est_time_s,
        )

    def _forwards(
        self, layout: RowLayout, row_tokens: np.ndarray, scores: np.ndarray, mask_bytes: int, kv_bytes: int
    ) -> tuple[int | None, int]:
        """Smallest k such that weights + KV(all rows) + activations(largest group of ceil(R/k)
        rows) fit the budget; activations(r rows) = per-token bytes * tokens of the r largest
        rows + num_heads * score_copies * activation_bytes * their score elements + r/R of the
        mask + fp32 logits of their prompts. Returns (k or None, activation peak bytes)."""
        m, a = self.model, self.attention
        r_total = layout.num_rows
        free = self.memory_budget_bytes - m.weight_bytes - kv_bytes
        # float64 throughout: byte counts of huge rows exceed int64; no wrap, exact below 2**53
        whole = int(np.ceil(
            activation_bytes_per_token(m) * float(_exact_sum(row_tokens))
            + m.num_heads * a.score_copies * m.activation_bytes * float(scores.sum())
            + float(mask_bytes)
            + LOGITS_BYTES_PER_ELEMENT * m.vocab_size * layout.num_prompts
        ))  # fmt: skip
        if whole <= free:  # the common case: everything in one forward
            return 1, whole
        order = np.argsort(-row_tokens, kind="stable")
        top_tokens = np.cumsum(row_tokens[order].astype(np.float64))
        top_scores = np.cumsum(scores[order])
        top_prompts = np.cumsum(layout.prompts_per_row()[order])
        rows = np.arange(1, r_total + 1)
        act = np.ceil(
            activation_bytes_per_token(m) * top_tokens
            + m.num_heads * a.score_copies * m.activation_bytes * top_scores
            + float(mask_bytes) * rows / r_total
            + LOGITS_BYTES_PER_ELEMENT * m.vocab_size * top_prompts
        )
        fitting = np.flatnonzero(act <= free)
        if fitting.size == 0:
            return None, int(act[-1])
        r = int(fitting[-1]) + 1  # most rows one forward can take
        k = -(-r_total // r)
        group = -(-r_total // k)
        return k, int(act[group - 1])
