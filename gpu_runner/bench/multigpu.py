"""The multi-GPU prefill benchmark: strategies side by side on 1 GPU and N GPUs of one host.

Runs inside a process group started by torchrun (every rank runs `run_multigpu_benchmark`).
For each executor run, each batch (MMLU-like lengths drawn with a fixed seed, random token
ids), each world size w (by default 1, 2, 4 ... below the world, and the full world; ranks
0..w-1 form a subgroup, the others wait) and each strategy:
  warmup calls, then `reps` calls, each started right after a barrier of the subgroup and
  timed with CUDA events (host clock on CPU) up to the moment the gathered logits are
  there; a call's time is the slowest rank's; the median is reported.
Per rank busy time = its time inside the executor (median over reps). Scaling efficiency =
ms(1 GPU, same executor and strategy) / (w * ms(w GPUs)). Rank 0 rewrites the JSON list of
records after each measurement, so a killed run keeps what it measured.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

from gpu_runner.bench.common import MODEL_SHAPES, build_model, check_choices, draw_prompts, error_text, gpu_slug, load_lengths
from gpu_runner.distributed.prefill import EngineExecutor, RunnerExecutor, default_cost_model, distributed_prefill
from simulator.assign import STRATEGIES, make_strategy
from simulator.names import ENGINE, RUNNER, VARLEN

__all__ = ["EXECUTORS", "ExecutorKind", "MultiGPUConfig", "MultiGPURecord", "run_multigpu_benchmark"]


@dataclass(frozen=True)
class ExecutorKind:
    """An executor the benchmark runs: the attention backends it runs under a config, and
    `make(backend, memory budget bytes or None)` -> the executor."""

    backends: Callable[["MultiGPUConfig"], tuple[str, ...]]
    make: Callable[[str, int | None], Any]


def _runner_backends(cfg: "MultiGPUConfig") -> tuple[str, ...]:
    return cfg.backends


def _make_runner(backend: str, budget: int | None) -> Any:
    return RunnerExecutor(backend=backend, memory_budget_bytes=budget)


def _engine_backends(cfg: "MultiGPUConfig") -> tuple[str, ...]:
    return (VARLEN,)


def _make_engine(backend: str, budget: int | None) -> Any:
    return EngineExecutor()


EXECUTORS: dict[str, ExecutorKind] = {
    RUNNER: ExecutorKind(_runner_backends, _make_runner),
    ENGINE: ExecutorKind(_engine_backends, _make_engine),
}


@dataclass(frozen=True)
class MultiGPUConfig:
    """What to run. model: a `gpu_runner.bench.MODEL_SHAPES` key; dataset: a length list.

    world_sizes: () = 1, 2, 4 ... below the world, and the full world.
    backends: the runner's attention backends, one run each.
    padded_runs: the "executor/backend" runs that include padded-rr (the runner on padded
        rows is HF's padded batch only under dense; the engine never pads, so there
        padded-rr is plain prompt round-robin).
    max_padded_batch: padded-rr runs only on batches up to this (it pads every prompt to the
        longest: seconds per call).
    memory_fraction: the runner's memory budget per forward, as a fraction of the device
        memory free after the model.
    prompt-balanced runs only with executors that ignore rows (`uses_rows` False): under the
    runner it would mean one padded row per prompt.
    """

    model: str = "llama-2-7b"
    dataset: str = "mmlu"
    batches: tuple[int, ...] = (256, 1024)
    strategies: tuple[str, ...] = ("packed-rr", "cost-balanced", "padded-rr", "prompt-balanced")
    executors: tuple[str, ...] = ("runner",)
    world_sizes: tuple[int, ...] = ()
    backends: tuple[str, ...] = ("dense",)
    padded_runs: tuple[str, ...] = ("runner/dense", "engine/varlen")
    max_padded_batch: int = 256
    warmup: int = 1
    reps: int = 3
    seed: int = 0
    dtype: str = "bfloat16"
    memory_fraction: float = 0.6
    out: str = ""

    def __post_init__(self) -> None:
        check_choices("model", (self.model,), tuple(MODEL_SHAPES))
        check_choices("strategy", self.strategies, tuple(STRATEGIES))
        check_choices("executor", self.executors, tuple(EXECUTORS))
        if not self.batches or min(self.batches) < 1 or any(w < 1 for w in self.world_sizes):
            raise ValueError("batches must be non-empty and positive, world sizes positive")
        if self.reps < 1 or self.warmup < 0 or self.max_padded_batch < 0:
            raise ValueError("reps must be >= 1, warmup and max_padded_batch >= 0")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"memory_fraction must be in (0, 1], got {self.memory_fraction}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")


@dataclass(frozen=True)
class MultiGPURecord:
    """One measurement: median ms of one batch on `gpus` GPUs; None fields when not measured."""

    gpu: str
    gpus: int
    model: str
    dataset: str
    batch: int
    strategy: str
    ms: float | None
    tokens_per_s: float | None
    scaling_efficiency: float | None
    per_rank_busy_ms: list[float] | None
    executor: str
    backend: str
    real_tokens: int
    num_rows: int
    ms_min: float | None = None
    ms_max: float | None = None
    reps: int = 0
    busy_imbalance: float | None = None
    modeled_rank_ms: list[float] | None = None
    modeled_imbalance: float | None = None
    per_rank_phase_ms: dict[str, list[float]] | None = None  # host ms of plan / run / gather, median
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ms is None and self.error is None:
            raise ValueError("a record without a time must carry the error")
        if self.ms is not None and self.ms <= 0:
            raise ValueError(f"ms must be positive, got {self.ms}")


def _barrier(group: Any, device: torch.device) -> None:
    if device.type == "cuda":
        dist.barrier(group=group, device_ids=[device.index])
    else:
        dist.barrier(group=group)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_calls(
    call: Callable[[], Any], cfg: MultiGPUConfig, group: Any, device: torch.device
) -> tuple[list[float], list[tuple[float, ...]], Any, dict[str, float]]:
    """(per-rep ms of the slowest rank, per-rep busy ms of each rank, the last result, this
    rank's median host ms per phase of `distributed_prefill`)."""
    for _ in range(cfg.warmup):
        call()
    times, busy, res, phases = [], [], None, []
    for _ in range(cfg.reps):
        _barrier(group, device)
        _sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            res = call()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            res = call()
            times.append((time.perf_counter() - t0) * 1e3)
        busy.append(res.busy_ms)
        phases.append(res.phases_ms or {})
    slowest = torch.tensor(times, dtype=torch.float64, device=device)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)
    names = phases[0].keys() if phases else ()
    return slowest.tolist(), busy, res, {k: float(statistics.median(p[k] for p in phases)) for k in names}


class _Sink:
    """Rank 0's records; rewrites the JSON file after each one and prints a line."""

    def __init__(self, path: str, active: bool) -> None:
        self.path, self.active = path, active
        self.records: list[MultiGPURecord] = []

    def add(self, rec: MultiGPURecord) -> None:
        self.records.append(rec)
        if not self.active:
            return
        if self.path:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                json.dump([asdict(r) for r in self.records], f, indent=1)
            os.replace(tmp, self.path)
        shown = (
            f"{rec.ms:9.1f} ms {rec.tokens_per_s:10.0f} tok/s eff {rec.scaling_efficiency or 0:.3f}"
            if rec.ms
            else f"ERROR {rec.error}"
        )
        busy = ", ".join(f"{b:.1f}" for b in rec.per_rank_busy_ms or [])
        phases = " ".join(
            f"{k} [{', '.join(f'{x:.1f}' for x in v)}]" for k, v in (rec.per_rank_phase_ms or {}).items()
        )
        print(
            f"[{rec.model} b{rec.batch} {rec.gpus} gpu {rec.executor}/{rec.backend} {rec.strategy:13s}] "
            f"{shown} busy [{busy}] {phases}",
            flush=True,
        )


def run_multigpu_benchmark(cfg: MultiGPUConfig, *, device: torch.device) -> list[MultiGPURecord]:
    """Run the benchmark on every rank of the initialised world; `device` is this rank's.
    Returns the records (complete on rank 0; others hold their own view)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    worlds = sorted(set(cfg.world_sizes or [w for w in (1, 2, 4, 8) if w < world] + [world]))
    if worlds[-1] > world:
        raise ValueError(f"world size {worlds[-1]} asked for, but only {world} ranks run")
    # every rank creates every subgroup, in the same order
    groups = {w: (None if w == world else dist.new_group(list(range(w)))) for w in worlds}
    gpu = gpu_slug(device)
    model = build_model(cfg.model, device=str(device), dtype=cfg.dtype)
    budget = None
    if device.type == "cuda":
        budget = int(cfg.memory_fraction * torch.cuda.mem_get_info(device)[0])
    sink = _Sink(cfg.out.format(gpu=gpu), active=rank == 0)
    if rank == 0:
        print(
            f"gpu={gpu} world={world} worlds={worlds} torch {torch.__version__} model {cfg.model}", flush=True
        )
    lengths_all = load_lengths(cfg.dataset)
    runs = []  # (executor name, backend, executor), one executor object per run for the whole benchmark
    for name in cfg.executors:
        kind = EXECUTORS[name]
        runs += [(name, backend, kind.make(backend, budget)) for backend in kind.backends(cfg)]
    draws = []  # (batch, prompts, real tokens), the same on every rank
    for batch in cfg.batches:
        rng = np.random.default_rng(cfg.seed)
        lengths = lengths_all[rng.choice(len(lengths_all), size=min(batch, len(lengths_all)), replace=False)]
        draws.append((batch, draw_prompts(lengths, model.config.vocab_size, cfg.seed), int(lengths.sum())))
    # runs outermost: the engine (CUDA graphs) comes after every runner measurement
    for ex_name, backend, executor in runs:
        cost_model = default_cost_model(model, executor.attention(model))
        for batch, prompts, real in draws:
            one_gpu_ms: dict[str, float] = {}
            padded_ok = f"{ex_name}/{backend}" in cfg.padded_runs and batch <= cfg.max_padded_batch
            for w in worlds:
                for strategy in cfg.strategies:
                    if (strategy == "padded-rr" and not padded_ok) or (
                        strategy == "prompt-balanced" and executor.uses_rows
                    ):
                        continue
                    if rank < w:
                        rec = _measure(model, prompts, strategy, executor, cost_model, groups[w], cfg, device)
                        base = dict(
                            gpu=gpu,
                            gpus=w,
                            model=cfg.model,
                            dataset=cfg.dataset,
                            batch=len(prompts),
                            strategy=strategy,
                            executor=ex_name,
                            backend=backend,
                            real_tokens=real,
                            options=dict(
                                warmup=cfg.warmup,
                                reps=cfg.reps,
                                seed=cfg.seed,
                                dtype=cfg.dtype,
                                memory_budget_bytes=budget,
                                capacity="max",
                            ),
                        )
                        ms = rec.pop("ms")
                        if ms is not None and w == 1:
                            one_gpu_ms[strategy] = ms
                        eff = one_gpu_ms[strategy] / (w * ms) if (ms and strategy in one_gpu_ms) else None
                        sink.add(
                            MultiGPURecord(
                                **base,
                                **rec,
                                ms=ms,
                                scaling_efficiency=eff,
                                tokens_per_s=real / (ms * 1e-3) if ms else None,
                            )
                        )
                    dist.barrier()
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
    del model
    return sink.records


def _measure(model: torch.nn.Module, prompts: list[list[int]], strategy: str, executor: Any, cost_model: Any,
             group: Any, cfg: MultiGPUConfig, device: torch.device) -> dict[str, Any]:  # fmt: skip
    strat = make_strategy(strategy)

    def call() -> Any:
        return distributed_prefill(
            model, prompts, strat, executor=executor, cost_model=cost_model, group=group, time_ranks=True
        )

    try:
        times, busy, res, phases = _timed_calls(call, cfg, group, device)
        every_rank: list[Any] = [None] * dist.get_world_size(group)
        dist.all_gather_object(every_rank, phases, group=group)
    except Exception as exc:  # noqa: BLE001 - a failing measurement is a record, not a lost run
        return dict(ms=None, error=error_text(exc), num_rows=0, per_rank_busy_ms=None)
    busy_med = [float(statistics.median(b[r] for b in busy)) for r in range(len(busy[0]))]
    modeled = [1e3 * s for s in res.assignment.rank_loads_s]
    mean_busy = sum(busy_med) / len(busy_med)
    return dict(
        ms=float(statistics.median(times)), ms_min=min(times), ms_max=max(times), reps=len(times),
        per_rank_busy_ms=busy_med, busy_imbalance=max(busy_med) / mean_busy if mean_busy > 0 else None,
        modeled_rank_ms=modeled, modeled_imbalance=res.assignment.imbalance, num_rows=res.packing.num_bins,
        per_rank_phase_ms={k: [r[k] for r in every_rank] for k in phases},
    )  # fmt: skip
