"""The prepacked prefill: validate, pack, plan forwards under a memory budget, run each
packed forward, and hand back per-prompt next-token logits and KV caches.

`prefill(model, prompts, ...)` is the public entry point; `PrefillResult` carries the
results in the caller's prompt order; `gpu_runner.plan` decides the forwards (re-exported here). Every check on the input happens before any device
work; an out-of-memory inside a forward becomes `PrefillOutOfMemoryError` naming the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import torch

import packers
from gpu_runner.backends import AttentionBackend, attention_implementation, resolve_backend
from gpu_runner.cache import (
    KV,
    PromptKV,
    cache_from_kv,
    cache_kwarg_name,
    cache_layers_kv,
    new_dynamic_cache,
    output_cache,
)
from gpu_runner.inputs import pack_inputs, prompt_lengths
from gpu_runner.plan import ForwardPlan, estimate_forward_bytes, plan_forwards, text_config
from gpu_runner.support import UnsupportedModelError, auto_backend, local_window, model_type, require_backend
from packers import Packing

__all__ = [
    "ForwardPlan",
    "PrefillOutOfMemoryError",
    "PrefillResult",
    "estimate_forward_bytes",
    "plan_forwards",
    "prefill",
    "prefill_texts",
    "project_logits",
    "validate_prompts",
]


# torch >= 2.5 exposes the CUDA out-of-memory error as torch.OutOfMemoryError.
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


class PrefillOutOfMemoryError(RuntimeError):
    """A packed forward ran out of device memory; the message names the forward and its prompts."""


@dataclass(frozen=True)
class PrefillResult:
    """What a prepacked prefill hands back, in the caller's prompt order.

    logits:  [N, vocab], each prompt's next-token logits (model dtype), from its last token.
    kv:      kv[i][layer] = (key, value), each [num_kv_heads, len_i, head_dim]: prompt i's
             cache, keys after RoPE as transformers caches store them (a `PromptKV`: views
             into the packed cache of its forward, sliced on access, no copy); None when
             prefill ran with return_kv=False.
    packing: the packing that ran; backend: the attention backend's name;
    forwards: the packed forwards, in the order they ran.
    """

    logits: torch.Tensor
    kv: PromptKV | None
    packing: Packing
    backend: str
    forwards: tuple[ForwardPlan, ...]
    config: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = self.packing.num_prompts
        if self.logits.dim() != 2 or self.logits.shape[0] != n:
            raise ValueError(f"logits must be [{n}, vocab], got {tuple(self.logits.shape)}")
        if self.kv is not None and len(self.kv) != n:
            raise ValueError(f"kv holds {len(self.kv)} prompts for {n}")

    @property
    def num_prompts(self) -> int:
        return self.packing.num_prompts

    def _kv_of(self, index: int) -> list[KV]:
        if self.kv is None:
            raise ValueError("this prefill ran with return_kv=False: no caches to hand out")
        if (
            isinstance(index, bool)
            or not isinstance(index, (int, np.integer))
            or not 0 <= index < self.num_prompts
        ):
            raise ValueError(f"prompt index {index!r} is outside 0..{self.num_prompts - 1}")
        return self.kv[int(index)]

    def cache_for(self, index: int) -> Any:
        """Prompt `index`'s cache as a transformers `DynamicCache` (batch 1, len_i tokens).

        Continue with `model.generate(input_ids=prompt + [next_token], <cache kwarg>=cache)`,
        where `next_token` comes from `logits[index]`.
        """
        return cache_from_kv([(k[None], v[None]) for k, v in self._kv_of(index)], self.config)

    def cache_for_batch(self, indices: Sequence[int]) -> tuple[Any, torch.Tensor]:
        """Caches of `indices` as one left-padded `DynamicCache` and its attention mask.

        Returns (cache, attention_mask): layers [B, kv_heads, T, head_dim] with
        T = the longest of these prompts, and attention_mask int64 [B, T], 1 on real tokens.
        Feed `generate` left-padded input ids whose first T columns are these prompts, with
        the attention mask extended over the new columns.
        """
        if len(indices) == 0:
            raise ValueError("indices is empty")
        for i in indices:
            self._kv_of(i)  # validates
        layers, mask = self.kv.left_padded(indices)
        return cache_from_kv(layers, self.config), mask


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    raise ValueError(f"{type(model).__name__} has no floating-point parameters")


def _normalize(prompts: Sequence[Sequence[int]]) -> list[list[int]]:
    if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence):
        raise ValueError(f"prompts must be a list of token-id lists, got {type(prompts).__name__}")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, (torch.Tensor, np.ndarray)):
            if p.ndim != 1:
                raise ValueError(f"prompt {i} must be 1-D token ids, got shape {tuple(p.shape)}")
            p = p.tolist()
        elif isinstance(p, (str, bytes)) or not isinstance(p, Sequence):
            raise ValueError(f"prompt {i} must be a sequence of token ids, got {type(p).__name__}")
        out.append(list(p))
    return out


def validate_prompts(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]]
) -> tuple[list[list[int]], list[int]]:
    """Check prompts against the model; return (prompts as lists, lengths).

    `ValueError` for: an empty list, an empty prompt, a non-integer token id, a token id
    outside [0, vocab), a prompt longer than `max_position_embeddings`, or a prompt longer
    than the model's local attention span (sliding window / attention chunk: packed masks
    here are full causal; `support.UnsupportedModelError`, a ValueError).
    """
    prompts = _normalize(prompts)
    lengths = prompt_lengths(prompts)
    try:
        tokens = np.asarray(list(chain.from_iterable(prompts)))
    except (ValueError, TypeError):
        tokens = np.asarray([None])
    if tokens.ndim != 1 or tokens.dtype.kind not in "iu":
        raise ValueError("token ids must be integers: every prompt must be a flat list of ints")
    vocab = model.get_input_embeddings().num_embeddings
    bad = (tokens < 0) | (tokens >= vocab)
    if bad.any():
        flat = int(np.flatnonzero(bad)[0])
        prompt = int(np.searchsorted(np.cumsum(lengths), flat, side="right"))
        raise ValueError(
            f"prompt {prompt} has token id {int(tokens[flat])} outside the vocabulary [0, {vocab})"
        )
    longest = max(lengths)
    config = text_config(model.config)
    context = getattr(config, "max_position_embeddings", None)
    if isinstance(context, int) and context > 0 and longest > context:  # XLNet says -1: no limit
        i = lengths.index(longest)
        raise ValueError(f"prompt {i} has {longest} tokens, over the model's context ({context})")
    window = local_window(config)
    if window is not None and longest > window:
        i = lengths.index(longest)
        raise UnsupportedModelError(
            f"prompt {i} has {longest} tokens, over the model's sliding window ({window}) "
            f"(local attention, model_type {model_type(model)!r}): packed prefill uses full causal masks"
        )
    return prompts, lengths


def _resolve_capacity(capacity: int | str, lengths: Sequence[int]) -> int:
    longest = max(lengths)
    if capacity == "max":
        return longest
    value = packers.validate_capacity(capacity)
    if value < longest:
        raise ValueError(f"capacity {value} is below the longest prompt ({longest} tokens)")
    return value


def _decoder(model: torch.nn.Module) -> torch.nn.Module:
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    if decoder is None or decoder is model:
        decoder = getattr(model, "model", None)
    if decoder is None:
        raise ValueError(f"cannot find the base model of {type(model).__name__} (get_decoder / .model)")
    return decoder


def _head(model: torch.nn.Module) -> torch.nn.Module:
    """The module that turns final hidden states into logits: the output embedding, or the
    child of the model that holds it when that child is a whole prediction head (BERT-style
    `cls`: dense + norm + decoder)."""
    out = model.get_output_embeddings()
    if out is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head)")
    decoder = _decoder(model)
    for child in model.children():
        if child is out or child is decoder:
            continue
        if any(m is out for m in child.modules()) and not any(m is decoder for m in child.modules()):
            return child
    return out


def project_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits [N, vocab] from final hidden states [N, hidden], as the model's head does.

    Applies the output head (`_head`), then any logit scaling the config declares:
    `logit_scale` (multiply, Cohere), `logits_scaling` (divide, Granite),
    `final_logit_softcapping` (tanh cap, Gemma 2/3). Llama, Mistral, Qwen2 have none.
    """
    logits = _head(model)(hidden)
    cfg = text_config(model.config)
    scale = getattr(cfg, "logit_scale", None)
    if scale is not None:
        logits = logits * scale
    divisor = getattr(cfg, "logits_scaling", None)
    if divisor is not None:
        logits = logits / divisor
    cap = getattr(cfg, "final_logit_softcapping", None)
    if cap is not None:
        logits = torch.tanh(logits / cap) * cap
    return logits


def sub_packing(packing: Packing, bins: Sequence[int]) -> tuple[list[int], Packing]:
    """The prompts (global indices, placement order) of `bins` and their packing alone,
    renumbered 0..n-1 in that order (meta["parent_bins"] = `bins`)."""
    bins = tuple(int(b) for b in bins)
    members = [i for b in bins for i in packing.bins[b]]
    local = {g: j for j, g in enumerate(members)}
    sub = Packing(
        lengths=tuple(packing.lengths[g] for g in members),
        capacity=packing.capacity,
        bins=tuple(tuple(local[i] for i in packing.bins[b]) for b in bins),
        packer=packing.packer,
        meta={"lower_bound": 1, "status": "heuristic", "solve_time_s": 0.0, "parent_bins": bins},
    )
    return members, sub


def _run_forward(
    model: torch.nn.Module,
    decoder: torch.nn.Module,
    backend: AttentionBackend,
    prompts: list[list[int]],
    packing: Packing,
    plan: ForwardPlan,
    *,
    pad_token_id: int,
    device: torch.device,
    members: list[int],
    kv: PromptKV | None,
) -> torch.Tensor:
    """Run one packed forward; return its prompts' logits [n, vocab] (sub-packing order) and
    record their K/V in `kv` (global indices `members`) unless it is None."""
    return_kv = kv is not None
    inputs = pack_inputs(
        prompts,
        packing,
        row_len=plan.row_len,
        num_rows=plan.num_rows,
        pad_token_id=pad_token_id,
        device=device,
    )
    call: dict[str, Any] = {
        "input_ids": inputs.input_ids,
        "position_ids": inputs.position_ids,
        "use_cache": return_kv,
        **backend.forward_kwargs(inputs),
    }
    if return_kv:
        call[cache_kwarg_name(decoder)] = new_dynamic_cache()
    out = decoder(**call)
    hidden = out.last_hidden_state
    last = hidden.reshape(-1, hidden.shape[-1]).index_select(0, inputs.last_index)
    logits = project_logits(model, last)
    if kv is not None:
        kv.add_forward(
            cache_layers_kv(output_cache(out)), members, inputs.row_of, inputs.start_of, inputs.lengths
        )
    return logits


def prefill(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    packer: str | packers.Packer = "ffd",
    capacity: int | str = "max",
    backend: str = "auto",
    *,
    packing: Packing | None = None,
    row_len: int | str | None = None,
    num_rows: int | None = None,
    memory_budget_bytes: int | None = None,
    return_kv: bool = True,
    pad_token_id: int | None = None,
) -> PrefillResult:
    """Prefill `prompts` through `model` in packed rows; one result per prompt, caller's order.

    model:    a transformers causal LM (Llama, Mistral, Qwen2, ... with `get_decoder()` /
              `.model` and an lm_head); its attention implementation is switched to the
              backend's for the call and restored after.
    prompts:  N token-id lists (or 1-D tensors), each non-empty.
    packer:   registry name (`packers.available_packers()`) or a packer object;
              ignored when `packing` is given.
    capacity: "max" (the longest prompt, the paper's rule) or an int >= the longest prompt.
    backend:  "auto", "dense", "flex", "varlen" (`gpu_runner.available_backends()`).
    packing:  a ready `Packing` of exactly these prompt lengths (skips packing).
    row_len:  tokens per packed row: None (each forward's fullest bin), "capacity", or an
              int >= capacity: fixed shapes for compiled / CUDA-graph execution.
    num_rows: rows per forward (padded with empty rows): fixed shapes; also caps each forward.
    memory_budget_bytes: split the bins over several forwards so that each forward's
              `estimate_forward_bytes` stays within it (`ValueError` if one bin cannot).
    return_kv: keep per-prompt K/V (needs the packed cache in memory).
    pad_token_id: token id of padding slots (default the config's, else 0); never affects
              real tokens.
    Raises `support.UnsupportedModelError` (a ValueError) when the backend is not proven
    exact for this model ("auto" picks one that is, or raises it naming the paths that are),
    `ValueError` on bad input (see `validate_prompts`; unknown packer / backend,
    mismatched packing, bad capacity / row_len / num_rows) before any device work, and
    `PrefillOutOfMemoryError` naming the forward if the device runs out of memory.
    """
    prompts, lengths = validate_prompts(model, prompts)
    device, dtype = _model_device_dtype(model)
    if backend != "auto":
        attn = resolve_backend(backend, device, dtype)  # unknown / unavailable: fail before packing
        require_backend(model, backend, lengths=lengths)  # not proven exact: UnsupportedModelError
    if packing is not None:
        if not isinstance(packing, Packing):
            raise ValueError(f"packing must be a packers.Packing, got {type(packing).__name__}")
        if tuple(lengths) != packing.lengths:
            raise ValueError(
                f"packing does not match the prompts: it packs {packing.num_prompts} lengths "
                f"for {len(lengths)} prompts, or the lengths differ"
            )
    else:
        cap = _resolve_capacity(capacity, lengths)
        packer_obj = packers.make_packer(packer) if isinstance(packer, str) else packer
        if not hasattr(packer_obj, "pack"):
            raise ValueError(f"packer must be a registry name or have pack(); got {packer!r}")
        packing = packer_obj.pack(lengths, cap)
    if backend == "auto":  # the cheapest backend proven exact for this model
        attn = resolve_backend(auto_backend(model, device, dtype, lengths=lengths, packing=packing), device, dtype)
    if row_len == "capacity":
        row_len = packing.capacity
    if row_len is not None:
        row_len = packers.validate_capacity(row_len)
        if row_len < packing.max_load:
            raise ValueError(f"row_len {row_len} is shorter than the fullest bin ({packing.max_load} tokens)")
    if num_rows is not None:
        num_rows = packers.validate_capacity(num_rows)
    if memory_budget_bytes is not None:
        memory_budget_bytes = packers.validate_capacity(memory_budget_bytes)
    vocab = model.get_input_embeddings().num_embeddings
    if pad_token_id is None:
        pad_token_id = getattr(text_config(model.config), "pad_token_id", None)
        pad_token_id = pad_token_id if isinstance(pad_token_id, int) and 0 <= pad_token_id < vocab else 0
    elif not 0 <= int(pad_token_id) < vocab:
        raise ValueError(f"pad_token_id {pad_token_id} is outside the vocabulary [0, {vocab})")

    def estimate(rows: int, width: int, n: int) -> int:
        return estimate_forward_bytes(
            model.config, num_rows=rows, row_len=width, num_prompts=n,
            backend=attn.name, dtype=dtype, device=device, return_kv=return_kv,
        )  # fmt: skip

    plans = plan_forwards(
        packing, estimate, row_len=row_len, num_rows=num_rows, memory_budget_bytes=memory_budget_bytes
    )
    decoder = _decoder(model)
    logits: torch.Tensor | None = None
    kv = PromptKV(len(lengths)) if return_kv else None
    with torch.no_grad(), attention_implementation(model, attn.attn_implementation):
        for k, plan in enumerate(plans):
            if len(plan.bins) == packing.num_bins:  # one forward takes everything: nothing to renumber
                members, sub = list(range(packing.num_prompts)), packing
            else:
                members, sub = sub_packing(packing, plan.bins)
            try:
                part_logits = _run_forward(
                    model, decoder, attn, [prompts[g] for g in members], sub, plan,
                    pad_token_id=pad_token_id, device=device, members=members, kv=kv,
                )  # fmt: skip
            except _OUT_OF_MEMORY as exc:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                shown = members[:16]
                raise PrefillOutOfMemoryError(
                    f"out of memory in packed forward {k + 1}/{len(plans)}: {plan.num_rows} rows x "
                    f"{plan.row_len} tokens, bins {list(plan.bins)}, prompts {shown}"
                    f"{' ...' if len(members) > len(shown) else ''} (estimated {plan.estimated_bytes} bytes); "
                    "pass memory_budget_bytes to split it into smaller forwards, or lower the capacity"
                ) from exc
            if logits is None:
                logits = part_logits.new_empty(len(lengths), part_logits.shape[-1])
            logits[torch.as_tensor(members, device=logits.device)] = part_logits
    assert logits is not None  # plan_forwards returns at least one forward
    return PrefillResult(
        logits=logits,
        kv=kv,
        packing=packing,
        backend=attn.name,
        forwards=plans,
        config=model.config,
    )


def prefill_texts(
    model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], **options: Any
) -> PrefillResult:
    """Tokenize `texts` with `tokenizer` (special tokens as it adds them) and `prefill` them."""
    if isinstance(texts, str):
        raise ValueError("texts must be a list of strings, not one string")
    if len(texts) == 0:
        raise ValueError("texts is empty: nothing to prefill")
    ids = [tokenizer(t)["input_ids"] for t in texts]
    return prefill(model, ids, **options)
