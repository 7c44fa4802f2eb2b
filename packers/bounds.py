"""Lower bounds on the number of bins: cheap optimality certificates.

`l1` is the volume bound ceil(sum / C). `l2` is Martello and Toth's L2 bound
(Martello & Toth, "Lower bounds and reduction procedures for the bin packing problem",
1990), which dominates L1 and is tight far more often on mixes with large items.
Both run in O(n log n) with numpy and accept the same inputs as every packer.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from packers.packing import validate_capacity, validate_lengths

__all__ = ["l1", "l2", "lower_bound"]


def _ceil_div(a: np.ndarray | int, b: int) -> np.ndarray | int:
    return -(-a // b)


def l1(lengths: Sequence[int] | np.ndarray, capacity: int) -> int:
    """L1 = ceil(sum(lengths) / capacity)."""
    capacity = validate_capacity(capacity)
    arr = validate_lengths(lengths, capacity)
    return int(_ceil_div(int(arr.sum()), capacity))


def l2(lengths: Sequence[int] | np.ndarray, capacity: int) -> int:
    """Martello-Toth L2 = max over alpha in [0, C/2] of

        |J1| + |J2| + max(0, ceil((sum(J3) - (|J2| * C - sum(J2))) / C))

    with J1 = {l > C - alpha}, J2 = {C/2 < l <= C - alpha}, J3 = {alpha <= l <= C/2}.
    Only alpha = 0 and the distinct lengths <= C/2 need evaluating. Never below L1.
    """
    capacity = validate_capacity(capacity)
    arr = np.sort(validate_lengths(lengths, capacity))
    n = arr.size
    prefix = np.concatenate(([0], np.cumsum(arr)))

    def count_le(x: np.ndarray) -> np.ndarray:
        return np.searchsorted(arr, x, side="right")

    def count_lt(x: np.ndarray) -> np.ndarray:
        return np.searchsorted(arr, x, side="left")

    small = arr[2 * arr <= capacity]
    alphas = np.unique(np.concatenate(([0], small)))
    # Index boundaries in the sorted array (all int64 vectors over alphas).
    half_end = count_le(np.array([capacity // 2]))[0]  # items <= C/2 end here
    j1_start = count_le(capacity - alphas)  # items > C - alpha start here
    j3_start = count_lt(alphas)  # items >= alpha start here
    n_j1 = n - j1_start
    n_j2 = j1_start - half_end
    sum_j2 = prefix[j1_start] - prefix[half_end]
    sum_j3 = prefix[half_end] - prefix[j3_start]
    spare_j2 = n_j2 * capacity - sum_j2
    extra = np.maximum(0, _ceil_div(sum_j3 - spare_j2, capacity))
    best = int((n_j1 + n_j2 + extra).max())
    return max(best, int(_ceil_div(int(prefix[-1]), capacity)))


def lower_bound(lengths: Sequence[int] | np.ndarray, capacity: int) -> int:
    """The best bound this module knows: max(L1, L2) (= L2, which dominates L1)."""
    return l2(lengths, capacity)
