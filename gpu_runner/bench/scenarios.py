"""The prefill benchmark: model shapes, prompts, the two scenarios and the result records.

This module owns what the benchmark measures and how it is recorded:
  scenario a: one batch of `batch` prompts, repeated; per method and mode (prefill, ttft):
              median ms over `reps` CUDA-event-timed calls after `warmup` calls, peak extra
              memory, fraction of the real-token roofline, speedup over padded
  scenario b: a dataset stream: all prompts of the dataset, shuffled with the seed, in
              batches of `batch`; one wall time per method from a synced start to a synced
              end, including packing, engine construction and CUDA-graph capture
Every method runs in the same process on the same model (random weights, built from a
config on the device) and the same prompts (lengths from a real length list, random ids).
Records are appended to a JSON list after each measurement, so a killed run keeps its data.

Roofline: FLOPs of the real tokens only (`real_token_flops`) over a bf16 matmul rate
measured in the same run (`timing.matmul_peak_flops`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch

from gpu_runner.bench.common import (
    MODEL_SHAPES, bench_device, build_model, check_choices, draw_prompts, error_text, gpu_slug, load_lengths,
    real_token_flops, stream_batches,
)  # fmt: skip
from gpu_runner.bench.methods import METHOD_NAMES, make_method
from gpu_runner.bench.timing import (
    matmul_peak_flops,
    peak_extra_bytes,
    release_memory,
    time_calls,
    wall_clock_s,
)
from packers.limits import check_num_prompts
from simulator.report import check_output_path, write_atomically

__all__ = ["MODES", "BenchConfig", "BenchRecord", "merge_records", "run_benchmark"]

MODES = ("prefill", "ttft", "stream")




@dataclass(frozen=True)
class BenchRecord:
    """One measurement. ms is the median per call (a, b: the stream's wall time); None on error."""

    gpu: str
    model: str
    dataset: str
    batch: int
    mode: str
    method: str
    ms: float | None
    real_tokens: int
    peak_extra_bytes: int | None = None
    roofline_ms: float | None = None
    roofline_fraction: float | None = None
    speedup_vs_padded: float | None = None
    speedup_vs_paper: float | None = None
    tokens_per_s: float | None = None
    ms_min: float | None = None
    ms_max: float | None = None
    reps: int = 0
    num_batches: int = 1
    matmul_peak_tflops: float | None = None
    error: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.method not in METHOD_NAMES:
            raise ValueError(f"method must be one of {METHOD_NAMES}, got {self.method!r}")
        if self.ms is None and self.error is None:
            raise ValueError("a record without a time must carry the error")
        if self.ms is not None and self.ms <= 0:
            raise ValueError(f"ms must be positive, got {self.ms}")


@dataclass(frozen=True)
class BenchConfig:
    """What to run. models: keys of MODEL_SHAPES; dataset: a length list name (e.g. mmlu)."""

    models: tuple[str, ...] = ("sheared-llama-1.3b",)
    dataset: str = "mmlu"
    batch: int = 64
    methods: tuple[str, ...] = ("padded", "sorted", "paper", "best", "hf-cb")
    modes: tuple[str, ...] = ("prefill", "ttft")
    scenarios: tuple[str, ...] = ("a", "b")
    stream_methods: tuple[str, ...] = ("padded", "sorted", "paper", "best")
    stream_batches: int = 0  # 0 = the whole dataset
    warmup: int = 2
    reps: int = 10
    seed: int = 0
    sorted_chunk: int = 16
    token_bucket: int = 128
    q_chunk: int = 128
    attention: str = "auto"
    device: str = "cuda"
    dtype: str = "bfloat16"
    out: str = ""

    def __post_init__(self) -> None:
        check_choices("model", self.models, tuple(MODEL_SHAPES))
        check_choices("method", (*self.methods, *self.stream_methods), METHOD_NAMES)
        check_choices("mode", self.modes, ("prefill", "ttft"))
        check_choices("scenario", self.scenarios, ("a", "b"))
        if self.batch < 1 or self.reps < 1 or self.warmup < 0 or self.stream_batches < 0:
            raise ValueError("batch and reps must be >= 1, warmup and stream_batches >= 0")
        check_num_prompts(self.batch, "batch")
        if self.sorted_chunk < 1 or self.token_bucket < 1 or self.q_chunk < 0 or self.seed < 0:
            raise ValueError("sorted_chunk and token_bucket must be >= 1, q_chunk and seed >= 0")
        bench_device(self.device)
        if self.attention not in ("auto", "packed", "flash", "torch"):
            raise ValueError(f"attention must be auto, packed, flash or torch, got {self.attention!r}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")


# ---------------------------------------------------------------- inputs


# ---------------------------------------------------------------- scenarios


class _Sink:
    """Holds the records of a run and rewrites the JSON file after each one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.records: list[BenchRecord] = []

    def add(self, rec: BenchRecord) -> BenchRecord:
        self.records.append(rec)
        if self.path:  # atomically (a temporary file next to it, renamed): never half a file
            records = [asdict(r) for r in self.records]
            write_atomically(self.path, "w", lambda f: json.dump(records, f, indent=1), "--out")
        shown = f"{rec.ms:10.2f} ms" if rec.ms is not None else f"ERROR {rec.error}"
        frac = f" roofline {rec.roofline_fraction:.2f}" if rec.roofline_fraction else ""
        sp = f" x{rec.speedup_vs_padded:.2f} vs padded" if rec.speedup_vs_padded else ""
        mem = f" peak+{rec.peak_extra_bytes / 2**30:.2f} GiB" if rec.peak_extra_bytes else ""
        print(f"[{rec.model} {rec.dataset} b{rec.batch} {rec.mode:7s} {rec.method:6s}] {shown}{frac}{sp}{mem}", flush=True)
        return rec

    def find(self, model: str, dataset: str, batch: int, mode: str, method: str) -> BenchRecord | None:
        for r in reversed(self.records):
            if (r.model, r.dataset, r.batch, r.mode, r.method) == (model, dataset, batch, mode, method) and r.ms:
                return r
        return None


def _runner_notes(runner: Any) -> dict[str, Any]:
    notes: dict[str, Any] = {}
    if runner is not None and hasattr(runner, "engine"):
        notes["graphs"] = runner.engine.num_graphs
        notes["attention"] = runner.engine.attention
    if getattr(runner, "oom_splits", 0):
        notes["oom_splits"] = runner.oom_splits  # padded batches that had to run as halves
    return notes


def _finish(sink: _Sink, base: dict[str, Any], ms: float | None, flops: float, peak: float, **extra: Any) -> BenchRecord:
    padded = sink.find(base["model"], base["dataset"], base["batch"], base["mode"], "padded")
    paper = sink.find(base["model"], base["dataset"], base["batch"], base["mode"], "paper")
    roof_ms = flops / peak * 1e3
    rec = BenchRecord(
        **base, ms=ms, roofline_ms=roof_ms, matmul_peak_tflops=peak / 1e12,
        roofline_fraction=(roof_ms / ms) if ms else None,
        speedup_vs_padded=(padded.ms / ms) if (ms and padded) else None,
        speedup_vs_paper=(paper.ms / ms) if (ms and paper) else None,
        tokens_per_s=(base["real_tokens"] / (ms * 1e-3)) if ms else None,
        **extra,
    )
    return sink.add(rec)


def _time_method(method: str, model: Any, prompts: list[list[int]], modes: tuple[str, ...], opts: dict[str, Any],
                 cfg: BenchConfig, device: torch.device, holder: dict[str, Any]) -> dict[str, Any]:
    """Build one method and time each mode on `prompts`; the runner is left in `holder`."""
    runner = make_method(method, model, **opts)
    holder["runner"] = runner
    timings = {}
    for mode in modes:
        call = partial(runner.prefill if mode == "prefill" else runner.first_tokens, prompts)
        timings[mode] = time_calls(call, device=device, warmup=cfg.warmup, reps=cfg.reps)
    return timings


def _run_stream(method: str, model: Any, batches: list[list[list[int]]], opts: dict[str, Any],
                device: torch.device, holder: dict[str, Any]) -> float:
    """Wall seconds of the whole stream, method construction included; the runner is left in `holder`."""

    def body() -> None:
        runner = make_method(method, model, **opts)  # construction counts (fusing, graphs)
        holder["runner"] = runner
        for batch in batches:
            runner.prefill(batch)

    return wall_clock_s(body, device=device)[1]


def _scenario_a(model, name: str, cfg: BenchConfig, peak: float, gpu: str, sink: _Sink, device: torch.device) -> None:
    lengths_all = load_lengths(cfg.dataset)
    rng = np.random.default_rng(cfg.seed)
    lengths = lengths_all[rng.choice(len(lengths_all), size=min(cfg.batch, len(lengths_all)), replace=False)]
    prompts = draw_prompts(lengths, model.config.vocab_size, cfg.seed)
    flops = real_token_flops(model.config, lengths)
    opts = dict(sorted_chunk=cfg.sorted_chunk, token_bucket=cfg.token_bucket, q_chunk=cfg.q_chunk, seed=cfg.seed,
                attention=cfg.attention)
    for method in cfg.methods:
        modes = ("ttft",) if method == "hf-cb" else cfg.modes
        modes = tuple(m for m in modes if m in cfg.modes)
        if not modes:
            continue
        holder: dict[str, Any] = {}
        try:
            timings, peak_bytes = peak_extra_bytes(
                partial(_time_method, method, model, prompts, modes, opts, cfg, device, holder), device=device
            )
            err = None
        except Exception as exc:  # noqa: BLE001 - one method failing must not lose the others
            timings, peak_bytes, err = {}, None, error_text(exc)
        extra_opts = _runner_notes(holder.pop("runner", None))
        release_memory(device)
        for mode in modes:
            base = dict(gpu=gpu, model=name, dataset=cfg.dataset, batch=len(prompts), mode=mode, method=method,
                        real_tokens=int(lengths.sum()))
            t = timings.get(mode)
            _finish(sink, base, t.median_ms if t else None, flops, peak, peak_extra_bytes=peak_bytes,
                    ms_min=t.min_ms if t else None, ms_max=t.max_ms if t else None, reps=cfg.reps if t else 0,
                    error=None if t else (err or "not run"), options={**opts, **extra_opts})


def _scenario_b(model, name: str, cfg: BenchConfig, peak: float, gpu: str, sink: _Sink, device: torch.device) -> None:
    lengths_all = load_lengths(cfg.dataset)
    batches = stream_batches(lengths_all, cfg.batch, model.config.vocab_size, cfg.seed, cfg.stream_batches)
    real = sum(len(p) for b in batches for p in b)
    flops = sum(real_token_flops(model.config, [len(p) for p in b]) for b in batches)
    opts = dict(sorted_chunk=cfg.sorted_chunk, token_bucket=cfg.token_bucket, q_chunk=cfg.q_chunk, seed=cfg.seed,
                attention=cfg.attention)
    # best: the engine is configured for the stream's largest batch (a server's "max batch
    # tokens" setting), so its KV buffer is allocated once and graphs are never re-captured.
    opts["max_tokens"] = max(sum(len(p) for p in b) for b in batches)
    for method in cfg.stream_methods:
        holder: dict[str, Any] = {}
        try:
            wall_s, peak_bytes = peak_extra_bytes(partial(_run_stream, method, model, batches, opts, device, holder),
                                                  device=device)
            ms, err = wall_s * 1e3, None
        except Exception as exc:  # noqa: BLE001
            ms, peak_bytes, err = None, None, error_text(exc)
        extra_opts = _runner_notes(holder.pop("runner", None))
        release_memory(device)
        base = dict(gpu=gpu, model=name, dataset=cfg.dataset, batch=cfg.batch, mode="stream", method=method, real_tokens=real)
        _finish(sink, base, ms, flops, peak, peak_extra_bytes=peak_bytes, num_batches=len(batches), error=err,
                options={**opts, **extra_opts})


def run_benchmark(cfg: BenchConfig) -> list[BenchRecord]:
    """Run every model of `cfg` through the chosen scenarios; returns (and writes) the records."""
    device = bench_device(cfg.device)
    if cfg.out:
        check_output_path(cfg.out, "--out")  # before any model is built
    gpu = gpu_slug(device)
    peak = matmul_peak_flops(device=device, n=8192 if device.type == "cuda" else 256)
    print(f"gpu={gpu} matmul peak {peak / 1e12:.1f} TFLOP/s torch {torch.__version__}", flush=True)
    sink = _Sink(cfg.out)
    for name in cfg.models:
        model = build_model(name, device=cfg.device, dtype=cfg.dtype)
        # hf-cb may switch the model's attention implementation: run it after the others.
        ordered = tuple(m for m in cfg.methods if m != "hf-cb")
        if "a" in cfg.scenarios:
            _scenario_a(model, name, _replace(cfg, methods=ordered), peak, gpu, sink, device)
        if "b" in cfg.scenarios:
            _scenario_b(model, name, cfg, peak, gpu, sink, device)
        if "a" in cfg.scenarios and "hf-cb" in cfg.methods:
            _scenario_a(model, name, _replace(cfg, methods=("hf-cb",), warmup=1, reps=max(1, min(cfg.reps, 3))),
                        peak, gpu, sink, device)
        del model
        release_memory(device)
    return sink.records


def _replace(cfg: BenchConfig, **changes: Any) -> BenchConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def merge_records(paths: Sequence[str], out: str = "") -> list[BenchRecord]:
    """Merge record files of several runs on one card into one list (later files replace
    earlier records of the same model, dataset, batch, mode and method), recomputing each
    record's speedups from the padded and paper records of its group; write `out` if given.

    Runs split across processes (e.g. one per model, or a stream rerun) then share baselines.
    """
    from dataclasses import replace

    merged: dict[tuple, BenchRecord] = {}
    for path in paths:
        with open(path) as f:
            for row in json.load(f):
                rec = BenchRecord(**row)
                merged[(rec.gpu, rec.model, rec.dataset, rec.batch, rec.mode, rec.method)] = rec
    records = list(merged.values())
    cards = {r.gpu for r in records}
    if len(cards) > 1:
        raise ValueError(f"records from several cards ({', '.join(sorted(cards))}): merge one card at a time")

    def ms_of(rec: BenchRecord, method: str) -> float | None:
        other = merged.get((rec.gpu, rec.model, rec.dataset, rec.batch, rec.mode, method))
        return other.ms if other is not None else None

    out_records = []
    for rec in records:
        padded, paper = ms_of(rec, "padded"), ms_of(rec, "paper")
        out_records.append(replace(
            rec,
            speedup_vs_padded=(padded / rec.ms) if (padded and rec.ms and rec.method != "padded") else None,
            speedup_vs_paper=(paper / rec.ms) if (paper and rec.ms and rec.method != "paper") else None,
        ))
    order = {m: i for i, m in enumerate(METHOD_NAMES)}
    out_records.sort(key=lambda r: (r.model, r.dataset, r.batch, MODES.index(r.mode), order[r.method]))
    if out:
        with open(out, "w") as f:
            json.dump([asdict(r) for r in out_records], f, indent=1)
    return out_records
