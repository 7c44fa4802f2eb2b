"""The prepacked prefill: validate, pack, plan forwards under a memory budget, run each
packed forward, and hand back per-prompt next-token logits and KV caches.

`prefill(model, prompts, ...)` is the public entry point; `PrefillResult` carries the
results in the caller's prompt order; `gpu_runner.plan` decides the forwards (re-exported here). Every check on the input happens before any device
work; an out-of-memory inside a forward becomes `PrefillOutOfMemoryError` naming the batch.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

import packers
from gpu_runner.attention import AttentionBackend, resolve_backend
from gpu_runner.cache import PromptKV, cache_kwarg_name, cache_layers_kv, new_dynamic_cache, output_cache
from gpu_runner.inputs import pack_inputs
from gpu_runner.model_guard import inference_call
from gpu_runner.positions import PositionRule, forward_rule
from gpu_runner.plan import ForwardPlan, check_fits_device, estimate_forward_bytes, plan_forwards, text_config
from gpu_runner.result import OUT_OF_MEMORY, PrefillOutOfMemoryError, PrefillResult
from gpu_runner.support import auto_backend, local_window, require_backend
from gpu_runner.validate import validate_prompts
from gpu_runner.windows import WindowLayout, window_layout
from packers import Packing

__all__ = ["check_packing", "prefill", "prefill_texts", "project_logits", "sub_packing"]


def model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    raise ValueError(f"{type(model).__name__} has no floating-point parameters")


def resolve_capacity(capacity: int | str, lengths: Sequence[int]) -> int:
    longest = max(lengths)
    if capacity == "max":
        return longest
    value = packers.validate_capacity(capacity)
    if value < longest:
        raise ValueError(f"capacity {value} is below the longest prompt ({longest} tokens)")
    return value


def check_packing(packing: object, lengths: Sequence[int]) -> Packing:
    """A caller's ready `packing` for prompts of `lengths`, rebuilt through `Packing`'s own
    validation (so one built around it, e.g. with `object.__setattr__`, is caught) and
    checked to pack exactly these lengths; `ValueError` otherwise."""
    if not isinstance(packing, Packing):
        raise ValueError(f"packing must be a packers.Packing, got {type(packing).__name__}")
    try:
        rebuilt = Packing(
            lengths=packing.lengths, capacity=packing.capacity, bins=packing.bins,
            packer=packing.packer, meta=packing.meta,
        )  # fmt: skip
    except (ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"packing is not a valid Packing: {exc}") from None
    if tuple(lengths) != rebuilt.lengths:
        raise ValueError(
            f"packing does not match the prompts: it packs {rebuilt.num_prompts} lengths "
            f"for {len(lengths)} prompts, or the lengths differ"
        )
    return rebuilt


def _takes_input_ids(module: Any) -> bool:
    return isinstance(module, torch.nn.Module) and "input_ids" in inspect.signature(module.forward).parameters


def decoder_of(model: torch.nn.Module) -> torch.nn.Module:
    """The base model (token ids in, final hidden states out): `get_decoder()`, or `.model`
    where that is not one (ModernBERT-decoder's `get_decoder()` finds its output Linear)."""
    getter = getattr(model, "get_decoder", None)
    decoder = getter() if callable(getter) else None
    if decoder is None or decoder is model or not _takes_input_ids(decoder):
        decoder = getattr(model, "model", None)
    if decoder is None or not _takes_input_ids(decoder):
        raise ValueError(f"cannot find the base model of {type(model).__name__} (get_decoder / .model)")
    return decoder


def output_head(model: torch.nn.Module) -> torch.nn.Module:
    """The module that turns final hidden states into logits: the output embedding, or the
    child of the model that holds it when that child is a whole prediction head (BERT-style
    `cls`: dense + norm + decoder)."""
    out = model.get_output_embeddings()
    if out is None:
        raise ValueError(f"{type(model).__name__} has no output embedding (lm_head)")
    decoder = decoder_of(model)
    for child in model.children():
        if child is out or child is decoder:
            continue
        if any(m is out for m in child.modules()) and not any(m is decoder for m in child.modules()):
            return child
    # a prediction head (dense + norm) registered as its own child before the output
    # embedding, and nothing else beside the base model: ELECTRA, ModernBERT-decoder
    rest = [
        c for c in model.children()
        if not any(m is decoder for m in c.modules()) and any(True for _ in c.parameters())
    ]  # fmt: skip
    if len(rest) == 2 and rest[1] is out:
        return torch.nn.Sequential(rest[0], out)
    return out


def project_logits(model: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token logits [N, vocab] from final hidden states [N, hidden], as the model's head does.

    Applies the output head (`output_head`), then any logit scaling the config declares:
    `logit_scale` (multiply, Cohere), `logits_scaling` (divide, Granite),
    `final_logit_softcapping` (tanh cap, Gemma 2/3). Llama, Mistral, Qwen2 have none.
    """
    logits = output_head(model)(hidden)
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
    positions: PositionRule,
    windows: WindowLayout | None,
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
        positions=positions,
        windows=windows,
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
    positions: PositionRule | None = None,
) -> PrefillResult:
    """Prefill `prompts` through `model` in packed rows; one result per prompt, caller's order.

    model:    a transformers causal LM (Llama, Mistral, Qwen2, ... with `get_decoder()` /
              `.model` and an lm_head); for the call it runs in eval mode under the
              backend's attention implementation, holding the model's lock
              (`gpu_runner.model_guard`: concurrent calls on one model are serialized and
              exact), and both are restored after.
    prompts:  N token-id lists (or 1-D tensors), each non-empty.
    packer:   registry name (`packers.available_packers()`) or a packer object, run
              through `packers.checked_pack` (a result for other lengths or another
              capacity, or not a `Packing`, raises naming the packer); ignored when
              `packing` is given.
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
    positions: how each prompt's tokens are numbered (`gpu_runner.positions`); default
              the model's own forward on the prompt alone (`forward_rule`: 0, 1, ...; RoBERTa-
              style models padding_idx + 1, ...); `generate` passes `generate_rule`.
    Raises `support.UnsupportedModelError` (a ValueError) when the backend is not proven
    exact for this model ("auto" picks one that is, or raises it naming the paths that are),
    `ValueError` on bad input (see `validate_prompts`; unknown packer / backend,
    mismatched or invalid packing, bad capacity / row_len / num_rows, a forward estimated
    to need more memory than the device has free) before any device work, and
    `PrefillOutOfMemoryError` naming the forward if the device runs out of memory.
    """
    # prompts longer than a local window: `support` decides per path (windowed masks where proven)
    prompts, lengths = validate_prompts(model, prompts, local_attention=True)
    if positions is None:
        positions = forward_rule(model)  # UnsupportedModelError for a rule packing cannot reproduce
    device, dtype = model_device_dtype(model)
    if backend != "auto":
        attn = resolve_backend(backend, device, dtype)  # unknown / unavailable: fail before packing
        require_backend(model, backend, lengths=lengths)  # not proven exact: UnsupportedModelError
    if packing is not None:
        packing = check_packing(packing, lengths)
    else:
        cap = resolve_capacity(capacity, lengths)
        packer_obj = packers.make_packer(packer) if isinstance(packer, str) else packer
        if not hasattr(packer_obj, "pack"):
            raise ValueError(f"packer must be a registry name or have pack(); got {packer!r}")
        packing = packers.checked_pack(packer_obj, lengths, cap)  # a plug-in's result is checked
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
    check_fits_device(plans, device)  # row_len=10**5 and the like: refused before allocating
    decoder = decoder_of(model)
    config = text_config(model.config)
    window = local_window(config)
    windows = window_layout(config) if window is not None and max(lengths) > window else None
    logits: torch.Tensor | None = None
    kv = PromptKV(len(lengths)) if return_kv else None
    with inference_call(model, attn.attn_implementation):  # the model to itself, eval mode
        for k, plan in enumerate(plans):
            if len(plan.bins) == packing.num_bins:  # one forward takes everything: nothing to renumber
                members, sub = list(range(packing.num_prompts)), packing
            else:
                members, sub = sub_packing(packing, plan.bins)
            try:
                part_logits = _run_forward(
                    model, decoder, attn, [prompts[g] for g in members], sub, plan,
                    pad_token_id=pad_token_id, device=device, members=members, kv=kv, positions=positions,
                    windows=windows,
                )  # fmt: skip
            except OUT_OF_MEMORY as exc:
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
