"""simulator: an analytical, CPU-only model of LLM prefill cost for padded and packed batches.

Public API (all importable without torch):

  Specs and tables
    ModelSpec, MODELS, get_model(name)          model shapes; ModelSpec.from_hf_config(cfg)
    GPUSpec, GPUS, get_gpu(name)                dense bf16 peak, bandwidth, memory
    ATTENTION, make_attention(name, **consts)   backends: dense, padded, flex, varlen
                                                (varlen pad_rows=True = gpu_runner's varlen on packed rows)
  Cost
    CostModel(model, gpu, attention, memory_budget_bytes=None).cost(packing) -> PackingCost
        total/useful FLOPs, padded tokens, weight/KV/mask/activation/peak bytes,
        forwards needed under the budget, est_time_s
    CostModel.row_times_s(packing) -> (num_bins,) modeled seconds of each packed row
    CostModel.forward_overhead_s()              fixed seconds per forward
    linear_flops, attention_flops, logits_flops, elementwise_bytes, kv_cache_bytes   the formulas
  Capacity
    choose_capacity(lengths, packer, cost_models, "max" | "auto" | int) -> [CapacityChoice]
    capacity_candidates(lengths)                what "auto" tries
  Lengths
    parse_distribution(spec) -> Distribution    profiles, FAMILY:k=v, mixtures, file:PATH
    load_lengths_file(path), load_profile(name), PROFILES, FAMILIES
  Running
    simulate(lengths_dist=..., batch_size=..., ...) -> SimulationResult (config, results rows)
    flat_packing(lengths) -> Packing            every prompt in one row (the flat varlen batch)
    recommend(lengths, model=..., gpu=...) -> ResultRow | None   best packer/backend/capacity
  Generation (prefill + decode, end to end)
    DecodeCostModel(model, gpu, method).step_time_s(batch, kv_tokens)   one decode step
    DECODE_METHODS, make_decode_method(name)    decode loops: hf-eager, hf-paged, graph
    POLICIES, make_policy(name, **params)       refill policies: refill-when-free, batch-refill
    GENERATION_METHODS                          hf-padded, prepack-hf, hf-continuous, engine
    simulate_generation(lengths_dist=..., output_dist=..., ...) -> GenerationResult
  Calibration
    python -m simulator.calibration [--fit]             H100 anchors (CALIBRATION.md)
    python -m simulator.decode_calibration [--fit]      H200 generation runs (CALIBRATION.md)
    python -m simulator.sweep_calibration CSV... [--fit] the GPU runner's measured sweep
  The `simulate` console script is simulator.cli:main.

Calibration constants and their error: simulator/CALIBRATION.md.
"""

from simulator.attention import ATTENTION, AttentionCost, available_attention, make_attention
from simulator.capacity import CapacityChoice, capacity_candidates, choose_capacity, parse_capacity
from simulator.cost import (
    CostModel,
    PackingCost,
    attention_flops,
    elementwise_bytes,
    kv_cache_bytes,
    linear_flops,
    logits_flops,
)
from simulator.distributions import (
    FAMILIES,
    PROFILES,
    Distribution,
    load_lengths_file,
    load_profile,
    parse_distribution,
)
from simulator.decode import DECODE_METHODS, DecodeCostModel, DecodeMethod, make_decode_method
from simulator.endtoend import GENERATION_METHODS, GenerationRun, Requests
from simulator.generation import GenerationResult, simulate_generation
from simulator.gpus import GPUS, GPUSpec, available_gpus, get_gpu
from simulator.layout import RowLayout
from simulator.schedule import POLICIES, make_policy
from simulator.run import ResultRow, SimulationResult, default_packers, flat_packing, recommend, simulate
from simulator.specs import MODELS, ModelSpec, available_models, get_model

__all__ = [
    "DECODE_METHODS", "DecodeCostModel", "DecodeMethod", "GENERATION_METHODS", "GenerationResult", "GenerationRun",
    "POLICIES", "Requests", "make_decode_method", "make_policy", "simulate_generation",
    "ATTENTION", "AttentionCost", "CapacityChoice", "CostModel", "Distribution", "FAMILIES", "GPUS",
    "GPUSpec", "MODELS", "ModelSpec", "PROFILES", "PackingCost", "ResultRow", "RowLayout",
    "SimulationResult", "attention_flops", "available_attention", "available_gpus", "available_models",
    "capacity_candidates", "choose_capacity", "default_packers", "elementwise_bytes", "flat_packing", "get_gpu", "get_model", "kv_cache_bytes",
    "linear_flops", "load_lengths_file", "load_profile", "logits_flops", "make_attention",
    "parse_capacity", "parse_distribution", "recommend", "simulate",
]  # fmt: skip
