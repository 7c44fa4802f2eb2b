"""The engine path of `gpu_runner.generate`: when it applies, and the call through it.

This module owns the glue between the public `generate(model, prompts, max_new_tokens,
**options)` and `batch_generate.BatchGenerator`: whether the engine path applies
(`engine_unsupported` returns the reason it does not, or None; the model must be proven
exact on the "engine" and "generate" paths by `gpu_runner.support`), the generation options it
understands (`ENGINE_OPTIONS`, read like HF generate: the model's generation_config fills
what the call leaves out) and the generator cached on the model between calls (engine,
KV page pool, captured CUDA graphs), rebuilt when the model's weights moved or a call
needs a larger pool.
"""

from __future__ import annotations

import gc
from collections.abc import Sequence
from typing import Any

import torch

from gpu_runner.engine import PrefillEngine
from gpu_runner.engine.batch_generate import BatchGenerator, default_kv_budget_bytes, per_prompt_new_tokens
from gpu_runner.engine.sampling import SamplingParams
from gpu_runner.schedule import DEFAULT_POLICY, make_policy
from gpu_runner.support import refusal
from gpu_runner.validate import validate_prompts

__all__ = ["ENGINE_OPTIONS", "cached_engine", "clear_generation_cache", "engine_generate", "engine_unsupported"]

ENGINE_OPTIONS = frozenset(
    {"do_sample", "temperature", "top_k", "top_p", "eos_token_id", "stop_token_ids", "seed", "pad_token_id"}
)
_ATTR = "_prepack_batch_generator"
_MAX_BATCH = 256
PREFILL_TOKENS = 8192  # tokens per prefill batch of the generator (its engine's KV buffer is sized for them)


def token_id_set(ids: Any) -> set[int]:
    """A generation option's token ids (None, an int, a sequence or a tensor) as a set."""
    if ids is None:
        return set()
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}


def clear_generation_cache(model: torch.nn.Module) -> None:
    """Free the engine, KV page pool and CUDA graphs that generate cached on `model`."""
    if model.__dict__.pop(_ATTR, None) is not None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _cached(model: torch.nn.Module) -> dict[str, Any] | None:
    entry = model.__dict__.get(_ATTR)
    if entry is None:
        return None
    eng: PrefillEngine = entry["engine"]
    attn = model.model.layers[0].self_attn
    q_proj = (attn.q_proj if hasattr(attn, "q_proj") else attn.qkv_proj).weight  # Phi-3 stores QKV fused
    if q_proj.data_ptr() != eng.layers[0].qkv.data_ptr() or model.lm_head.weight is not eng.lm_head:
        clear_generation_cache(model)  # the weights moved (model.to, reloading): build anew
        return None
    return entry


def _engine(model: torch.nn.Module, max_tokens: int = PREFILL_TOKENS) -> PrefillEngine:
    """The cached engine, its KV buffer holding prefills of at least `max_tokens` tokens."""
    entry = _cached(model)
    if entry is None:
        entry = {"engine": PrefillEngine(model, max_tokens=max_tokens), "gen": None}
        model.__dict__[_ATTR] = entry
    eng: PrefillEngine = entry["engine"]
    eng.reserve(max_tokens)
    return eng


def cached_engine(model: torch.nn.Module, *, max_tokens: int = PREFILL_TOKENS) -> tuple[PrefillEngine, dict[str, Any]]:
    """The engine cached on `model` (built on first use) and its cache entry, a dict where
    other engine paths keep their state next to it (scoring: key "scorer"); all of it is
    freed by `clear_generation_cache`. `max_tokens`: the engine's own KV buffer holds
    prefills of that many tokens (generation's default; scoring, which keeps no cache,
    asks for 0: no [layers, 2, 8192, ...] buffer it would not use). ValueError if the
    engine does not support the model."""
    eng = _engine(model, max_tokens)
    return eng, model.__dict__[_ATTR]


def engine_unsupported(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: Any,
                       generate_kwargs: dict[str, Any], runner_options: Sequence[str]) -> str | None:
    """Why the engine path does not apply to this call, or None when it does (bad input also
    gives None: the engine path then raises its clear ValueError)."""
    if runner_options:
        return f"the options {', '.join(runner_options)} configure the runner + HF generate path"
    extra = sorted(set(generate_kwargs) - ENGINE_OPTIONS)
    if extra:
        return f"the generation options {extra} are not among {sorted(ENGINE_OPTIONS)}"
    for path in ("engine", "generate"):  # both proven exact (the model zoo: prefill + decode tokens)
        found = refusal(model, path)
        if found is not None:
            return found.message()
    try:
        eng = _engine(model)
    except (ValueError, AttributeError, TypeError) as exc:
        return f"the prefill engine does not support the model ({exc})"
    if eng.device.type == "cuda" and eng.head_dim & (eng.head_dim - 1):
        return f"the decode kernel needs a power-of-two head_dim, the model's is {eng.head_dim}"
    if eng.device.type == "cuda" and any(w.q_norm is not None and w.q_norm.numel() == eng.head_dim for w in eng.layers):
        # exact on CPU (the model zoo), but on the H200 a Qwen3 decode parted from HF after the
        # first token (tests/test_engine_families_cuda.py): not proven there, so HF's loop runs
        return "the decode step with a per-head QK-norm (Qwen3) is not proven exact on CUDA"
    try:
        news = per_prompt_new_tokens(max_new_tokens, len(prompts))
        needs = [len(p) + n - 1 for p, n in zip(prompts, news) if n > 0]
    except (TypeError, ValueError):
        return None
    longest = max(needs, default=0)
    if longest > eng.max_positions:
        return f"a prompt plus its new tokens ({longest}) exceeds the engine's RoPE table ({eng.max_positions})"
    if eng.sliding_window and longest > eng.sliding_window:
        return f"a prompt plus its new tokens ({longest}) exceeds the sliding window ({eng.sliding_window})"
    return None


def _sampling(model: torch.nn.Module, options: dict[str, Any]) -> SamplingParams:
    """HF generate's reading: the call's options over the model's generation_config."""
    cfg = getattr(model, "generation_config", None)

    def pick(name: str, off: Any) -> Any:
        value = options.get(name, getattr(cfg, name, None))
        return off if value is None else value

    return SamplingParams(do_sample=bool(options.get("do_sample", False)), temperature=pick("temperature", 1.0),
                          top_k=pick("top_k", 0), top_p=pick("top_p", 1.0), seed=options.get("seed"))


def _generator(model: torch.nn.Module, prompts: Sequence[Sequence[int]], news: list[int],
               kv_budget_bytes: int | None) -> BatchGenerator:
    """The cached generator if its pool holds this call's need (or its budget is the one
    asked for), else a new one whose pool is sized to the need (at most the default budget)."""
    eng = _engine(model)
    entry = model.__dict__[_ATTR]
    gen: BatchGenerator | None = entry["gen"]
    page_tokens = 64
    token_bytes = len(eng.layers) * 2 * eng.num_kv_heads * eng.head_dim * eng.embed.element_size()
    pages = sorted((-(-(len(p) + n - 1) // page_tokens) for p, n in zip(prompts, news) if n > 0), reverse=True)
    need_bytes = sum(pages[:_MAX_BATCH]) * page_tokens * token_bytes
    if gen is not None:
        held = gen.cache.num_pages * gen.layout.page_bytes
        if (kv_budget_bytes is None and held >= need_bytes) or kv_budget_bytes == entry.get("budget"):
            return gen
        entry["gen"] = gen = None
        gc.collect()
        if eng.device.type == "cuda":
            torch.cuda.empty_cache()
    budget = kv_budget_bytes
    if budget is None:
        budget = min(need_bytes, default_kv_budget_bytes(eng, max_batch=_MAX_BATCH, prefill_tokens=PREFILL_TOKENS))
    gen = BatchGenerator(model, engine=eng, max_batch=_MAX_BATCH, page_tokens=page_tokens, kv_budget_bytes=budget)
    entry.update(gen=gen, budget=kv_budget_bytes)
    return gen


def engine_generate(model: torch.nn.Module, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int], *,
                    packer: str = "ffd", policy: Any = None, kv_budget_bytes: int | None = None,
                    **options: Any) -> list[list[int]]:
    """`generate` through the engine path (call `engine_unsupported` first). options: the
    ENGINE_OPTIONS; policy: a registered name, a policy object or None (the default policy,
    with `packer`). The model's eos_token_id applies unless the call sets its own."""
    sampling = _sampling(model, options)
    cfg = getattr(model, "generation_config", None)
    stops = token_id_set(options.get("eos_token_id", getattr(cfg, "eos_token_id", None)))
    stops |= token_id_set(options.get("stop_token_ids"))
    prompts, _ = validate_prompts(model, prompts)
    news = per_prompt_new_tokens(max_new_tokens, len(prompts))
    if all(n == 0 for n in news):
        return [[] for _ in prompts]
    gen = _generator(model, prompts, news, kv_budget_bytes)
    if policy is None or isinstance(policy, str):
        policy = make_policy(policy or DEFAULT_POLICY, packer=packer, token_budget=gen.prefill_tokens)
    return gen.generate(prompts, news, sampling=sampling, stop_token_ids=stops, policy=policy).tokens
