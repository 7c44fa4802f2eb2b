"""Batch generation end to end: packed prefill, a CUDA-graph decode loop, continuous refill.

This module owns the generation loop (`BatchGenerator.generate`). Between two decode steps
the refill policy (`gpu_runner.schedule`) may pick waiting prompts; they are prefilled
together in ONE packed prefill through `PrefillEngine` (one flat varlen row), their K/V are
copied from the engine's buffer (views valid until its next call) into pages of the pool
(`kv_pages.PagedKVCache`: one index_copy for every layer and token), their first tokens are
sampled from the prefill's logits, and they join the decode batch (`decode.DecodeStep`, one
token per live sequence per step). A sequence ends at a stop token (EOS or `stop_token_ids`,
included in its output) or after its own `max_new_tokens`; its pages and slot are freed at
once for the queue. Every sequence is admitted with the pages it can ever need, so memory
never runs out mid-generation: over budget, prompts wait in the queue instead.

Exactness: greedy tokens equal HF `model.generate` on each prompt alone (fp32, tests); the
host learns each step's tokens with one small device-to-host copy (that is the sync point
that stop tokens and refills need).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import islice

import numpy as np
import torch

from gpu_runner.engine.decode import DecodeStep
from gpu_runner.engine import PrefillEngine
from gpu_runner.engine.kv_pages import GenerateOutOfMemoryError, KVLayout, PagedKVCache
from gpu_runner.validate import validate_prompts
from gpu_runner.engine.sampling import SamplingParams, sample
from gpu_runner.schedule import RefillPolicy, make_policy

__all__ = ["BatchGenerator", "GenerationOutput", "GenerationStats", "default_kv_budget_bytes", "per_prompt_new_tokens"]

_CPU_KV_BUDGET_BYTES = 256 * 2**20


@dataclass(frozen=True)
class GenerationStats:
    """What one `generate` call did. first_token_s[i]: seconds from the call's start until
    prompt i's first token was on the host (nan for max_new_tokens 0); decode_rows: live rows
    summed over decode steps (token-steps), padded_rows: bucket rows summed likewise."""

    policy: str
    decode_steps: int
    prefills: int
    prefill_tokens: int
    decode_rows: int
    padded_rows: int
    max_live: int
    wall_s: float
    first_token_s: tuple[float, ...] = field(repr=False)


@dataclass(frozen=True)
class GenerationOutput:
    """New tokens per prompt (caller's order; a stop token ends a list and is included)."""

    tokens: list[list[int]]
    stats: GenerationStats


@dataclass
class _Seq:
    index: int
    slot: int
    pos: int  # where the next fed token goes (= cache length before it)
    last: int


def default_kv_budget_bytes(engine: PrefillEngine, *, max_batch: int, prefill_tokens: int) -> int:
    """KV bytes left after everything else a generation allocates: on CUDA 90% of the free
    memory minus 1 GiB, minus the prefill's activations (prefill_tokens x (6 hidden +
    4 intermediate) elements) and the decode step's logits and sampling buffers
    (max_batch x vocab x 16 bytes); on CPU a fixed 256 MiB."""
    if engine.device.type != "cuda":
        return _CPU_KV_BUDGET_BYTES
    cfg = engine.model.config
    free, _ = torch.cuda.mem_get_info(engine.device)
    elem = engine.embed.element_size()
    activations = prefill_tokens * (6 * cfg.hidden_size + 4 * cfg.intermediate_size) * elem
    logits = max_batch * engine.vocab_size * 16
    return int(0.9 * free) - 2**30 - activations - logits


class BatchGenerator:
    """Generation over a Llama-family HF model through the prefill engine and the decode loop.

    Raises ValueError (from `PrefillEngine`) for a model the engine does not support.
    max_batch: most sequences decoding at once (the largest CUDA-graph bucket);
    page_tokens: tokens per KV page; kv_budget_bytes: the KV pool's size (default
    `default_kv_budget_bytes`); prefill_tokens: the engine's pre-sized row (the default
    policies' token budget); token_bucket, cuda_graphs: as for `PrefillEngine` (graphs for
    the decode buckets too); engine: an existing `PrefillEngine` of `model` to reuse (its
    own token_bucket and cuda_graphs then apply).
    """

    def __init__(self, model: torch.nn.Module, *, max_batch: int = 256, page_tokens: int = 64,
                 kv_budget_bytes: int | None = None, prefill_tokens: int = 8192, token_bucket: int = 128,
                 cuda_graphs: bool = True, engine: PrefillEngine | None = None) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be a positive int, got {max_batch!r}")
        if isinstance(prefill_tokens, bool) or not isinstance(prefill_tokens, int) or prefill_tokens < 1:
            raise ValueError(f"prefill_tokens must be a positive int, got {prefill_tokens!r}")
        if engine is None:
            engine = PrefillEngine(model, token_bucket=token_bucket, cuda_graphs=cuda_graphs, max_tokens=prefill_tokens)
        elif engine.model is not model:
            raise ValueError("engine was built for another model")
        self.engine = eng = engine
        self.layout = KVLayout(len(eng.layers), eng.num_kv_heads, eng.head_dim, eng.embed.element_size(), page_tokens)
        if kv_budget_bytes is None:
            kv_budget_bytes = default_kv_budget_bytes(eng, max_batch=max_batch, prefill_tokens=prefill_tokens)
        max_pages = self.layout.pages_for(eng.max_positions)
        num_pages = min(int(kv_budget_bytes) // self.layout.page_bytes, max_batch * max_pages)
        if num_pages < 1:
            raise GenerateOutOfMemoryError(
                f"the KV budget of {kv_budget_bytes} bytes holds no page of {self.layout.page_tokens} tokens "
                f"({self.layout.page_bytes} bytes): free device memory or pass a larger kv_budget_bytes")
        self.cache = PagedKVCache(self.layout, num_pages=num_pages, max_seqs=max_batch, max_pages=max_pages,
                                  device=eng.device, dtype=eng.dtype)
        self.step = DecodeStep(eng, self.cache, cuda_graphs=eng.cuda_graphs)
        self.prefill_tokens = prefill_tokens

    # ------------------------------------------------------------------ validation

    def _validate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int],
                  stop_token_ids: Iterable[int]) -> tuple[list[list[int]], list[int], set[int]]:
        eng = self.engine
        lists, _ = validate_prompts(eng.model, prompts)  # the library's checks and messages
        news = per_prompt_new_tokens(max_new_tokens, len(lists))
        stops = set()
        for t in stop_token_ids:
            if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < eng.vocab_size:
                raise ValueError(f"stop token id {t!r} is not a token id in [0, {eng.vocab_size})")
            stops.add(int(t))
        for i, (p, n) in enumerate(zip(lists, news)):
            if n == 0:
                continue
            tokens = len(p) + n - 1  # the last new token is never fed back
            if tokens > eng.max_positions:
                raise ValueError(f"prompt {i}: {len(p)} tokens + {n} new exceed the model's context of {eng.max_positions}")
            if eng.sliding_window and tokens > eng.sliding_window:
                raise ValueError(f"prompt {i}: {tokens} cached tokens exceed the sliding window ({eng.sliding_window})")
            if self.layout.pages_for(tokens) > self.cache.num_pages:
                raise ValueError(
                    f"prompt {i}: {tokens} cached tokens ({self.layout.pages_for(tokens) * self.layout.page_bytes} bytes) "
                    f"exceed the whole KV page pool ({self.cache.num_pages * self.layout.page_bytes} bytes): "
                    f"pass a larger kv_budget_bytes")
        return lists, news, stops

    # ------------------------------------------------------------------ the loop

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int | Sequence[int], *,
                 sampling: SamplingParams | None = None, stop_token_ids: Iterable[int] = (),
                 policy: RefillPolicy | None = None) -> GenerationOutput:
        """New tokens for every prompt (caller's order). max_new_tokens: an int >= 0 or one per
        prompt; sampling: greedy when None; stop_token_ids: tokens that end a sequence (kept
        in its output); policy: the refill schedule (default `make_policy()` with
        token_budget = prefill_tokens).
        ValueError for bad input before any device work; GenerateOutOfMemoryError naming the
        buffer that did not fit."""
        prompts, news, stops = self._validate(prompts, max_new_tokens, stop_token_ids)
        sampling = sampling or SamplingParams()
        if policy is None:
            policy = make_policy(token_budget=self.prefill_tokens)
        t0 = time.perf_counter()
        run = _Run(self, prompts, news, stops, sampling, t0)
        queue = deque(i for i, n in enumerate(news) if n > 0)
        try:
            while queue or run.live:
                if queue and self.cache.free_slots:
                    self._refill(run, queue, policy)
                if run.live:
                    run.decode()
        finally:  # an error mid-run (out of memory, a policy's bad choice) leaves no slot taken
            for seq in run.live:
                self.cache.release(seq.slot)
        stats = GenerationStats(policy=policy.name, decode_steps=run.steps, prefills=run.prefills,
                                prefill_tokens=run.prefill_tokens, decode_rows=run.rows, padded_rows=run.padded,
                                max_live=run.max_live, wall_s=time.perf_counter() - t0,
                                first_token_s=tuple(run.first_s))
        return GenerationOutput(tokens=run.out, stats=stats)

    def _refill(self, run: _Run, queue: deque, policy: RefillPolicy) -> None:
        window = list(islice(queue, self.cache.free_slots))
        lengths = [len(run.prompts[i]) for i in window]
        pages = [self.layout.pages_for(len(run.prompts[i]) + run.news[i] - 1) for i in window]
        chosen = policy.select(live=len(run.live), waiting=len(queue), free_slots=self.cache.free_slots, free_pages=self.cache.free_pages,
                               prompt_tokens=lengths, kv_pages=pages)
        if not chosen:
            if not run.live:
                raise RuntimeError(f"refill policy {policy.name!r} selected nothing while no sequence is live")
            return
        if sorted(set(chosen)) != list(chosen) or chosen[-1] >= len(window) or sum(pages[j] for j in chosen) > self.cache.free_pages:
            raise RuntimeError(f"refill policy {policy.name!r} selected {chosen}: not ascending queue positions that fit")
        picked = [window[j] for j in chosen]
        taken = set(chosen)
        for _ in window:
            queue.popleft()
        queue.extendleft(reversed([i for j, i in enumerate(window) if j not in taken]))
        run.prefill(picked)


class _Run:
    """The state of one `generate` call: outputs, live sequences, counters."""

    def __init__(self, gen: BatchGenerator, prompts: list[list[int]], news: list[int], stops: set[int],
                 sampling: SamplingParams, t0: float) -> None:
        self.gen, self.prompts, self.news, self.stops, self.sampling, self.t0 = gen, prompts, news, stops, sampling, t0
        self.generator = sampling.generator(gen.engine.device)
        self.out: list[list[int]] = [[] for _ in prompts]
        self.first_s = [math.nan] * len(prompts)
        self.live: list[_Seq] = []
        self.steps = self.prefills = self.prefill_tokens = self.rows = self.padded = self.max_live = 0

    def _emit(self, seq: _Seq, token: int) -> bool:
        """Append a token; True when the sequence is finished (its slot is then released)."""
        out = self.out[seq.index]
        out.append(token)
        seq.last = token
        if token in self.stops or len(out) >= self.news[seq.index]:
            self.gen.cache.release(seq.slot)
            return True
        return False

    def prefill(self, picked: list[int]) -> None:
        gen = self.gen
        cache, eng = gen.cache, gen.engine
        batch = [self.prompts[i] for i in picked]
        try:
            res = eng.prefill(batch)
        except torch.OutOfMemoryError as exc:
            raise GenerateOutOfMemoryError(
                f"the packed prefill of {len(batch)} prompts ({sum(map(len, batch))} tokens) did not fit in device "
                f"memory next to the KV page pool: pass a smaller kv_budget_bytes or token_budget") from exc
        slots = [cache.admit(len(p) + self.news[i] - 1) for i, p in zip(picked, batch)]
        dest = np.concatenate([cache.token_index(s, np.arange(len(p))) for s, p in zip(slots, batch)])
        total = int(res.cu_seqlens[-1])
        flat = cache.pool.view(cache.pool.shape[0], 2, -1, *cache.pool.shape[4:])
        flat.index_copy_(2, torch.from_numpy(dest).to(eng.device), res.kv[:, :, :total])
        tokens = sample(res.logits, self.sampling, self.generator).tolist()
        now = time.perf_counter() - self.t0
        self.prefills += 1
        self.prefill_tokens += total
        for i, slot, p, tok in zip(picked, slots, batch, tokens):
            self.first_s[i] = now
            seq = _Seq(index=i, slot=slot, pos=len(p), last=tok)
            if not self._emit(seq, tok):
                self.live.append(seq)
        self.max_live = max(self.max_live, len(self.live))

    def decode(self) -> None:
        live = self.live
        logits = self.gen.step.run([s.last for s in live], [s.pos for s in live], [s.slot for s in live])
        tokens = sample(logits, self.sampling, self.generator).tolist()
        self.steps += 1
        self.rows += len(live)
        self.padded += self.gen.step.bucket(len(live))
        still = []
        for seq, tok in zip(live, tokens):
            seq.pos += 1
            if not self._emit(seq, tok):
                still.append(seq)
        self.live = still


def per_prompt_new_tokens(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    """max_new_tokens as one int >= 0 per prompt; ValueError otherwise."""
    def ok(v: object) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 0

    if ok(max_new_tokens):
        return [int(max_new_tokens)] * n
    if isinstance(max_new_tokens, (str, bytes)) or not isinstance(max_new_tokens, Sequence):
        raise ValueError(f"max_new_tokens must be an int >= 0 or a list of them, got {max_new_tokens!r}")
    if len(max_new_tokens) != n:
        raise ValueError(f"max_new_tokens has {len(max_new_tokens)} entries for {n} prompts")
    for i, v in enumerate(max_new_tokens):
        if not ok(v):
            raise ValueError(f"max_new_tokens[{i}] must be an int >= 0, got {v!r}")
    return [int(v) for v in max_new_tokens]
