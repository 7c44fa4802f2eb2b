"""gpu_runner: prepacked prefill on transformers causal LMs.

Public API:
  prefill(model, prompts, packer="ffd", capacity="max", backend="auto", **options) -> PrefillResult
      per-prompt next-token logits [N, vocab] and KV caches (`.kv[i]`, `.cache_for(i)`,
      `.cache_for_batch(indices)`), caller's order.
  prefill_texts(model, tokenizer, texts, **options) -> PrefillResult
  score(model, requests, packer="ffd", share_contexts="auto", path="auto", ...) -> list[ScoreResult]
      log-likelihood (and greedy flag, per-token log-probs) of each (context ids,
      continuation ids) request, caller's order, through the CUDA-graph engine where it
      applies (score_engine) or packed rows through the HF decoder; score_rolling(model,
      texts, prefix_token_id=...) -> total log-likelihood of long texts (perplexity).
  generate(model, prompts, max_new_tokens, packer="ffd", backend="auto", **generate_kwargs)
      -> list[list[int]]: new tokens per prompt; through the prefill engine and the
      CUDA-graph decode loop with packed refill where the engine supports the model
      (batch_generate), else continued from a prepacked prefill in HF generate.
  clear_generation_cache(model): free the engine, KV pool and scorer cached on the model;
  clear_score_cache(model): free only the scorer's buffers and CUDA graphs.
  pack_inputs / PackedInputs: the packed tensors; available_backends / get_backend /
  register_backend: the attention-backend registry (dense, flex, varlen, auto);
  estimate_forward_bytes: the memory estimate that memory_budget_bytes splitting uses.

Example:
    result = gpu_runner.prefill(model, [[1, 5, 9], [1, 7]], packer="ffd", backend="auto")
    next_tokens = result.logits.argmax(-1)          # [2]
    key, value = result.kv[0][layer]                 # [kv_heads, 3, head_dim] each
    new_tokens = gpu_runner.generate(model, [[1, 5, 9], [1, 7]], max_new_tokens=16)

Modules: validate (input checks, shared with the engine), inputs (packed layout), attention/
(the backend registry and the dense, flex and varlen backends with their masks), plan (memory
estimate, forwards under a budget), cache (transformers cache compatibility, PromptKV),
result (PrefillResult), runner (prefill), generation (continued generation), engine/ (the
CUDA-graph PrefillEngine), distributed/ (multi-GPU prefill), bench/ (prepack-bench),
score_requests / scoring / score_engine (packed log-likelihoods, runner and engine paths). The lm-evaluation-harness backend lives in
gpu_runner.harness (it imports lm_eval; nothing here imports it).
Public names are imported on first use, so `import gpu_runner.distributed` needs no torch.
"""

from importlib import import_module
from typing import Any

# public name -> the module that defines it; imported on first use, so that importing a
# torch-free part (gpu_runner.distributed's strategies) does not import torch
_EXPORTS = {
    **dict.fromkeys(('AttentionBackend', 'available_backends', 'get_backend', 'register_backend', 'resolve_backend'), "gpu_runner.attention"),
    **dict.fromkeys(('PromptKV',), "gpu_runner.cache"),
    **dict.fromkeys(('clear_generation_cache', 'generate'), "gpu_runner.generation"),
    **dict.fromkeys(('PackedInputs', 'pack_inputs', 'prompt_lengths'), "gpu_runner.inputs"),
    **dict.fromkeys(('ForwardPlan', 'estimate_forward_bytes'), "gpu_runner.plan"),
    **dict.fromkeys(('PrefillOutOfMemoryError', 'PrefillResult'), "gpu_runner.result"),
    **dict.fromkeys(('prefill', 'prefill_texts'), "gpu_runner.runner"),
    **dict.fromkeys(('validate_prompts',), "gpu_runner.validate"),
    **dict.fromkeys(('EngineOutput', 'PrefillEngine'), "gpu_runner.engine"),
    **dict.fromkeys(('ScoreResult', 'score', 'score_rolling'), "gpu_runner.scoring"),
    **dict.fromkeys(('clear_score_cache',), "gpu_runner.score_engine"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    try:  # a submodule (gpu_runner.attention, gpu_runner.engine, ...) reached as an attribute
        return import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise  # the submodule exists but needs something missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AttentionBackend",
    "EngineOutput",
    "ForwardPlan",
    "PackedInputs",
    "PrefillEngine",
    "PrefillOutOfMemoryError",
    "PrefillResult",
    "PromptKV",
    "ScoreResult",
    "available_backends",
    "clear_generation_cache",
    "clear_score_cache",
    "estimate_forward_bytes",
    "generate",
    "get_backend",
    "pack_inputs",
    "prefill",
    "prefill_texts",
    "prompt_lengths",
    "register_backend",
    "resolve_backend",
    "validate_prompts",
    "score",
    "score_rolling",
]
