"""One vocabulary for how a prefill runs, shared by gpu_runner (runner backends, engine
attention kernels, bench methods, the sweep, distributed executors) and the simulator
(attention cost models). Torch-free: everything imports its names from here.

Attention of packed rows (a `gpu_runner.attention` backend runs it, the simulator's
`attention.AttentionCost` of the same name prices it):
  DENSE   4D block-diagonal causal mask with sdpa (the paper's method)
  FLEX    FlexAttention BlockMask
  VARLEN  flash varlen over the flattened rows
  PADDED  HF on a left-padded batch, one prompt per row (the baseline; priced, not a backend)
  AUTO    the runner's choice among AUTO_CANDIDATES

The engine (`gpu_runner.engine.PrefillEngine`: one flat varlen row, CUDA graphs):
  ENGINE  its name as a PrefillResult backend, a distributed executor and a sweep backend
  its attention kernels: PACKED (Triton, tiles over the flat row), FLASH (torch's flash
  varlen), TORCH (dense-mask sdpa, the CPU reference), or AUTO

Bench methods (`gpu_runner.bench.methods`): PADDED, SORTED (padded after sorting by length,
in micro-batches), PAPER (the runner: FFD rows, DENSE), BEST (the engine), HF_CB (HF
continuous batching).
"""

from __future__ import annotations

__all__ = [
    "AUTO", "AUTO_CANDIDATES", "BENCH_METHODS", "BEST", "DENSE", "ENGINE", "ENGINE_ATTENTION", "FLASH", "FLEX", "GRAPH",
    "HF_CB", "PACKED", "PACKED_ATTENTION", "PADDED", "PAPER", "RUNNER", "SORTED", "TORCH", "VARLEN",
]  # fmt: skip

DENSE = "dense"
FLEX = "flex"
VARLEN = "varlen"
PADDED = "padded"
AUTO = "auto"
PACKED_ATTENTION = (DENSE, FLEX, VARLEN)
# Backends auto may pick, in order of preference when the cost model cannot decide. flex is
# not among them: it compiles per new shape, a cost the per-forward model does not price.
AUTO_CANDIDATES = (VARLEN, DENSE)

RUNNER = "runner"
ENGINE = "engine"
PACKED = "packed"
FLASH = "flash"
TORCH = "torch"
ENGINE_ATTENTION = (AUTO, PACKED, FLASH, TORCH)

SORTED = "sorted"
PAPER = "paper"
BEST = "best"
HF_CB = "hf-cb"
BENCH_METHODS = (PADDED, SORTED, PAPER, BEST, HF_CB)
# the sweep's and experiments' name for ENGINE runs (kept: it is recorded in result CSVs)
GRAPH = "graph"
