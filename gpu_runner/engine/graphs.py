"""CUDA graph capture for the engine's prefill and decode steps: one memory pool and one
warm-up per captured family (the engine's row buckets, the decode step's batch buckets)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class GraphCapture:
    """Captures forwards into CUDA graphs that share one memory pool. The first capture
    runs its forward once on a side stream first, so Triton compiles and cuBLAS / flash
    initialise outside the capture."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.warm = False

    def __call__(self, forward: Callable[[], torch.Tensor]) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """The graph of `forward` and the output tensor it writes on each replay."""
        if not self.warm:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                forward()
            torch.cuda.current_stream().wait_stream(side)
            self.warm = True
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = forward()
        return graph, out
