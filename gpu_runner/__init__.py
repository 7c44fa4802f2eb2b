"""gpu_runner: prepacked prefill on transformers causal LMs.

Public API:
  prefill(model, prompts, packer="ffd", capacity="max", backend="auto", **options) -> PrefillResult
      per-prompt next-token logits [N, vocab] and KV caches (`.kv[i]`, `.cache_for(i)`,
      `.cache_for_batch(indices)`), caller's order.
  prefill_texts(model, tokenizer, texts, **options) -> PrefillResult
  generate(model, prompts, max_new_tokens, packer="ffd", backend="auto", **generate_kwargs)
      -> list[list[int]]: new tokens per prompt, continued from a prepacked prefill.
  pack_inputs / PackedInputs: the packed tensors; available_backends / get_backend /
  register_backend: the attention-backend registry (dense, flex, varlen, auto);
  estimate_forward_bytes: the memory estimate that memory_budget_bytes splitting uses.
  supported_paths(model) / require_supported(model, path) / UnsupportedModelError: which
  paths (dense, flex, varlen, generate, engine) are proven exact for a model
  (gpu_runner.support; docs/support_matrix.md).

Example:
    result = gpu_runner.prefill(model, [[1, 5, 9], [1, 7]], packer="ffd", backend="auto")
    next_tokens = result.logits.argmax(-1)          # [2]
    key, value = result.kv[0][layer]                 # [kv_heads, 3, head_dim] each
    new_tokens = gpu_runner.generate(model, [[1, 5, 9], [1, 7]], max_new_tokens=16)

Modules: inputs (packed layout), masks (dense and flex masks), varlen / flex (attention
functions registered with transformers), backends (registry), cache (transformers cache
compatibility, per-prompt K/V views), plan (memory estimate, forwards under a budget),
runner (prefill), generate (continued generation).
"""

from gpu_runner.backends import (
    AttentionBackend,
    available_backends,
    get_backend,
    register_backend,
    resolve_backend,
)
from gpu_runner.cache import PromptKV
from gpu_runner.generate import generate
from gpu_runner.inputs import PackedInputs, pack_inputs, prompt_lengths
from gpu_runner.runner import (
    ForwardPlan,
    PrefillOutOfMemoryError,
    PrefillResult,
    estimate_forward_bytes,
    prefill,
    prefill_texts,
)
from gpu_runner.support import UnsupportedModelError, require_supported, supported_paths

__all__ = [
    "AttentionBackend",
    "ForwardPlan",
    "PackedInputs",
    "PrefillOutOfMemoryError",
    "PrefillResult",
    "PromptKV",
    "UnsupportedModelError",
    "available_backends",
    "estimate_forward_bytes",
    "generate",
    "get_backend",
    "pack_inputs",
    "prefill",
    "prefill_texts",
    "prompt_lengths",
    "register_backend",
    "require_supported",
    "resolve_backend",
    "supported_paths",
]
