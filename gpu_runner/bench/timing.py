"""Timing and memory measurement for benchmarks: CUDA events, peak memory, matmul peak.

This module owns how a number is measured, so every method in a benchmark is measured the
same way: warm-up calls first (compilation, graph capture, allocator growth stay out),
then `reps` calls, each between two CUDA events on the current stream (host time with a
device sync on CPU), median reported. Memory is the peak of `torch.cuda.max_memory_allocated`
over the measured calls minus what was allocated before them (the weights).
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

__all__ = ["KernelTime", "Timing", "kernel_times", "matmul_peak_flops", "matmul_sustained_flops", "peak_extra_bytes",
           "release_memory", "time_calls", "time_graph", "wall_clock_s"]


@dataclass(frozen=True)
class Timing:
    """Per-call times of one measured function, milliseconds."""

    times_ms: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.times_ms or min(self.times_ms) < 0:
            raise ValueError("a Timing needs at least one non-negative time")

    @property
    def median_ms(self) -> float:
        return float(statistics.median(self.times_ms))

    @property
    def min_ms(self) -> float:
        return float(min(self.times_ms))

    @property
    def max_ms(self) -> float:
        return float(max(self.times_ms))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], *, device: torch.device, warmup: int = 2, reps: int = 10) -> Timing:
    """Time `fn()` `reps` times after `warmup` calls; each call's result is dropped after it.

    On CUDA each call sits between two events on the current stream and the host waits
    once at the end, so host-side work inside `fn` counts only where it delays the GPU.
    """
    if warmup < 0 or reps < 1:
        raise ValueError(f"need warmup >= 0 and reps >= 1, got {warmup}, {reps}")
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type != "cuda":
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return Timing(tuple(times))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        out = fn()
        end.record()
        del out
    torch.cuda.synchronize(device)
    return Timing(tuple(s.elapsed_time(e) for s, e in events))



def time_graph(fn: Callable[[], Any], *, device: torch.device, calls: int = 1, warmup: int = 3, reps: int = 20) -> Timing:
    """Per-call times of `fn()` replayed from one CUDA graph (for kernel probes: no launch gaps).

    `fn` runs once on a side stream first (compilation, library handles and allocations stay
    out of the capture), then `calls` back-to-back calls are captured into one graph, whose
    replays are timed as `time_calls` times a function; each time is divided by `calls`.
    ValueError off CUDA (graphs need it).
    """
    if device.type != "cuda":
        raise ValueError(f"time_graph needs a CUDA device, got {device}")
    if calls < 1:
        raise ValueError(f"calls must be >= 1, got {calls}")
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    timing = time_calls(graph.replay, device=device, warmup=warmup, reps=reps)
    return Timing(tuple(t / calls for t in timing.times_ms))


@dataclass(frozen=True)
class KernelTime:
    """One kernel's (CUDA) or operator's (CPU: self time) share of a profiled call."""

    ms: float  # time per call of the profiled function, milliseconds
    count: float  # launches per call


def kernel_times(fn: Callable[[], Any], *, device: torch.device, warmup: int = 2, reps: int = 1) -> dict[str, KernelTime]:
    """Where the time of `fn()` goes, by kernel name: `warmup` calls, then `reps` calls under
    torch.profiler (CUDA: device kernels, those inside replayed CUDA graphs included; CPU:
    operators' self time), averaged per call; largest first, names with no time left out."""
    if warmup < 0 or reps < 1:
        raise ValueError(f"need warmup >= 0 and reps >= 1, got {warmup}, {reps}")
    for _ in range(warmup):
        fn()
    _sync(device)
    cuda = device.type == "cuda"
    activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        for _ in range(reps):
            fn()
        _sync(device)
    out = {}
    for ev in prof.key_averages():
        us = ev.device_time_total if cuda else ev.self_cpu_time_total
        if us > 0:
            out[ev.key] = KernelTime(us / 1e3 / reps, ev.count / reps)
    return dict(sorted(out.items(), key=lambda kv: -kv[1].ms))


def release_memory(device: torch.device) -> None:
    """Drop garbage and cached blocks so the next measurement starts from the weights alone."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def peak_extra_bytes(fn: Callable[[], Any], *, device: torch.device) -> tuple[Any, int]:
    """Run `fn()` once; return its result and the peak device memory it allocated on top of
    what was allocated before (0 on CPU, where this is not measured)."""
    if device.type != "cuda":
        return fn(), 0
    release_memory(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    out = fn()
    torch.cuda.synchronize(device)
    return out, int(torch.cuda.max_memory_allocated(device) - base)


def _square_operands(device: torch.device, n: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Two seeded random n x n matrices: the operands of the matmul rate measurements."""
    g = torch.Generator(device=device).manual_seed(0)
    return (torch.randn((n, n), device=device, dtype=dtype, generator=g),
            torch.randn((n, n), device=device, dtype=dtype, generator=g))


def matmul_peak_flops(*, device: torch.device, n: int = 8192, reps: int = 20, dtype: torch.dtype = torch.bfloat16) -> float:
    """Measured dense matmul rate (FLOP/s) of an n x n x n product on random data, median of reps."""
    a, b = _square_operands(device, n, dtype)
    timing = time_calls(partial(torch.matmul, a, b), device=device, warmup=3, reps=reps)
    return 2.0 * n**3 / (timing.median_ms * 1e-3)


def matmul_sustained_flops(*, device: torch.device, seconds: float = 3.0, n: int = 8192,
                           dtype: torch.dtype = torch.bfloat16) -> float:
    """Dense matmul rate (FLOP/s) of n x n x n products run back to back for `seconds`,
    measured over the last third: the rate at the clock the card holds under sustained load
    (an H100 at its 700 W limit runs well below its boost clock, where `matmul_peak_flops`'s
    ~30 ms burst runs; `bench.power`)."""
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    a, b = _square_operands(device, n, dtype)
    out = torch.empty((n, n), device=device, dtype=dtype)
    step = 10  # products between syncs
    _sync(device)
    start = time.perf_counter()
    marks: list[tuple[float, int]] = []  # (time, products so far)
    done = 0
    while not marks or marks[-1][0] - start < seconds:
        for _ in range(step):
            torch.matmul(a, b, out=out)
        _sync(device)
        done += step
        marks.append((time.perf_counter(), done))
    t_end, n_end = marks[-1]
    t0, n0 = next(m for m in marks if m[0] - start >= seconds * 2 / 3 or m is marks[-1])
    if n_end == n0:  # one sync step covers the last third: rate over the whole run
        t0, n0 = start, 0
    return 2.0 * n**3 * (n_end - n0) / (t_end - t0)


def wall_clock_s(fn: Callable[[], Any], *, device: torch.device) -> tuple[Any, float]:
    """Host wall time of `fn()` in seconds, from a synced device to a synced device."""
    _sync(device)
    t0 = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - t0
