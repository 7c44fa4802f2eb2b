"""The fast prefill path: one flat varlen row per batch, static token buckets, CUDA graphs.

This module owns `PrefillEngine`, which keeps state across batches (fused weights, RoPE
tables, the KV buffer, one captured CUDA graph per shape bucket) so that a stream of
batches of changing size runs without recompiling or re-launching kernels one by one.

How one batch runs (T = the batch's real tokens rounded up to `token_bucket`):
  1. host: prompts are laid out back to back in the caller's order in one row of T tokens
     (positions restart at 0 per prompt; each tail-padding token attends to itself alone), written with
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

Supported: Llama-style decoder layers (GQA and QKV bias included) with static RoPE (any
type whose frequencies do not depend on the length: tables read from the model's rotary
module, per layer; interleaved and partial RoPE through a head-dim permutation of the Q / K
weights: `engine.rope`) of the families in `engine.support.ENGINE_FAMILIES` (Llama, Mistral,
Qwen2 / 3, Granite, Phi-3, Gemma, Gemma 3, OLMo 2 / 3, EXAONE 4, Arcee, Apertus, SmolLM3,
Helium, ERNIE 4.5, GLM / GLM-4, HyperCLOVA X), whose constants `family.EngineFamily` holds
(multipliers, norm placement and offsets, QK-norms, the MLP's activation and gating), plus
modular copies the model-zoo test proves; everything else is refused at construction with
`support.UnsupportedModelError` (`engine.support` lists what the engine implements: O-projection
and MLP biases, other QK-norms, soft-capping, ... are refused). Results hold views into
the engine's buffers: they are valid until the next `prefill` call (`EngineOutput.clone()`
keeps them).

Modules: engine (PrefillEngine: options, KV / input buffers, CUDA graphs), support (which
models it takes), family (per-family constants), rope (RoPE tables and head-dim permutation),
weights (fused projections), staging (host layout of the flat row), forward (the layer
forward), scorer (EngineScorer: log-probs of target tokens at any row positions, for
`gpu_runner.score`), kernels (Triton / torch RMSNorm, RoPE, attention kernels), matmul (persistent
Triton matmuls with SwiGLU / QKV-RoPE epilogues).
"""

from gpu_runner.engine.engine import EngineOutput, PrefillEngine
from gpu_runner.engine.staging import bucket_tokens

__all__ = ["EngineOutput", "PrefillEngine", "bucket_tokens"]
