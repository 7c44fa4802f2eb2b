"""End-to-end generation: how long a set of requests (prompt length, output length) takes from
the first prefill to the last token with one generation method, and when each request gets
its first token. Offline batch inference: every request is there at t = 0.

Methods (one registry, `GENERATION_METHODS`; each a frozen dataclass of its knobs whose
`run(requests, hardware)` returns a `GenerationRun`):

  hf-padded      HF `model.generate` on static batches of `batch_size` consecutive requests,
                 left-padded to the batch's longest prompt, decoding until its longest output
                 (finished rows stay in the batch); padded prefill priced by `CostModel`
                 ('padded'), decode by the 'hf-eager' loop over the padded cache.
  prepack-hf     today's `gpu_runner.generate`: the same static batches, but every prompt minus
                 its last token is prefilled in packed rows (ffd, dense, eager), then HF's
                 eager `generate` continues from the left-padded cache (its first step feeds
                 the last prompt token).
  hf-continuous  HF `generate_batch`: continuous batching over a paged cache, FIFO, a prompt is
                 admitted as soon as its KV fits; admitted prompts are prefilled as one ragged
                 batch (eager varlen cost) under `prefill_token_budget`; decode by 'hf-paged'.
  engine         our prefill engine + CUDA-graph decode loop: up to `max_batch_size` slots and a
                 KV memory budget; a schedule policy (simulator.schedule) decides when freed
                 slots are refilled; refills are one packed prefill (flat varlen, the engine's
                 calibrated prefill constants) under `prefill_token_budget`.

KV memory: a continuous method reserves prompt + max_new_tokens (or the request's own output
length when there is no cap) of KV per admitted request, so nothing is ever evicted; the budget
is memory_budget_bytes - weights - the activations of one prefill at the token budget. A
request whose reservation exceeds the whole budget is not run: `fits` is False and `note`
says which. Static methods hold the whole padded cache of a batch; over the budget `fits` is
False (the time is still given, as if it fitted).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import packers as packers_lib
from simulator.attention import make_attention
from simulator.cost import CostModel, activation_bytes_per_token, kv_cache_bytes
from simulator.decode import ENGINE_PREFILL, DecodeCostModel, DecodeMethod
from simulator.gpus import GPUSpec, get_gpu
from simulator.run import flat_packing
from simulator.schedule import SchedulePolicy, make_policy
from simulator.specs import ModelSpec, get_model

__all__ = [
    "GENERATION_METHODS",
    "Engine",
    "GenerationRun",
    "Hardware",
    "HFContinuous",
    "HFPadded",
    "PrepackHF",
    "Requests",
    "engine_prefill_model",
]

MAX_OUTPUT_TOKENS = 1 << 20  # per request: beyond this the step-by-step simulation is refused


def _int_array(values: Any, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer) or (arr < 1).any():
        raise ValueError(f"{what} must be a non-empty 1-D list of positive integers")
    return arr.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Requests:
    """prompt_tokens[i], output_tokens[i]: request i's prompt length and the tokens it generates
    (the first one comes from the prefill). max_new_tokens: the cap the loop was given (what a
    continuous method reserves KV for), None when the outputs are uncapped."""

    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    max_new_tokens: int | None = None

    def __post_init__(self) -> None:
        p = _int_array(self.prompt_tokens, "prompt lengths")
        o = _int_array(self.output_tokens, "output lengths")
        if p.size != o.size:
            raise ValueError(f"{p.size} prompt lengths but {o.size} output lengths")
        if int(o.max()) > MAX_OUTPUT_TOKENS:
            raise ValueError(f"an output length of {int(o.max())} tokens is over the {MAX_OUTPUT_TOKENS} simulated; cap it")
        cap = self.max_new_tokens
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 1 <= cap <= MAX_OUTPUT_TOKENS):
            raise ValueError(f"max_new_tokens must be an integer in [1, {MAX_OUTPUT_TOKENS}], got {cap!r}")
        if cap is not None and int(o.max()) > cap:
            raise ValueError(f"an output length {int(o.max())} is over max_new_tokens {cap}")
        object.__setattr__(self, "prompt_tokens", p)
        object.__setattr__(self, "output_tokens", o)

    @property
    def size(self) -> int:
        return int(self.prompt_tokens.size)

    def reserve_tokens(self) -> np.ndarray:
        """KV tokens a continuous loop reserves per request: prompt + (cap or own output)."""
        cap = self.output_tokens if self.max_new_tokens is None else self.max_new_tokens
        return self.prompt_tokens + cap


@dataclass(frozen=True)
class Hardware:
    """Model, GPU (names or specs) and the memory budget (default: the GPU's memory)."""

    model: ModelSpec | str
    gpu: GPUSpec | str
    memory_budget_bytes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", get_model(self.model))
        object.__setattr__(self, "gpu", get_gpu(self.gpu))
        budget = self.gpu.memory_bytes if self.memory_budget_bytes is None else self.memory_budget_bytes
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget <= 0:
            raise ValueError(f"memory_budget_bytes must be a positive integer, got {budget!r}")
        object.__setattr__(self, "memory_budget_bytes", int(budget))

    def cost_model(self, attention: Any, **options: Any) -> CostModel:
        """The prefill cost model of this model on this GPU at the memory budget; `attention`
        a name or an attention model, `options` CostModel's keyword settings."""
        return CostModel(self.model, self.gpu, attention, self.memory_budget_bytes, **options)

    def decode_model(self, method: DecodeMethod | str) -> DecodeCostModel:
        """The decode cost model of this model on this GPU for decode `method`."""
        return DecodeCostModel(self.model, self.gpu, method)

    def kv_budget_tokens(self, prefill_token_budget: int) -> int:
        """KV tokens that fit next to the weights and one prefill's activations at the budget."""
        m = self.model
        reserve = activation_bytes_per_token(m) * prefill_token_budget + 4 * m.vocab_size * prefill_token_budget
        return max(0, (self.memory_budget_bytes - m.weight_bytes - reserve) // m.kv_bytes_per_token)


@dataclass(frozen=True, eq=False)
class GenerationRun:
    """What one method predicts: total seconds (prefill_s + decode_s + overheads), output
    tokens, TTFT per request (seconds from t = 0; NaN for requests not run), decode steps,
    prefill forwards, peak live sequences, peak KV bytes, whether it fits and why not."""

    method: str
    policy: str
    total_s: float
    prefill_s: float
    decode_s: float
    output_tokens: int
    ttft_s: np.ndarray = field(repr=False)
    decode_steps: int
    prefills: int
    peak_live: int
    peak_kv_bytes: int
    fits: bool = True
    note: str = ""
    finish_s: np.ndarray | None = field(default=None, repr=False)  # when each request's last token exists (NaN: not run)

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.total_s if self.total_s > 0 else 0.0

    def ttft_percentile_s(self, q: float) -> float:
        ran = self.ttft_s[np.isfinite(self.ttft_s)]
        return float(np.percentile(ran, q)) if ran.size else float("nan")

    def finished_by(self, t: float) -> int:
        """Requests whose last token exists by `t` seconds (what a run cut at `t` hands back)."""
        if self.finish_s is None:
            raise ValueError(f"{self.method} records no finish times")
        return int(np.sum(self.finish_s <= t))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; a TTFT percentile is None when no request ran."""
        nan_to_none = lambda x: None if x != x else x  # noqa: E731
        return {
            "method": self.method, "policy": self.policy, "total_s": self.total_s, "tokens_per_s": self.tokens_per_s,
            "ttft_p50_s": nan_to_none(self.ttft_percentile_s(50)), "ttft_p90_s": nan_to_none(self.ttft_percentile_s(90)),
            "ttft_p99_s": nan_to_none(self.ttft_percentile_s(99)), "prefill_s": self.prefill_s, "decode_s": self.decode_s,
            "output_tokens": self.output_tokens, "decode_steps": self.decode_steps, "prefills": self.prefills,
            "peak_live": self.peak_live, "peak_kv_bytes": self.peak_kv_bytes, "fits": self.fits, "note": self.note,
        }  # fmt: skip


def _positive(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


# -- static batches (HF generate) ------------------------------------------------------------
def _static(
    name: str, requests: Requests, hw: Hardware, batch_size: int, prefill: Callable[[np.ndarray], Any], packed: bool,
    decode_method: DecodeMethod | str,
) -> GenerationRun:
    """Consecutive batches run one after another; see HFPadded / PrepackHF for `packed`."""
    m = hw.model
    decode = hw.decode_model(decode_method)
    p_all, o_all = requests.prompt_tokens, requests.output_tokens
    ttft = np.full(requests.size, np.nan)
    finish = np.full(requests.size, np.nan)
    t = pre_total = dec_total = 0.0
    steps_total = peak_kv = prefills = 0
    fits = True
    for start in range(0, requests.size, batch_size):
        p, o = p_all[start : start + batch_size], o_all[start : start + batch_size]
        b, width, longest = p.size, int(p.max()), int(o.max())
        cost = prefill(p - 1 if packed else p)
        t += decode.method.call_overhead_s
        pre_s = cost.est_time_s if cost is not None else 0.0
        # padded: prefill gives token 1, then longest - 1 steps over B * (width + j - 1) cache tokens;
        # packed: the cache holds width - 1 tokens and the first of `longest` steps feeds the last prompt token
        steps = longest if packed else longest - 1
        kv_first = b * (width - 1 if packed else width)
        step_s = decode.step_time_s(b, kv_first + b * np.arange(steps, dtype=np.float64)) if steps else np.zeros(0)
        ttft[start : start + b] = t + pre_s + (step_s[0] if packed else 0.0)
        t += pre_s + float(step_s.sum())
        finish[start : start + b] = t  # HF's generate hands a batch back at its end
        pre_total, dec_total = pre_total + pre_s, dec_total + float(step_s.sum())
        steps_total, prefills = steps_total + steps, prefills + (cost is not None)
        kv_bytes = int(kv_cache_bytes(m, b * (width + longest)))
        peak_kv = max(peak_kv, kv_bytes)
        fits = fits and (cost is None or cost.fits) and m.weight_bytes + kv_bytes <= hw.memory_budget_bytes
    note = "" if fits else "a batch's padded KV cache or prefill does not fit the memory budget"
    return GenerationRun(
        name, "static", t, pre_total, dec_total, int(o_all.sum()), ttft, steps_total, prefills,
        min(batch_size, requests.size), peak_kv, fits, note, finish,
    )  # fmt: skip


@dataclass(frozen=True)
class _StaticBatches:
    """HF generate on consecutive static batches (`_static`); a subclass prices the prefill."""

    name = ""
    packed = False  # the prefill is packed (prepack) rather than padded
    batch_size: int = 64
    decode: DecodeMethod | str = "hf-eager"

    def prefill_price(self, hw: Hardware) -> Callable[[np.ndarray], Any]:
        raise NotImplementedError

    def run(self, requests: Requests, hw: Hardware) -> GenerationRun:
        batch_size = _positive(self.batch_size, "batch size")
        return _static(self.name, requests, hw, batch_size, self.prefill_price(hw), self.packed, self.decode)


@dataclass(frozen=True)
class HFPadded(_StaticBatches):
    name = "hf-padded"

    def prefill_price(self, hw: Hardware) -> Callable[[np.ndarray], Any]:
        cm = hw.cost_model("padded")
        pad = packers_lib.make_packer("pad")
        return lambda p: cm.cost(pad.pack(p, int(p.max())))


@dataclass(frozen=True)
class PrepackHF(_StaticBatches):
    name = "prepack-hf"
    packed = True

    def prefill_price(self, hw: Hardware) -> Callable[[np.ndarray], Any]:
        cm = hw.cost_model("dense")
        ffd = packers_lib.make_packer("ffd")

        def price(p: np.ndarray) -> Any:
            p = p[p > 0]  # one-token prompts have nothing to prefill
            return cm.cost(ffd.pack(p, int(p.max()))) if p.size else None

        return price


# -- continuous batching ----------------------------------------------------------------------
def _continuous(
    name: str,
    policy: SchedulePolicy,
    requests: Requests,
    hw: Hardware,
    *,
    decode: DecodeCostModel,
    prefill_s: Callable[[np.ndarray], float],
    max_batch_size: int,
    prefill_token_budget: int,
) -> GenerationRun:
    """Iterations of [one refill prefill if the policy asks and something fits] + [decode
    steps of every live sequence]; decode runs in segments up to the next finish (or one step
    when more prompts could be admitted at once), so the cost is per event, not per step."""
    p, o = requests.prompt_tokens, requests.output_tokens
    reserve = requests.reserve_tokens()
    budget = hw.kv_budget_tokens(prefill_token_budget)
    unfit = np.flatnonzero(reserve > budget)
    waiting = deque(int(i) for i in np.flatnonzero(reserve <= budget))
    ttft = np.full(requests.size, np.nan)
    finish = np.full(requests.size, np.nan)
    heap: list[tuple[int, int]] = []  # (decode step count at which it finishes, request)
    t, k = decode.method.call_overhead_s, 0
    live = reserved = cache_tokens = prefills = peak_live = peak_reserved = 0
    pre_total = dec_total = 0.0

    def admissible(pending: int = 0) -> bool:
        return bool(waiting) and live + pending < max_batch_size and reserved + reserve[waiting[0]] <= budget

    def wants_refill() -> bool:
        """Ask the policy, with free slots = how many waiting prompts (in order) fit the free
        slots and the KV budget now: under a binding KV budget that, not the slot count, is free."""
        if not admissible():
            return False
        free, kv = 0, reserved
        for i in itertools.islice(waiting, max_batch_size - live):
            if kv + reserve[i] > budget:
                break
            free, kv = free + 1, kv + int(reserve[i])
        return policy.should_refill(free, live, len(waiting))

    while waiting or heap:
        group: list[int] = []
        if wants_refill():
            tokens = 0
            while admissible(len(group)) and not (group and tokens + p[waiting[0]] > prefill_token_budget):
                i = waiting.popleft()
                group.append(i)
                tokens += int(p[i])
                reserved += int(reserve[i])
        if group:
            s = prefill_s(p[group])
            t += s
            pre_total += s
            prefills += 1
            peak_reserved = max(peak_reserved, reserved)
            for i in group:
                ttft[i] = t
                if o[i] == 1:
                    finish[i] = t
                    reserved -= int(reserve[i])
                else:
                    heapq.heappush(heap, (k + int(o[i]) - 1, i))
                    live += 1
                    cache_tokens += int(p[i])
            peak_live = max(peak_live, live)
        if not heap:
            if waiting and not group:
                raise ValueError(f"schedule policy {policy.name!r} does not refill an idle loop")
            continue
        steps = 1 if wants_refill() else heap[0][0] - k
        step_s = float(np.sum(decode.step_time_s(live, cache_tokens + live * np.arange(steps, dtype=np.float64))))
        t += step_s
        dec_total += step_s
        k += steps
        cache_tokens += live * steps
        while heap and heap[0][0] == k:
            _, i = heapq.heappop(heap)
            finish[i] = t
            live -= 1
            cache_tokens -= int(p[i] + o[i] - 1)
            reserved -= int(reserve[i])
    note = ""
    if unfit.size:
        i = int(unfit[0])
        note = (
            f"{unfit.size} request(s) not run: request {i} needs {int(reserve[i])} KV tokens "
            f"(prompt + new tokens), the budget holds {budget}"
        )
        if budget == 0:
            note += (
                f" (the memory budget of {hw.memory_budget_bytes / 1e9:.1f} GB leaves no room next to the "
                f"{hw.model.weight_bytes / 1e9:.1f} GB of weights and one prefill's activations)"
            )
    return GenerationRun(
        name, policy.name, t, pre_total, dec_total, int(o.sum() - o[unfit].sum()), ttft, k, prefills, peak_live,
        int(kv_cache_bytes(hw.model, peak_reserved)), unfit.size == 0, note, finish,
    )  # fmt: skip


def engine_prefill_model(hw: Hardware, **overrides: float) -> CostModel:
    """The prefill engine as the prefill cost model sees it: one flat varlen row, CUDA graphs
    (no per-layer Python), fused elementwise kernels (constants: `decode.ENGINE_PREFILL`,
    or `overrides` of them)."""
    unknown = sorted(set(overrides) - set(ENGINE_PREFILL))
    if unknown:
        raise ValueError(f"unknown engine prefill constants {unknown}; known: {', '.join(ENGINE_PREFILL)}")
    c = {**ENGINE_PREFILL, **overrides}
    attention = make_attention("varlen", layer_overhead_s=c["layer_overhead_s"])
    return hw.cost_model(attention, matmul_efficiency=c["matmul_efficiency"], elementwise_passes=c["elementwise_passes"])


@dataclass(frozen=True)
class HFContinuous:
    name = "hf-continuous"
    prefill_token_budget: int = 8192
    decode: DecodeMethod | str = "hf-paged"

    def run(self, requests: Requests, hw: Hardware) -> GenerationRun:
        decode = hw.decode_model(self.decode)
        cm = hw.cost_model("varlen")
        step_overhead_s = decode.method.step_overhead_s
        price = lambda p: cm.cost(flat_packing(p)).est_time_s + step_overhead_s  # noqa: E731  (one scheduler step)
        return _continuous(
            self.name, make_policy("refill-when-free"), requests, hw, decode=decode, prefill_s=price,
            max_batch_size=requests.size, prefill_token_budget=_positive(self.prefill_token_budget, "prefill token budget"),
        )  # fmt: skip


@dataclass(frozen=True)
class Engine:
    name = "engine"
    policy: str = "refill-when-free"
    policy_params: tuple[tuple[str, Any], ...] = ()
    max_batch_size: int = 256
    prefill_token_budget: int = 8192
    decode: DecodeMethod | str = "graph"

    def run(self, requests: Requests, hw: Hardware) -> GenerationRun:
        cm = engine_prefill_model(hw)
        return _continuous(
            self.name, make_policy(self.policy, **dict(self.policy_params)), requests, hw,
            decode=hw.decode_model(self.decode), prefill_s=lambda p: cm.cost(flat_packing(p)).est_time_s,
            max_batch_size=_positive(self.max_batch_size, "max batch size"),
            prefill_token_budget=_positive(self.prefill_token_budget, "prefill token budget"),
        )  # fmt: skip


GENERATION_METHODS: dict[str, type] = {cls.name: cls for cls in (HFPadded, PrepackHF, HFContinuous, Engine)}
