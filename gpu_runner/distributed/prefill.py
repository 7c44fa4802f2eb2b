"""Data-parallel prepacked prefill inside an initialised process group.

`distributed_prefill(model, prompts, ...)` is called by every rank of a group with the same
prompts; each rank holds a full replica of the model. Every rank packs the prompts and
assigns the packed rows to ranks with the same deterministic strategy (`assign.py`), checks
with one tiny all_gather that all ranks agree, runs only its own rows through an executor
(the prepacked runner, or the `PrefillEngine`), and the per-prompt next-token logits are
gathered back in the caller's order: to every rank, or to one. KV caches stay on the rank
that computed them (`local_kv`), or are gathered as CPU tensors on request (`gather_kv`).

Uneven shapes: ranks run different numbers of prompts; their logits are padded to the
largest count (known to every rank from the assignment) before one all_gather / gather.
Collectives run on CUDA tensors under NCCL and on CPU tensors otherwise (gloo).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Sequence

import torch
import torch.distributed as dist

from gpu_runner.runner import prefill, sub_packing
from gpu_runner.validate import validate_prompts
from packers import Packing
from simulator.assign import Assignment, AssignmentStrategy, make_strategy, plan_assignment
from simulator.names import AUTO, VARLEN

__all__ = [
    "DistributedPrefillResult",
    "EngineExecutor",
    "RankExecutor",
    "RunnerExecutor",
    "default_cost_model",
    "distributed_prefill",
    "local_packing",
]

KVList = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (key, value), each [kv_heads, len, head_dim]



class RankExecutor(Protocol):
    """Runs one rank's share of the prefill.

    uses_rows: True when the packed rows are what runs (a rank's cost is its rows'); False
               for executors that ignore rows (then balance prompts: "prompt-balanced").
    attention: the simulator attention backend that prices this executor's rows (a name,
               "dense", "flex", "varlen", or a `simulator.attention` backend instance such
               as varlen with pad_rows=True), used when no cost model is given.
    run(model, prompts, packing, return_kv) -> (logits [n, vocab], kv per prompt or None),
        prompts and the rows of `packing` in the rank's local numbering, results in the
        order of `prompts`. Must accept being called with the same inputs repeatedly.
    """

    uses_rows: ClassVar[bool]

    def attention(self, model: torch.nn.Module) -> Any: ...

    def run(
        self, model: torch.nn.Module, prompts: list[list[int]], packing: Packing, return_kv: bool
    ) -> tuple[torch.Tensor, list[KVList] | None]: ...


@dataclass(frozen=True)
class RunnerExecutor:
    """The prepacked runner (`gpu_runner.prefill`) on the rank's rows as packed.

    backend: "auto", "dense", "flex", "varlen" or any registered runner backend.
    memory_budget_bytes / row_len / num_rows: passed to `prefill` (split or fix forwards).
    """

    uses_rows: ClassVar[bool] = True
    backend: str = AUTO
    memory_budget_bytes: int | None = None
    row_len: int | str | None = None
    num_rows: int | None = None

    def backend_name(self, model: torch.nn.Module) -> str:
        """The runner backend this executor runs on `model`: `backend`, with "auto" resolved
        once per model by device and dtype (not per rank's packing), so that the rows are
        costed with the backend that runs them."""
        from gpu_runner.attention import auto_backend_name

        if self.backend != AUTO:
            return self.backend
        p = next(p for p in model.parameters() if p.is_floating_point())
        return auto_backend_name(p.device, p.dtype)

    def attention(self, model: torch.nn.Module) -> Any:
        from simulator.attention import ATTENTION, make_attention

        name = self.backend_name(model)
        if name not in ATTENTION:
            raise ValueError(f"runner backend {name!r} has no simulator cost model ({', '.join(ATTENTION)}): "
                             "pass a cost_model to price its rows")
        # The runner's varlen backend pads every packed row of a forward to one length for
        # the linear layers: a row costs its padded length, not its load.
        return make_attention(name, pad_rows=True) if name == VARLEN else name

    def run(
        self, model: torch.nn.Module, prompts: list[list[int]], packing: Packing, return_kv: bool
    ) -> tuple[torch.Tensor, list[KVList] | None]:
        res = prefill(
            model, prompts, packing=packing, backend=self.backend_name(model), return_kv=return_kv,
            memory_budget_bytes=self.memory_budget_bytes, row_len=self.row_len, num_rows=self.num_rows,
        )  # fmt: skip
        return res.logits, (None if res.kv is None else [res.kv[i] for i in range(len(prompts))])


@dataclass
class EngineExecutor:
    """The fast path: one `PrefillEngine` per rank (built lazily on first use, kept for later
    calls so its CUDA graphs stay warm). Rows do not matter to it (one flat varlen row of
    the rank's prompts); the assignment decides only which prompts a rank gets."""

    uses_rows: ClassVar[bool] = False
    options: dict[str, Any] = field(default_factory=dict)
    engine: Any = None

    def attention(self, model: torch.nn.Module) -> str:
        return VARLEN

    def run(
        self, model: torch.nn.Module, prompts: list[list[int]], packing: Packing, return_kv: bool
    ) -> tuple[torch.Tensor, list[KVList] | None]:
        if self.engine is None or self.engine.model is not model:
            from gpu_runner.engine import PrefillEngine

            self.engine = PrefillEngine(model, **self.options)
        out = self.engine.prefill(prompts)
        if not return_kv:
            return out.logits, None
        out = out.clone()  # the next call overwrites the engine's buffers
        return out.logits, [out.prompt_kv(i) for i in range(out.num_prompts)]


@dataclass(frozen=True)
class DistributedPrefillResult:
    """What one rank gets back from `distributed_prefill` (N prompts, caller's order).

    logits:        [N, vocab] next-token logits of every prompt, on this rank's
                   communication device (CUDA under NCCL, CPU under gloo); None on ranks
                   other than `gather_to` when gathering to one rank.
    kv:            with gather_kv: kv[i] = prompt i's per-layer (key, value) as CPU tensors,
                   on the receiving rank(s); otherwise None.
    local_kv:      with return_kv: {prompt index: its per-layer (key, value)} for the prompts
                   this rank ran (on its device); otherwise None.
    local_indices: prompt indices this rank ran, in its local order.
    packing, assignment: the plan every rank agreed on.
    busy_ms:       with time_ranks: each rank's time in its executor, ms; otherwise None.
    phases_ms:     with time_ranks: this rank's host wall ms of "plan" (validation, packing,
                   assignment and the agreement check, which waits for the slowest rank's
                   plan), "run" (its executor, to a synced device) and "gather" (the logits
                   gather, to a synced device); otherwise None.
    """

    logits: torch.Tensor | None
    kv: list[KVList] | None
    local_kv: dict[int, KVList] | None
    local_indices: tuple[int, ...]
    packing: Packing
    assignment: Assignment
    busy_ms: tuple[float, ...] | None = None
    phases_ms: dict[str, float] | None = None


def local_packing(packing: Packing, bins: Sequence[int]) -> tuple[tuple[int, ...], Packing]:
    """The prompts (caller's indices, placement order) of `bins` and their packing alone,
    renumbered 0..n-1 in that order. `ValueError` for no bins."""
    if not any(packing.bins[b] for b in bins):
        raise ValueError("no bins: nothing to pack")
    members, sub = sub_packing(packing, bins)
    return tuple(members), sub


def _gpu_name(device: torch.device) -> str:
    """The table GPU a rank's costs are priced on: the CUDA card (`ValueError` for one the
    simulator's table lacks); off CUDA "h100", as only relative row costs matter there."""
    from simulator.gpus import match_gpu

    return match_gpu(torch.cuda.get_device_name(device)) if device.type == "cuda" else "h100"


def default_cost_model(model: torch.nn.Module, attention: Any) -> Any:
    """A `simulator.CostModel` of this model's shape (`ModelSpec.from_hf_config`), the GPU
    it sits on (H100 constants off CUDA; a card the table lacks is a ValueError) and `attention`."""
    from simulator import CostModel, ModelSpec

    p = next(p for p in model.parameters() if p.is_floating_point())
    spec = ModelSpec.from_hf_config(model.config, name=type(model).__name__)
    return CostModel(spec, _gpu_name(p.device), attention)


def _comm_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _global_rank(group: Any, group_rank: int) -> int:
    return group_rank if group is None else dist.get_global_rank(group, group_rank)


def _check_agreement(assignment: Assignment, packing: Packing, group: Any, device: torch.device) -> None:
    mine = torch.tensor([assignment.digest(packing)], dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(everyone, mine, group=group)
    if any(int(t.item()) != int(mine.item()) for t in everyone):
        raise RuntimeError(
            "ranks disagree on the prompts or the assignment: every rank must call "
            "distributed_prefill with the same prompts, strategy, capacity and cost model"
        )


def distributed_prefill(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    strategy: str | AssignmentStrategy = "cost-balanced",
    *,
    capacity: int | str = "max",
    executor: RankExecutor | None = None,
    cost_model: Any = None,
    group: Any = None,
    gather_to: int | None = None,
    return_kv: bool = False,
    gather_kv: bool = False,
    time_ranks: bool = False,
) -> DistributedPrefillResult:
    """Prefill `prompts` data-parallel over the ranks of `group` (default: the world).

    Every rank of the group must call this with the same prompts and options; each holds its
    own replica of `model` on its device.
    strategy:   `STRATEGIES` name ("padded-rr", "packed-rr", "cost-balanced", "prompt-balanced")
                or an instance.
    capacity:   tokens per packed row: "max" (the longest prompt) or an int >= it.
    executor:   runs this rank's rows (default `RunnerExecutor()`: the prepacked runner, "auto").
    cost_model: prices rows for cost balancing (`row_times_s(packing)`); default
                `default_cost_model(model, executor.attention(model))`.
    gather_to:  None: logits (and gathered KV) to every rank; a group rank: to that rank only.
    return_kv:  keep each prompt's KV on the rank that ran it (`local_kv`).
    gather_kv:  also send every prompt's KV (as CPU tensors, pickled) to the receiving
                rank(s): slow, for small batches and tests; implies return_kv.
    time_ranks: measure each rank's executor time (CUDA events / host clock) into `busy_ms`.
    Raises `ValueError` on bad input (before any collective, identically on every rank),
    `RuntimeError` if the ranks' plans disagree (on every rank). An error inside one rank's
    executor alone (e.g. out of memory) leaves the other ranks waiting in the gather until
    the process group's timeout.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "distributed_prefill needs an initialised process group "
            "(see gpu_runner.distributed.init_distributed)"
        )
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if gather_to is not None and not (isinstance(gather_to, int) and 0 <= gather_to < world):
        raise ValueError(f"gather_to must be None or a group rank in 0..{world - 1}, got {gather_to!r}")
    return_kv = return_kv or gather_kv
    entry_s = time.perf_counter()
    prompts, lengths = validate_prompts(model, prompts)
    executor = RunnerExecutor() if executor is None else executor
    strat = make_strategy(strategy)
    if cost_model is None:
        cost_model = default_cost_model(model, executor.attention(model))
    packing, assignment = plan_assignment(
        lengths, world, strategy=strat, cost_model=cost_model, capacity=capacity
    )
    device = _comm_device(group)
    _check_agreement(assignment, packing, group, device)

    p = next(p for p in model.parameters() if p.is_floating_point())
    vocab = model.get_output_embeddings().weight.shape[0]
    members: tuple[int, ...] = ()
    local_logits = torch.empty(0, vocab, dtype=p.dtype, device=device)
    local_kv: list[KVList] | None = [] if return_kv else None
    start_s = time.perf_counter()  # the agreement check has synced this rank's device
    events = None
    if time_ranks and p.device.type == "cuda":
        events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
        events[0].record()
    if assignment.rank_bins[rank]:
        members, sub = local_packing(packing, assignment.rank_bins[rank])
        local_logits, kv = executor.run(model, [prompts[i] for i in members], sub, return_kv)
        local_logits = local_logits.to(device=device, dtype=p.dtype)
        if return_kv:
            local_kv = kv
    busy: tuple[float, ...] | None = None
    if time_ranks:
        if events is not None:
            events[1].record()
            events[1].synchronize()
            mine_ms = events[0].elapsed_time(events[1])
        else:
            mine_ms = (time.perf_counter() - start_s) * 1e3
        all_ms = [torch.zeros(1, dtype=torch.float64, device=device) for _ in range(world)]
        dist.all_gather(all_ms, torch.tensor([mine_ms], dtype=torch.float64, device=device), group=group)
        busy = tuple(float(t.item()) for t in all_ms)
    run_end_s = time.perf_counter()

    logits = _gather_logits(local_logits, assignment, packing, group, gather_to, device)
    phases: dict[str, float] | None = None
    if time_ranks:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        phases = {"plan": (start_s - entry_s) * 1e3, "run": (run_end_s - start_s) * 1e3,
                  "gather": (time.perf_counter() - run_end_s) * 1e3}  # fmt: skip
    kv_all = _gather_kv(local_kv, members, packing.num_prompts, group, gather_to) if gather_kv else None
    return DistributedPrefillResult(
        logits=logits,
        kv=kv_all,
        local_kv=dict(zip(members, local_kv)) if local_kv is not None else None,
        local_indices=members,
        packing=packing,
        assignment=assignment,
        busy_ms=busy,
        phases_ms=phases,
    )


def _gather_logits(
    local: torch.Tensor,
    assignment: Assignment,
    packing: Packing,
    group: Any,
    gather_to: int | None,
    device: torch.device,
) -> torch.Tensor | None:
    """Pad each rank's [n_r, V] to the largest n_r, gather, and scatter into caller order."""
    world, rank = assignment.world_size, dist.get_rank(group)
    per_rank = [assignment.rank_prompts(packing, r) for r in range(world)]
    width = max(len(m) for m in per_rank)
    padded = local.new_zeros(width, local.shape[1])
    padded[: local.shape[0]] = local
    receives = gather_to is None or gather_to == rank
    buffers = [torch.empty_like(padded) for _ in range(world)] if receives else None
    if gather_to is None:
        dist.all_gather(buffers, padded, group=group)
    else:
        dist.gather(padded, buffers, dst=_global_rank(group, gather_to), group=group)
    if not receives:
        return None
    out = padded.new_empty(packing.num_prompts, padded.shape[1])
    for r, m in enumerate(per_rank):
        if m:
            out[torch.as_tensor(m, device=device)] = buffers[r][: len(m)]
    return out


def _gather_kv(
    local_kv: list[KVList] | None,
    members: tuple[int, ...],
    num_prompts: int,
    group: Any,
    gather_to: int | None,
) -> list[KVList] | None:
    """Every prompt's KV as CPU tensors on the receiving rank(s), via (all_)gather_object."""
    mine = (members, [[(k.cpu(), v.cpu()) for k, v in layers] for layers in (local_kv or [])])
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if gather_to is None:
        parts: list[Any] = [None] * world
        dist.all_gather_object(parts, mine, group=group)
    else:
        parts = [None] * world if rank == gather_to else None
        dist.gather_object(mine, parts, dst=_global_rank(group, gather_to), group=group)
        if parts is None:
            return None
    out: list[Any] = [None] * num_prompts
    for idx, kvs in parts:
        for i, layers in zip(idx, kvs):
            out[i] = layers
    return out
