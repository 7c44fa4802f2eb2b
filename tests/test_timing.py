"""How benchmark numbers are measured (gpu_runner.bench.timing): the CPU paths and the argument
checks here; `time_graph` on a GPU where one is present."""

from __future__ import annotations

import pytest
import torch

from gpu_runner.bench.timing import Timing, kernel_times, time_calls, time_graph


def test_time_calls_runs_warmup_then_reps_on_cpu():
    calls = []
    timing = time_calls(lambda: calls.append(1), device=torch.device("cpu"), warmup=2, reps=5)
    assert len(calls) == 7 and len(timing.times_ms) == 5
    assert timing.min_ms <= timing.median_ms <= timing.max_ms


def test_kernel_times_names_the_operators_per_call_on_cpu():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    times = kernel_times(lambda: (a @ b).relu_(), device=torch.device("cpu"), warmup=1, reps=3)
    assert "aten::mm" in times and "aten::relu_" in times
    assert times["aten::mm"].count == 1  # per call, not per profiled run
    assert all(t.ms > 0 for t in times.values())
    assert list(times.values()) == sorted(times.values(), key=lambda t: -t.ms)  # largest first


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="reps"):
        time_calls(lambda: None, device=torch.device("cpu"), reps=0)
    with pytest.raises(ValueError, match="at least one"):
        Timing(())
    with pytest.raises(ValueError, match="CUDA"):
        time_graph(lambda: None, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="reps"):
        kernel_times(lambda: None, device=torch.device("cpu"), reps=0)


@pytest.mark.gpu
def test_time_graph_replays_the_captured_calls():
    dev = torch.device("cuda")
    x = torch.zeros(4, device=dev)
    timing = time_graph(lambda: x.add_(1), device=dev, calls=3, warmup=1, reps=4)
    torch.cuda.synchronize()
    # one eager warm-up call, then 1 + 4 replays of 3 captured calls each
    assert x[0].item() == 1 + 3 * (1 + 4)
    assert len(timing.times_ms) == 4 and timing.min_ms > 0
    with pytest.raises(ValueError, match="calls"):
        time_graph(lambda: None, device=dev, calls=0)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        x.mul_(2)
    kernels = kernel_times(graph.replay, device=dev, warmup=0, reps=2)  # kernels inside a graph count
    assert kernels and all(k.count == 1 for k in kernels.values())
