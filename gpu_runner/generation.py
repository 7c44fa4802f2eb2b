"""Continued generation after a prepacked prefill: `generate(model, prompts, max_new_tokens)`.

Two paths; `path="auto"` picks the first that applies:
  engine  the prefill engine plus the CUDA-graph decode loop with packed refill
          (`gpu_runner.engine.batch_generate`): where `PrefillEngine` supports the model (its
          constructor decides, through `gpu_runner.support`), the runner's own options are left at their
          defaults (backend, capacity, memory_budget_bytes, decode_batch_size) and the
          generation options are among `ENGINE_OPTIONS`; the engine and its KV page pool
          (sized to the call's need, at most the free memory) stay cached on the model
          for the next call (`clear_generation_cache(model)` frees them);
  hf      today's runner + HF generate path below, for every other case.

How the hf path works, and why: each prompt's first len_i - 1 tokens are prefilled in packed rows
(`gpu_runner.prefill`); their caches are left-padded into one `DynamicCache` per decode
batch, and transformers' own `model.generate` continues from it with the full prompts as
input ids. Generate then sees a cache covering all but the last prompt token, feeds that
last token in its first decode step, and from there on everything (greedy or sampling,
logits processors, stopping criteria, EOS) is exactly its own logic. The cost over a plain
prefill is the last token of each prompt run as part of a decode step instead of inside the
packed prefill; no prompt is prefilled twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from gpu_runner.cache import cache_from_kv, cache_kwarg_name
from gpu_runner.engine.batch_generate import per_prompt_new_tokens
from gpu_runner.generate_engine import (
    ENGINE_OPTIONS,
    clear_generation_cache,
    engine_generate,
    engine_unsupported,
    token_id_set,
)
from gpu_runner.model_guard import inference_call
from gpu_runner.positions import generate_rule
from gpu_runner.runner import prefill
from gpu_runner.support import require_supported
from gpu_runner.validate import validate_prompts

__all__ = ["ENGINE_OPTIONS", "clear_generation_cache", "generate"]

_RESERVED = ("input_ids", "attention_mask", "cache", "past_key_values", "inputs", "position_ids")


def _trim_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in eos:
            return tokens[: j + 1]
    return tokens


def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    packer: str = "ffd",
    backend: str = "auto",
    *,
    capacity: int | str = "max",
    memory_budget_bytes: int | None = None,
    decode_batch_size: int | None = None,
    path: str = "auto",
    policy: Any = None,
    kv_budget_bytes: int | None = None,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """New tokens for each prompt (caller's order), continued from a prepacked prefill.

    prompts: N non-empty token-id lists. max_new_tokens: an int >= 0, or one per prompt.
    path: "auto" (the engine path where it applies, see the module docstring), "engine"
    (ValueError saying why when it does not apply) or "hf". packer: on the engine path,
    the refill policy's packer. policy (a name of
    `gpu_runner.schedule.POLICIES` or a policy object) and kv_budget_bytes (the KV page
    pool's size) tune the engine path only. packer, backend, capacity,
    memory_budget_bytes: as for `prefill` (applied to the prompts minus their last token),
    hf path. decode_batch_size: prompts per `model.generate` call (default all);
    batches are formed from length-sorted prompts to keep left padding small.
    generate_kwargs: generation options (greedy unless `do_sample=True` is given); the
    engine path takes do_sample, temperature, top_k, top_p, eos_token_id,
    stop_token_ids, seed and pad_token_id; the hf path passes them to `model.generate`
    (stop_token_ids joined to eos_token_id, seed through torch.manual_seed); they may not
    set input ids, masks or caches. A list ends at the first EOS / stop token (included),
    as `model.generate` on that prompt alone would. Raises `support.UnsupportedModelError`
    (a ValueError) unless the path taken is proven exact for the model. The whole call holds
    the model's lock and runs in eval mode (`gpu_runner.model_guard`), like `prefill`.
    """
    if path not in ("auto", "engine", "hf"):
        raise ValueError(f"path must be auto, engine or hf, got {path!r}")
    with inference_call(model):  # the model to itself (and its cached engine), eval mode
        if path != "hf":
            runner_options = {"backend": backend != "auto", "capacity": capacity != "max",
                              "memory_budget_bytes": memory_budget_bytes is not None,
                              "decode_batch_size": decode_batch_size is not None}
            reason = engine_unsupported(model, prompts, max_new_tokens, generate_kwargs,
                                        [k for k, set_ in runner_options.items() if set_])
            if reason is None:
                return engine_generate(model, prompts, max_new_tokens, packer=packer, policy=policy,
                                       kv_budget_bytes=kv_budget_bytes, **generate_kwargs)
            if path == "engine":
                require_supported(model, "engine")  # UnsupportedModelError naming what is in the way
                raise ValueError(f"the engine path does not apply: {reason}")
        return _generate_hf(model, prompts, max_new_tokens, packer, backend, capacity=capacity,
                            memory_budget_bytes=memory_budget_bytes, decode_batch_size=decode_batch_size,
                            **generate_kwargs)


def _generate_hf(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int | Sequence[int],
    packer: str,
    backend: str,
    *,
    capacity: int | str,
    memory_budget_bytes: int | None,
    decode_batch_size: int | None,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """Today's path: packed prefill of all but the last prompt tokens, then HF generate."""
    prompts, lengths = validate_prompts(model, prompts, local_attention=True)  # windows: support decides
    require_supported(model, "generate", lengths=lengths)  # UnsupportedModelError if not proven
    news = per_prompt_new_tokens(max_new_tokens, len(prompts))
    max_new_tokens = max(news)
    clash = sorted(set(generate_kwargs) & set(_RESERVED))
    if clash:
        raise ValueError(f"generate sets {clash} itself; pass only generation options")
    if generate_kwargs.get("num_return_sequences", 1) != 1 or generate_kwargs.get("num_beams", 1) != 1:
        raise ValueError(
            "generate returns one sequence per prompt: num_beams / num_return_sequences must be 1"
        )
    if decode_batch_size is not None and (not isinstance(decode_batch_size, int) or decode_batch_size < 1):
        raise ValueError(f"decode_batch_size must be a positive int, got {decode_batch_size!r}")
    if max_new_tokens == 0:
        return [[] for _ in prompts]

    gen_config = getattr(model, "generation_config", None)
    eos = token_id_set(generate_kwargs.get("eos_token_id", getattr(gen_config, "eos_token_id", None)))
    stops = token_id_set(generate_kwargs.pop("stop_token_ids", None))
    if stops:
        eos |= stops
        generate_kwargs["eos_token_id"] = sorted(eos)
    seed = generate_kwargs.pop("seed", None)
    if seed is not None:
        torch.manual_seed(seed)
    pad = generate_kwargs.get("pad_token_id", getattr(gen_config, "pad_token_id", None))
    if pad is None:
        pad = min(eos) if eos else 0
    generate_kwargs = {"do_sample": False, **generate_kwargs, "pad_token_id": pad}

    # Prefill every prompt but its last token, packed.
    prefixed = [i for i, n in enumerate(lengths) if n > 1]
    slot: dict[int, int] = {i: j for j, i in enumerate(prefixed)}  # prompt -> index in the prefill
    kv = None
    if prefixed:
        result = prefill(
            model, [prompts[i][:-1] for i in prefixed], packer, capacity, backend,
            memory_budget_bytes=memory_budget_bytes, return_kv=True,
            positions=generate_rule(model),  # numbered as HF generate numbers the prompt alone
        )  # fmt: skip
        kv = result.kv

    cache_kw = cache_kwarg_name(model)
    device = model.get_input_embeddings().weight.device
    order = sorted(range(len(prompts)), key=lambda i: lengths[i])
    step = decode_batch_size or len(order)
    out: list[list[int]] = [[] for _ in prompts]
    for first in range(0, len(order), step):
        chunk = order[first : first + step]
        width = max(lengths[i] for i in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, i in enumerate(chunk):
            input_ids[b, width - lengths[i] :] = torch.tensor(prompts[i])
            mask[b, width - lengths[i] :] = 1
        call = {"input_ids": input_ids.to(device), "attention_mask": mask.to(device)}
        if width > 1:
            assert kv is not None  # some prompt in the chunk is longer than one token
            layers, _ = kv.left_padded([slot.get(i) for i in chunk], length=width - 1)
            call[cache_kw] = cache_from_kv(layers, model.config)
        with torch.no_grad():
            generated = model.generate(**call, max_new_tokens=max_new_tokens, **generate_kwargs)
        sequences = getattr(generated, "sequences", generated)
        for b, i in enumerate(chunk):
            out[i] = _trim_at_eos(sequences[b, width:].tolist()[: news[i]], eos)
    return out
