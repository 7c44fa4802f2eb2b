"""gpu_runner.distributed: data-parallel prepacked prefill over the GPUs of one host (torch.distributed).

Public API:
  distributed_prefill(model, prompts, strategy="cost-balanced", ...) -> DistributedPrefillResult
      every rank of an initialised group calls it with the same prompts; each runs its share
      of the packed rows; logits come back in the caller's order (all ranks or one), KV on
      request.
  Assignment strategies (pure, no torch work): STRATEGIES registry ("padded-rr", "packed-rr",
      "cost-balanced", "prompt-balanced"), make_strategy, register_strategy, plan_assignment,
      Assignment, and the partition algorithms lpt_partition, karmarkar_karp_partition,
      round_robin_partition.
  Executors: RunnerExecutor (the prepacked runner), EngineExecutor (PrefillEngine).
  Launching: init_distributed, launcher_env, torchrun_command, spawn_local, NVLS_OFF_ENV
      (NVLink multicast stays off in every environment these build).

Modules: prefill (the distributed prefill), launch (process groups). The strategies live in
simulator/assign.py (torch-free) and the multi-GPU benchmark in gpu_runner/bench/multigpu.py.
Importing this package imports no torch: the strategy names resolve from simulator.assign at
once, the torch-side names on first use (module __getattr__).
"""

from importlib import import_module
from typing import Any

from simulator.assign import (
    PARTITIONERS,
    STRATEGIES,
    Assignment,
    AssignmentStrategy,
    available_strategies,
    karmarkar_karp_partition,
    lpt_partition,
    make_strategy,
    plan_assignment,
    register_strategy,
    round_robin_partition,
)

# torch-side names -> the module that defines them, imported on first use
_LAZY = {
    **dict.fromkeys(("NVLS_OFF_ENV", "disable_nvlink_multicast", "free_port", "init_distributed", "launcher_env",
                     "spawn_local", "torchrun_command"), "gpu_runner.distributed.launch"),
    **dict.fromkeys(("DistributedPrefillResult", "EngineExecutor", "RankExecutor", "RunnerExecutor",
                     "default_cost_model", "distributed_prefill", "local_packing"), "gpu_runner.distributed.prefill"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "NVLS_OFF_ENV", "PARTITIONERS", "STRATEGIES", "Assignment", "AssignmentStrategy",
    "DistributedPrefillResult",
    "EngineExecutor", "RankExecutor", "RunnerExecutor", "available_strategies", "default_cost_model",
    "disable_nvlink_multicast", "distributed_prefill", "free_port", "init_distributed",
    "karmarkar_karp_partition",
    "launcher_env", "local_packing", "lpt_partition", "make_strategy", "plan_assignment", "register_strategy",
    "round_robin_partition", "spawn_local", "torchrun_command",
]  # fmt: skip
