"""Continued generation after a prepacked prefill: `generate(model, prompts, max_new_tokens)`.

How it works, and why: each prompt's first len_i - 1 tokens are prefilled in packed rows
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
from gpu_runner.runner import prefill, validate_prompts
from gpu_runner.support import require_supported

__all__ = ["generate"]

_RESERVED = ("input_ids", "attention_mask", "cache", "past_key_values", "inputs", "position_ids")


def _as_set(ids: Any) -> set[int]:
    if ids is None:
        return set()
    if isinstance(ids, torch.Tensor):
        ids = ids.tolist()
    return {int(ids)} if isinstance(ids, int) else {int(i) for i in ids}


def _trim_at_eos(tokens: list[int], eos: set[int]) -> list[int]:
    for j, t in enumerate(tokens):
        if t in eos:
            return tokens[: j + 1]
    return tokens


def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    packer: str = "ffd",
    backend: str = "auto",
    *,
    capacity: int | str = "max",
    memory_budget_bytes: int | None = None,
    decode_batch_size: int | None = None,
    **generate_kwargs: Any,
) -> list[list[int]]:
    """New tokens for each prompt (caller's order), continued from a prepacked prefill.

    prompts: N non-empty token-id lists. max_new_tokens: int >= 0. packer, backend,
    capacity, memory_budget_bytes: as for `prefill` (applied to the prompts minus their
    last token). decode_batch_size: prompts per `model.generate` call (default all);
    batches are formed from length-sorted prompts to keep left padding small.
    generate_kwargs: passed to `model.generate` (greedy unless `do_sample=True` is given);
    they may not set input ids, masks or caches. Raises `support.UnsupportedModelError`
    (a ValueError) unless generation and the prefill backend are proven exact for the
    model. A list ends at the first EOS token
    (included), as `model.generate` on that prompt alone would.
    """
    prompts, lengths = validate_prompts(model, prompts)
    require_supported(model, "generate", lengths=lengths)  # UnsupportedModelError if not proven
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
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
    eos = _as_set(generate_kwargs.get("eos_token_id", getattr(gen_config, "eos_token_id", None)))
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
            out[i] = _trim_at_eos(sequences[b, width:].tolist(), eos)
    return out
