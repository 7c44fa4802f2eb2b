"""`simulate(...)`: the typed library function behind the `simulate` command, and
`recommend(...)`, a cheap backend-and-capacity pick for one batch.

Draw `num_prompts` lengths from a distribution (seeded), cut them into consecutive batches
of `batch_size` (the last one may be smaller), pack every batch with every packer, price
every packing with every attention backend, and aggregate over batches:
  sums:   num_bins, padded_tokens, lower_bound, flops, useful_flops, est_time_s
  ratios: efficiency = real tokens / forward tokens (of the sums),
          speedup_vs_padded = est_time_s of (pad, padded) / est_time_s of the row
  max:    peak_memory_bytes (the worst batch); capacity is the mean over batches.
The padded baseline (packer `pad`, attention `padded`) is always included. Varlen pads
nothing, so the packer changes nothing under it: varlen is reported once, as the flat batch
(packer `flat`: every prompt of the batch in one row), which is also priced with flex.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

import packers as packers_lib
from packers.limits import check_memory_bytes, check_num_prompts
from simulator.attention import available_attention, make_attention
from simulator.capacity import CapacitySpec, choose_capacity, parse_capacity
from simulator.cost import CostModel, PackingCost
from simulator.distributions import Distribution, parse_distribution
from simulator.gpus import GPUSpec, get_gpu
from simulator.specs import ModelSpec, get_model

__all__ = [
    "BASELINE",
    "FLAT_ATTENTION",
    "FlatPacker",
    "DEFAULT_NUM_PROMPTS",
    "JSON_RESULT_FIELDS",
    "ResultRow",
    "SimulationResult",
    "default_packers",
    "flat_packing",
    "recommend",
    "simulate",
]

BASELINE = ("pad", "padded")
DEFAULT_NUM_PROMPTS = 4096
PACKED_ATTENTION = ("dense", "flex", "varlen")  # what --attention all means
EXCLUDED_BY_DEFAULT = ("ilp",)  # exact solver: opt in with packers=[..., "ilp"]
JSON_RESULT_FIELDS = (
    "packer", "capacity", "attention", "num_bins", "padded_tokens", "efficiency", "lower_bound",
    "flops", "useful_flops", "est_time_s", "peak_memory_bytes", "speedup_vs_padded",
)  # fmt: skip


FLAT_ATTENTION = ("varlen", "flex")  # backends the flat one-row batch is priced with


def flat_packing(lengths: Sequence[int] | np.ndarray) -> packers_lib.Packing:
    """Every prompt in one row, in the caller's order: capacity = sum(lengths), no padding."""
    arr = packers_lib.validate_lengths(lengths)
    meta = {"lower_bound": 1, "status": "optimal", "solve_time_s": 0.0}
    return packers_lib.Packing(lengths=arr, capacity=int(arr.sum()), bins=(tuple(range(arr.size)),), packer="flat", meta=meta)


@dataclass(frozen=True)
class FlatPacker:
    """The flat batch as a packer: ignores `capacity` and returns `flat_packing(lengths)`."""

    name = "flat"

    def pack(self, lengths: Sequence[int] | np.ndarray, capacity: int) -> packers_lib.Packing:
        return flat_packing(lengths)


def default_packers() -> list[str]:
    """Every registered packer except those in EXCLUDED_BY_DEFAULT, `pad` first."""
    names = [n for n in packers_lib.available_packers() if n not in EXCLUDED_BY_DEFAULT]
    return sorted(names, key=lambda n: (n != "pad", n))


@dataclass(frozen=True)
class ResultRow:
    """One (packer, attention) aggregated over batches; `to_dict()` gives the JSON fields."""

    packer: str
    capacity: float
    attention: str
    num_bins: int
    padded_tokens: int
    efficiency: float
    lower_bound: int
    flops: float
    useful_flops: float
    est_time_s: float
    peak_memory_bytes: int
    speedup_vs_padded: float
    num_batches: int = 1
    forwards: int = 1
    fits: bool = True

    @property
    def gap(self) -> float:
        """(bins - lower bound) / lower bound, over the summed counts."""
        return (self.num_bins - self.lower_bound) / self.lower_bound

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in JSON_RESULT_FIELDS}


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """config: what ran (JSON-able); results: one row per (packer, attention), baseline
    first; recommendation: the fitting row with the lowest est_time_s (None if none fits);
    lengths: the drawn prompt lengths."""

    config: dict[str, Any]
    results: tuple[ResultRow, ...]
    recommendation: ResultRow | None
    lengths: np.ndarray = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "results": [r.to_dict() for r in self.results]}


@dataclass
class _Acc:
    capacity_sum: int = 0
    num_bins: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    forward_tokens: int = 0
    lower_bound: int = 0
    flops: float = 0.0
    useful_flops: float = 0.0
    est_time_s: float = 0.0
    peak_memory_bytes: int = 0
    forwards: int = 0
    fits: bool = True
    batches: int = 0

    def add(self, c: PackingCost) -> None:
        self.capacity_sum += c.capacity
        self.num_bins += c.num_bins
        self.padded_tokens += c.padded_tokens
        self.real_tokens += c.real_tokens
        self.forward_tokens += c.forward_tokens
        self.lower_bound += c.lower_bound
        self.flops += c.flops
        self.useful_flops += c.useful_flops
        self.est_time_s += c.est_time_s
        self.peak_memory_bytes = max(self.peak_memory_bytes, c.peak_memory_bytes)
        self.forwards += c.forwards or 1
        self.fits = self.fits and c.fits
        self.batches += 1


def _attention_list(attention: str | Sequence[str]) -> list[str]:
    names = [attention] if isinstance(attention, str) else list(attention)
    out: list[str] = []
    for raw in names:
        for name in (n.strip().lower() for n in str(raw).split(",")):
            picked = list(PACKED_ATTENTION) if name == "all" else [make_attention(name).name]
            out += [n for n in picked if n not in out]
    if not out:
        raise ValueError(f"no attention backend given; choose from {', '.join(available_attention())} or all")
    return out


def _positive_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def _prompt_count(value: object, what: str) -> int:
    """A positive int within `packers.limits.MAX_PROMPTS`."""
    return check_num_prompts(_positive_int(value, what), what)


def _evaluate(
    batches: Sequence[np.ndarray],
    *,
    model: ModelSpec,
    gpu: GPUSpec,
    packer_names: Sequence[str],
    packer_params: Mapping[str, Mapping[str, Any]] | None = None,
    attention: Sequence[str],
    capacity: CapacitySpec,
    memory_budget_bytes: int | None,
    progress: Iterable[Any] | None = None,
) -> tuple[list[ResultRow], ResultRow | None]:
    cost_models = {a: CostModel(model, gpu, a, memory_budget_bytes) for a in (*attention, "padded")}
    plan: list[tuple[str, Any, list[str], CapacitySpec]] = []  # packer, instance, backends, capacity rule
    names = ["pad", *(n for n in packer_names if n not in ("pad", "flat"))]  # both always run
    for name in names:
        rows_matter = [a for a in attention if a not in ("padded", "varlen")]  # varlen: see `flat`
        backends = ["padded", *rows_matter] if name == "pad" else rows_matter
        if backends:
            packer = packers_lib.make_packer(name, **dict((packer_params or {}).get(name, {})))
            plan.append((name, packer, backends, "max" if name == "pad" else capacity))
    flat_backends = [a for a in attention if a in FLAT_ATTENTION]
    if flat_backends:
        plan.append(("flat", FlatPacker(), flat_backends, "max"))  # capacity: the batch's sum, below
    acc: dict[tuple[str, str], _Acc] = {(p, a): _Acc() for p, _, bs, _ in plan for a in bs}
    for batch in progress if progress is not None else batches:
        for name, packer, backends, cap in plan:
            if name == "flat":  # one row holding the whole batch
                cap = int(batch.sum())
            for a, choice in zip(backends, choose_capacity(batch, packer, [cost_models[a] for a in backends], cap)):
                acc[(name, a)].add(choice.cost)
    base_time = acc[BASELINE].est_time_s
    rows = [
        ResultRow(
            packer=p,
            capacity=(x.capacity_sum // x.batches) if x.capacity_sum % x.batches == 0 else x.capacity_sum / x.batches,
            attention=a,
            num_bins=x.num_bins,
            padded_tokens=x.padded_tokens,
            efficiency=x.real_tokens / x.forward_tokens,
            lower_bound=x.lower_bound,
            flops=x.flops,
            useful_flops=x.useful_flops,
            est_time_s=x.est_time_s,
            peak_memory_bytes=x.peak_memory_bytes,
            speedup_vs_padded=base_time / x.est_time_s,
            num_batches=x.batches,
            forwards=x.forwards,
            fits=x.fits,
        )
        for (p, a), x in acc.items()
    ]
    fitting = [r for r in rows if r.fits]
    best = min(fitting, key=lambda r: (r.est_time_s, r.packer in ("pad", "flat"), r.num_bins)) if fitting else None
    return rows, best


def simulate(
    *,
    lengths_dist: str | Distribution | Sequence[int] | np.ndarray = "mmlu",
    batch_size: int = 64,
    num_prompts: int = DEFAULT_NUM_PROMPTS,
    model: str | ModelSpec = "llama-2-7b",
    gpu: str | GPUSpec = "h100",
    packers: Sequence[str] | None = None,
    packer_params: Mapping[str, Mapping[str, Any]] | None = None,
    capacity: CapacitySpec = "max",
    attention: str | Sequence[str] = "all",
    memory_budget_bytes: int | None = None,
    seed: int = 0,
    progress: bool = False,
) -> SimulationResult:
    """Simulate prefill of `num_prompts` prompts in batches of `batch_size` (see the module
    docstring for the aggregation). `lengths_dist` is a SPEC string
    (`simulator.distributions`), a `Distribution`, or explicit lengths (used as given, in
    order; `num_prompts` is then ignored). packers=None means `default_packers()`;
    packer_params maps a packer name to its hyperparameters (e.g. {"ilp": {"time_limit_s": 1}}).
    attention: 'all' (= dense, flex, varlen), one name, or a list. Bad input, or a value past
    `packers.limits` (prompts, lengths, capacity, memory budget): `ValueError`, checked
    before any packing; a packer that fails or returns an invalid packing: `ValueError` /
    `TypeError` naming it (`packers.checked_pack`)."""
    batch_size = _prompt_count(batch_size, "batch size")
    model_spec, gpu_spec = get_model(model), get_gpu(gpu)
    capacity = parse_capacity(capacity)
    attn = _attention_list(attention)
    names = default_packers() if packers is None else list(dict.fromkeys(packers))
    unused = sorted(set(packer_params or {}) - (set(names) | {"pad"}) | (set(packer_params or {}) & {"flat"}))
    if unused:  # flat takes no parameters
        raise ValueError(f"packer parameters given for {', '.join(unused)}, which is not in the packers run")
    if memory_budget_bytes is not None:
        memory_budget_bytes = check_memory_bytes(_positive_int(memory_budget_bytes, "memory budget (bytes)"))
    if isinstance(lengths_dist, (str,)) or hasattr(lengths_dist, "sample"):
        dist = parse_distribution(lengths_dist) if isinstance(lengths_dist, str) else lengths_dist
        num_prompts = _prompt_count(num_prompts, "number of prompts")
        lengths = dist.sample(num_prompts, np.random.default_rng(seed))
        dist_spec = dist.spec
    else:
        lengths = packers_lib.validate_lengths(lengths_dist)
        num_prompts, dist_spec = lengths.size, "explicit"
    batches = [lengths[i : i + batch_size] for i in range(0, lengths.size, batch_size)]
    bar = None
    if progress:
        from tqdm import tqdm
        import sys

        bar = tqdm(batches, desc="simulate", unit="batch", file=sys.stderr, leave=False)
    rows, best = _evaluate(
        batches, model=model_spec, gpu=gpu_spec, packer_names=names, packer_params=packer_params, attention=attn,
        capacity=capacity, memory_budget_bytes=memory_budget_bytes, progress=bar,
    )  # fmt: skip
    config = {
        "lengths_dist": dist_spec,
        "num_prompts": int(num_prompts),
        "batch_size": batch_size,
        "num_batches": len(batches),
        "model": model_spec.name,
        "gpu": gpu_spec.name,
        "packers": sorted({r.packer for r in rows}, key=lambda n: (n != "pad", n)),
        "packer_params": {k: dict(v) for k, v in (packer_params or {}).items()},
        "capacity": capacity,
        "attention": attn,
        "memory_budget_bytes": memory_budget_bytes if memory_budget_bytes is not None else gpu_spec.memory_bytes,
        "seed": seed,
        "aggregation": "sums over batches except efficiency, speedup_vs_padded (ratios of sums), "
        "peak_memory_bytes (max), capacity (mean)",
    }
    return SimulationResult(config=config, results=tuple(rows), recommendation=best, lengths=lengths)


def recommend(
    lengths: Sequence[int] | np.ndarray,
    *,
    model: str | ModelSpec = "llama-2-7b",
    gpu: str | GPUSpec = "h100",
    packers: Sequence[str] | None = None,
    attention: str | Sequence[str] = "all",
    capacity: CapacitySpec = "auto",
    memory_budget_bytes: int | None = None,
) -> ResultRow | None:
    """The cheapest fitting (packer, attention, capacity) for one batch of `lengths`.
    packers=None tries 'ffd' when registered, else `default_packers()`. None if nothing fits."""
    arr = packers_lib.validate_lengths(lengths)
    names = packers if packers is not None else (["ffd"] if "ffd" in packers_lib.PACKERS else default_packers())
    _, best = _evaluate(
        [arr], model=get_model(model), gpu=get_gpu(gpu), packer_names=list(names),
        attention=_attention_list(attention), capacity=parse_capacity(capacity),
        memory_budget_bytes=memory_budget_bytes,
    )  # fmt: skip
    return best
