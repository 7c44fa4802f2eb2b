"""Which packed rows each rank runs: the assignment strategies and their partition algorithms.

Pure numpy (no torch, no process group), so every rule here is testable on a laptop. A
strategy says which packer makes the rows (`packer`) and how rows go to ranks (`assign`):

  padded-rr      one prompt per row (the `pad` packer), rows dealt round-robin: each rank
                 runs a plain padded batch, the data-parallel baseline without prepacking
  packed-rr      FFD rows at capacity, dealt round-robin by bin index (prepacking, no balance)
  cost-balanced  FFD rows at capacity, partitioned so that the modeled busy time per rank
                 (sum of the cost model's per-row seconds) is balanced: LPT, Karmarkar-Karp
                 (largest differencing, k-way) or the best of both and round-robin ("best",
                 the default: never modeled worse than packed-rr)
  prompt-balanced  cost-balanced at prompt granularity (one prompt per "row", `pad`): for
                 executors that ignore rows (the PrefillEngine runs a rank's prompts as one
                 flat varlen row), where whole packed rows are too coarse a unit to balance

`STRATEGIES` is the one registry; `make_strategy(name, **params)` builds one and
`register_strategy` plugs in a new one. `plan_assignment` packs the lengths with the
strategy's packer, prices the rows with a `simulator.CostModel` and returns the
`(Packing, Assignment)` pair every rank computes identically.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Protocol, Sequence

import numpy as np

import packers
from packers import Packing
from simulator.lookup import build

__all__ = [
    "PARTITIONERS",
    "STRATEGIES",
    "Assignment",
    "AssignmentStrategy",
    "CostBalanced",
    "PackedRoundRobin",
    "PaddedRoundRobin",
    "PromptBalanced",
    "available_strategies",
    "karmarkar_karp_partition",
    "lpt_partition",
    "make_strategy",
    "plan_assignment",
    "register_strategy",
    "round_robin_partition",
]

RankBins = tuple[tuple[int, ...], ...]


def _costs(costs_s: Sequence[float] | np.ndarray, num_ranks: int) -> np.ndarray:
    if isinstance(num_ranks, bool) or not isinstance(num_ranks, (int, np.integer)) or num_ranks < 1:
        raise ValueError(f"num_ranks must be a positive integer, got {num_ranks!r}")
    arr = np.asarray(costs_s, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"costs must be a flat sequence, got shape {arr.shape}")
    if arr.size and not (np.isfinite(arr).all() and (arr >= 0).all()):
        raise ValueError("costs must be finite and >= 0")
    return arr


def _sorted_parts(parts: Sequence[Sequence[int]]) -> RankBins:
    return tuple(tuple(sorted(p)) for p in parts)


def round_robin_partition(costs_s: Sequence[float], num_ranks: int) -> RankBins:
    """Item i goes to rank i mod num_ranks (costs are ignored; only their count matters)."""
    arr = _costs(costs_s, num_ranks)
    return tuple(tuple(range(r, arr.size, num_ranks)) for r in range(num_ranks))


def lpt_partition(costs_s: Sequence[float], num_ranks: int) -> RankBins:
    """Longest processing time first: items by decreasing cost (ties: lower index first),
    each to the currently least-loaded rank (ties: lower rank). Makespan <= 4/3 - 1/(3k) of
    the optimum. Returns the item indices of each rank, ascending."""
    arr = _costs(costs_s, num_ranks)
    heap = [(0.0, r) for r in range(num_ranks)]
    parts: list[list[int]] = [[] for _ in range(num_ranks)]
    for i in np.argsort(-arr, kind="stable").tolist():
        load, r = heapq.heappop(heap)
        parts[r].append(i)
        heapq.heappush(heap, (load + float(arr[i]), r))
    return _sorted_parts(parts)


def karmarkar_karp_partition(costs_s: Sequence[float], num_ranks: int) -> RankBins:
    """Karmarkar-Karp largest differencing method, k-way.

    Each item starts as a k-tuple of subsets (the item alone, then k - 1 empty subsets).
    Repeatedly the two tuples with the largest spread (max - min subset sum) are merged:
    the largest subset of one joins the smallest of the other, and so on, which cancels
    the big differences first. The last tuple is the partition; subsets are then given to
    ranks in order of decreasing load (rank 0 the heaviest). Deterministic: ties break on
    creation order. Returns the item indices of each rank, ascending."""
    arr = _costs(costs_s, num_ranks)
    k = num_ranks
    if arr.size == 0:
        return tuple(() for _ in range(k))
    heap: list[tuple[float, int, list[tuple[float, list[int]]]]] = []
    counter = 0
    for i in np.argsort(-arr, kind="stable").tolist():
        subsets = [(float(arr[i]), [i])] + [(0.0, []) for _ in range(k - 1)]
        heap.append((-float(arr[i]), counter, subsets))
        counter += 1
    heapq.heapify(heap)
    while len(heap) > 1:
        _, _, a = heapq.heappop(heap)
        _, _, b = heapq.heappop(heap)
        # a and b are sorted by decreasing sum: pair a's largest with b's smallest
        merged = [(sa + sb, ia + ib) for (sa, ia), (sb, ib) in zip(a, reversed(b))]
        merged.sort(key=lambda s: -s[0])
        heapq.heappush(heap, (-(merged[0][0] - merged[-1][0]), counter, merged))
        counter += 1
    return _sorted_parts([items for _, items in heap[0][2]])


def _makespan(costs: np.ndarray, parts: RankBins) -> float:
    return max((float(costs[list(p)].sum()) if p else 0.0) for p in parts)


def _best_partition(costs_s: Sequence[float], num_ranks: int) -> RankBins:
    """The lowest-makespan partition of LPT, Karmarkar-Karp and round-robin (earlier on a
    tie), so cost balancing never models worse than dealing the rows round-robin."""
    arr = _costs(costs_s, num_ranks)
    candidates = [f(arr, num_ranks) for f in (lpt_partition, karmarkar_karp_partition, round_robin_partition)]
    return min(candidates, key=lambda parts: _makespan(arr, parts))


# name -> partition function (costs_s, num_ranks) -> item indices per rank
PARTITIONERS: dict[str, Callable[[Sequence[float], int], RankBins]] = {
    "lpt": lpt_partition,
    "kk": karmarkar_karp_partition,
    "best": _best_partition,
    "round-robin": round_robin_partition,
}


@dataclass(frozen=True)
class Assignment:
    """Packed rows (bins of one `Packing`) given to the ranks of a process group.

    strategy:    the strategy's registry name.
    rank_bins:   rank_bins[r] = bin indices rank r runs, ascending; every bin of the packing
                 appears exactly once over all ranks; a rank may get none.
    row_costs_s: modeled seconds of each bin (`CostModel.row_times_s`), bin order.
    Invariants are checked on construction (`ValueError`).
    """

    strategy: str
    rank_bins: RankBins
    row_costs_s: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "rank_bins", tuple(tuple(int(b) for b in p) for p in self.rank_bins))
        object.__setattr__(self, "row_costs_s", tuple(float(c) for c in self.row_costs_s))
        if not self.rank_bins:
            raise ValueError("an assignment needs at least one rank")
        flat = sorted(b for p in self.rank_bins for b in p)
        if flat != list(range(len(self.row_costs_s))):
            raise ValueError(f"rank_bins must hold every bin 0..{len(self.row_costs_s) - 1} exactly once")
        if any(list(p) != sorted(p) for p in self.rank_bins):
            raise ValueError("each rank's bins must be in ascending order")

    @property
    def world_size(self) -> int:
        return len(self.rank_bins)

    @property
    def rank_loads_s(self) -> tuple[float, ...]:
        """Modeled busy seconds of each rank: the sum of its rows' costs."""
        return tuple(sum(self.row_costs_s[b] for b in p) for p in self.rank_bins)

    @property
    def makespan_s(self) -> float:
        """Modeled seconds of the slowest rank."""
        return max(self.rank_loads_s)

    @property
    def imbalance(self) -> float:
        """makespan / mean rank load (1.0 = perfectly balanced); 1.0 with no cost at all."""
        total = sum(self.rank_loads_s)
        return self.makespan_s * self.world_size / total if total > 0 else 1.0

    def rank_prompts(self, packing: Packing, rank: int) -> tuple[int, ...]:
        """Prompt indices (caller's numbering) that `rank` runs, in placement order."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")
        if packing.num_bins != len(self.row_costs_s):
            raise ValueError(
                f"the packing has {packing.num_bins} bins, the assignment {len(self.row_costs_s)}"
            )
        return tuple(i for b in self.rank_bins[rank] for i in packing.bins[b])

    def digest(self, packing: Packing) -> int:
        """A 63-bit fingerprint of (lengths, bins, rank_bins): equal on ranks that agree."""
        import hashlib

        h = hashlib.blake2b(digest_size=8)
        h.update(np.asarray(packing.lengths, dtype=np.int64).tobytes())
        for b in packing.bins:
            h.update(np.asarray(b, dtype=np.int64).tobytes() + b"|")
        for p in self.rank_bins:
            h.update(np.asarray(p, dtype=np.int64).tobytes() + b"#")
        return int.from_bytes(h.digest(), "little") >> 1


class AssignmentStrategy(Protocol):
    """A rule for spreading packed rows over ranks.

    name:   registry name (class attribute).
    packer: registry name of the packer that makes the rows (`packers.make_packer`).
    assign(row_costs_s, world_size) -> bins of each rank (ascending tuples), every bin once.
    Deterministic: every rank calls it on the same costs and must get the same answer.
    """

    name: ClassVar[str]
    packer: str

    def assign(self, row_costs_s: Sequence[float], world_size: int) -> RankBins: ...


STRATEGIES: dict[str, type] = {}


def register_strategy(cls: type) -> type:
    """Class decorator: add a strategy class to `STRATEGIES` under its `name`."""
    name = getattr(cls, "name", "")
    if not name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if name in STRATEGIES and STRATEGIES[name] is not cls:
        raise ValueError(f"strategy name {name!r} is already registered by {STRATEGIES[name].__qualname__}")
    STRATEGIES[name] = cls
    return cls


def _check_packer(packer: str) -> None:
    # Built-in names first: scanning the installed entry points costs ~10 ms, and a strategy
    # may be built on every distributed call.
    if isinstance(packer, str) and packer in packers.PACKERS:
        return
    if not isinstance(packer, str) or packer not in packers.available_packers():
        raise ValueError(f"unknown packer {packer!r}; valid: {', '.join(packers.available_packers())}")


@register_strategy
@dataclass(frozen=True)
class PackedRoundRobin:
    """`packed-rr`: packed rows (`ffd`) dealt round-robin by bin index."""

    name: ClassVar[str] = "packed-rr"
    packer: str = "ffd"

    def __post_init__(self) -> None:
        _check_packer(self.packer)

    def assign(self, row_costs_s: Sequence[float], world_size: int) -> RankBins:
        return round_robin_partition(row_costs_s, world_size)


@register_strategy
@dataclass(frozen=True)
class PaddedRoundRobin(PackedRoundRobin):
    """`padded-rr`: one prompt per row (`pad`), prompts dealt round-robin (prompt i to rank i mod W)."""

    name: ClassVar[str] = "padded-rr"
    packer: str = "pad"


@register_strategy
@dataclass(frozen=True)
class CostBalanced:
    """`cost-balanced`: packed rows (`ffd`) partitioned on their modeled seconds by `method`
    (a `PARTITIONERS` name: "best" = the best of LPT, Karmarkar-Karp and round-robin, "lpt", "kk")."""

    name: ClassVar[str] = "cost-balanced"
    packer: str = "ffd"
    method: str = "best"

    def __post_init__(self) -> None:
        _check_packer(self.packer)
        if self.method not in PARTITIONERS:
            raise ValueError(f"unknown partition method {self.method!r}; valid: {', '.join(PARTITIONERS)}")

    def assign(self, row_costs_s: Sequence[float], world_size: int) -> RankBins:
        return PARTITIONERS[self.method](row_costs_s, world_size)


@register_strategy
@dataclass(frozen=True)
class PromptBalanced(CostBalanced):
    """`prompt-balanced`: prompts (`pad`: one per row) partitioned on their modeled seconds, for
    executors that ignore rows; with a row-running executor each prompt would be a padded row."""

    name: ClassVar[str] = "prompt-balanced"
    packer: str = "pad"


def available_strategies() -> list[str]:
    return list(STRATEGIES)


def make_strategy(name: str | AssignmentStrategy, **params: Any) -> AssignmentStrategy:
    """Build a strategy by registry name with `params`; an instance passes through.
    `ValueError` for an unknown name (listing the known ones) or a bad parameter."""
    if not isinstance(name, str):
        if hasattr(name, "assign") and hasattr(name, "packer"):
            return name
        raise ValueError(f"strategy must be a registry name or have assign() and packer; got {name!r}")
    return build(STRATEGIES, name, "strategy", fold_case=False, **params)


def plan_assignment(
    lengths: Sequence[int],
    world_size: int,
    *,
    strategy: str | AssignmentStrategy = "cost-balanced",
    cost_model: Any,
    capacity: int | str = "max",
) -> tuple[Packing, Assignment]:
    """Pack `lengths` with the strategy's packer and assign the rows to `world_size` ranks.

    cost_model: anything with `row_times_s(packing) -> (num_bins,) seconds`, normally a
                `simulator.CostModel` of the model, GPU and attention backend that will run.
    capacity:   "max" (the longest prompt) or an int >= it.
    Returns (packing, assignment); pure and deterministic for the same inputs.
    """
    strat = make_strategy(strategy)
    lengths = packers.validate_lengths(lengths)
    longest = int(lengths.max())
    cap = longest if capacity == "max" else packers.validate_capacity(capacity)
    if cap < longest:
        raise ValueError(f"capacity {cap} is below the longest prompt ({longest} tokens)")
    packing = packers.make_packer(strat.packer).pack(lengths.tolist(), cap)
    costs = np.asarray(cost_model.row_times_s(packing), dtype=np.float64)
    if costs.shape != (packing.num_bins,):
        raise ValueError(f"row_times_s gave shape {costs.shape} for {packing.num_bins} rows")
    rank_bins = strat.assign(costs, world_size)
    if len(rank_bins) != world_size:
        raise ValueError(f"strategy {strat.name!r} returned {len(rank_bins)} ranks for {world_size}")
    return packing, Assignment(strategy=strat.name, rank_bins=rank_bins, row_costs_s=tuple(costs.tolist()))
