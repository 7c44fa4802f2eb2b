"""The prefill methods the benchmark puts side by side, each behind one small interface.

This module owns what each method name means (so the benchmark code has no if/elif chain):
  padded  HF's default: one forward over the batch left-padded to its longest prompt,
          2D attention mask, sdpa, full logits and a DynamicCache (what `model(...)` does)
  sorted  the batch sorted by length and cut into micro-batches of `sorted_chunk` prompts,
          each left-padded to its own longest prompt (one HF forward each)
  paper   the paper's method: FFD at capacity = longest prompt, packed rows, restarted
          positions, dense 4D block-diagonal causal mask, sdpa, HF forward as-is
  best    `PrefillEngine`: one flat varlen row per batch, bucketed static shapes, CUDA graphs,
          fused QKV / gate-up matmuls, Triton elementwise kernels, last-token lm_head
  hf-cb   HF's continuous batching, `model.generate_batch(..., max_new_tokens=1)`

Every method has `prefill(prompts)` (device work queued, outputs returned so they stay alive
for the call) and `first_tokens(prompts)` (prefill + greedy first token on the host: TTFT).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from simulator.names import AUTO, BEST, HF_CB, PADDED, PAPER, SORTED

__all__ = ["METHOD_NAMES", "BenchMethod", "make_method", "register_method"]

Prompts = Sequence[Sequence[int]]
MethodFactory = Callable[..., "BenchMethod"]
_FACTORIES: dict[str, MethodFactory] = {}


def register_method(name: str) -> Callable[[MethodFactory], MethodFactory]:
    """Decorator: register `factory(model, **options) -> BenchMethod` under `name`."""

    def add(factory: MethodFactory) -> MethodFactory:
        if name in _FACTORIES:
            raise ValueError(f"bench method {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return add


class BenchMethod(Protocol):
    """A prefill method under test. `prefill` returns whatever keeps its outputs alive;
    `first_tokens` returns each prompt's greedy next token (caller's order) on the host."""

    name: str

    def prefill(self, prompts: Prompts) -> Any: ...

    def first_tokens(self, prompts: Prompts) -> list[int]: ...


def _left_padded(prompts: Prompts, pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = [len(p) for p in prompts]
    width = max(lengths)
    ids = np.full((len(prompts), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for i, p in enumerate(prompts):  # loop over prompts, not tokens
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


class PaddedHF:
    """`padded` (chunk=None, sort=False) and `sorted` (sort=True, chunk=micro-batch size)."""

    def __init__(self, model: torch.nn.Module, *, name: str, sort: bool, chunk: int | None, pad_id: int = 0) -> None:
        self.model, self.name, self.sort, self.chunk, self.pad_id = model, name, sort, chunk, pad_id
        self.device = model.lm_head.weight.device
        self.oom_splits = 0

    def _groups(self, prompts: Prompts) -> list[list[int]]:
        order = list(range(len(prompts)))
        if self.sort:
            order.sort(key=lambda i: -len(prompts[i]))
        size = self.chunk or len(order)
        return [order[i : i + size] for i in range(0, len(order), size)]

    @torch.no_grad()
    def prefill(self, prompts: Prompts) -> Any:
        outs: list[Any] = []
        for group in self._groups(prompts):
            self._forward([prompts[i] for i in group], outs)
        return outs

    def _forward(self, prompts: Prompts, outs: list[Any]) -> None:
        """One HF forward; on out-of-memory, free and run the two halves (counted in oom_splits),
        as a user would: the padded baseline then stays measurable instead of failing. Outputs
        already in `outs` (earlier halves) are kept; the halves run outside the exception
        handler, so the failed forward's frames and activations are released first."""
        ids = mask = pos = None
        try:
            ids, mask = _left_padded(prompts, self.pad_id, self.device)
            pos = (mask.cumsum(-1) - 1).clamp_(min=0)
            outs.append(self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True))
            return
        except torch.OutOfMemoryError:
            if len(prompts) == 1:
                raise
        ids = mask = pos = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.oom_splits += 1
        half = len(prompts) // 2
        self._forward(prompts[:half], outs)
        self._forward(prompts[half:], outs)

    def first_tokens(self, prompts: Prompts) -> list[int]:
        tokens = [0] * len(prompts)
        for group in self._groups(prompts):
            ids, mask = _left_padded([prompts[i] for i in group], self.pad_id, self.device)
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=1, do_sample=False, pad_token_id=self.pad_id
            )
            for i, tok in zip(group, out[:, -1].tolist()):
                tokens[i] = tok
        return tokens


class PaperPacked:
    """`paper`: FFD at capacity = longest prompt, dense 4D mask, sdpa, full logits (as the paper)."""

    name = "paper"

    def __init__(self, model: torch.nn.Module, *, packer: str = "ffd", pad_id: int = 0) -> None:
        import packers

        self.model, self.pad_id = model, pad_id
        self.packer = packers.make_packer(packer)
        self.device = model.lm_head.weight.device

    @torch.no_grad()
    def prefill(self, prompts: Prompts) -> Any:
        from gpu_runner.inputs import pack_inputs
        from gpu_runner.attention.masks import dense_block_causal_mask

        lengths = [len(p) for p in prompts]
        packing = self.packer.pack(lengths, max(lengths))
        inp = pack_inputs(prompts, packing, pad_token_id=self.pad_id, device=self.device)
        mask = dense_block_causal_mask(inp.segment_ids)
        out = self.model(input_ids=inp.input_ids, position_ids=inp.position_ids, attention_mask=mask, use_cache=True)
        return out, inp

    @torch.no_grad()
    def first_tokens(self, prompts: Prompts) -> list[int]:
        out, inp = self.prefill(prompts)
        logits = out.logits.reshape(-1, out.logits.shape[-1]).index_select(0, inp.last_index)
        return logits.argmax(-1).tolist()


class BestEngine:
    """`best`: the `PrefillEngine` (flat varlen row, token buckets, CUDA graphs)."""

    name = "best"

    def __init__(self, model: torch.nn.Module, *, token_bucket: int = 128, cuda_graphs: bool = True, q_chunk: int = 128,
                 attention: str = "auto", max_tokens: int = 0) -> None:
        from gpu_runner.engine import PrefillEngine

        self.engine = PrefillEngine(model, token_bucket=token_bucket, cuda_graphs=cuda_graphs, q_chunk=q_chunk,
                                    attention=attention, max_tokens=max_tokens)

    def prefill(self, prompts: Prompts) -> Any:
        return self.engine.prefill(prompts)

    def first_tokens(self, prompts: Prompts) -> list[int]:
        return self.engine.prefill(prompts).logits.argmax(-1).tolist()


class HFContinuousBatching:
    """`hf-cb`: `model.generate_batch` with one new token (its prefill is the whole cost)."""

    name = "hf-cb"

    def __init__(self, model: torch.nn.Module, *, pad_id: int = 0) -> None:
        from transformers import GenerationConfig

        if not hasattr(model, "generate_batch"):
            raise RuntimeError("this transformers has no generate_batch (continuous batching)")
        self.model = model
        self.config = GenerationConfig(max_new_tokens=1, do_sample=False, pad_token_id=pad_id, eos_token_id=None)
        params = inspect.signature(model.generate_batch).parameters
        self.kwargs = {"progress_bar": False} if "progress_bar" in params else {}

    def prefill(self, prompts: Prompts) -> Any:
        return self.first_tokens(prompts)

    def first_tokens(self, prompts: Prompts) -> list[int]:
        with torch.no_grad():
            out = self.model.generate_batch(inputs=[list(p) for p in prompts], generation_config=self.config, **self.kwargs)
        values = list(out.values())
        by_prompt = {tuple(v.prompt_ids): v.generated_tokens[0] for v in values}
        return [by_prompt.get(tuple(p), -1) for p in prompts]


@register_method(PADDED)
def _padded(model: torch.nn.Module, **options: Any) -> BenchMethod:
    return PaddedHF(model, name=PADDED, sort=False, chunk=None)


@register_method(SORTED)
def _sorted(model: torch.nn.Module, **options: Any) -> BenchMethod:
    return PaddedHF(model, name=SORTED, sort=True, chunk=options.get("sorted_chunk", 16))


@register_method(PAPER)
def _paper(model: torch.nn.Module, **options: Any) -> BenchMethod:
    return PaperPacked(model)


@register_method(BEST)
def _best(model: torch.nn.Module, **options: Any) -> BenchMethod:
    return BestEngine(model, token_bucket=options.get("token_bucket", 128), cuda_graphs=options.get("cuda_graphs", True),
                      q_chunk=options.get("q_chunk", 128), attention=options.get("attention", AUTO),
                      max_tokens=options.get("max_tokens", 0))


@register_method(HF_CB)
def _hf_cb(model: torch.nn.Module, **options: Any) -> BenchMethod:
    return HFContinuousBatching(model)


METHOD_NAMES: tuple[str, ...] = tuple(_FACTORIES)


def make_method(name: str, model: torch.nn.Module, **options: Any) -> BenchMethod:
    """Build method `name` (one of METHOD_NAMES) on `model`; options: sorted_chunk, token_bucket,
    cuda_graphs, q_chunk, attention, max_tokens (others are ignored)."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES)}") from None
    return factory(model, **options)
