"""packers: pluggable bin-packing of prompt lengths into packed rows.

Public API: `make_packer(name, **params).pack(lengths, capacity) -> Packing`, the registry
`PACKERS`, the `Packer` protocol, lower bounds in `packers.bounds`, the input limits in
`packers.limits`, and `checked_pack(packer, lengths, capacity)`, which runs any packer
(plug-ins included) and validates what it returns.
Pure Python + numpy; OR-Tools is imported lazily by the `ilp` packer only.

Built-in packers (module):
  pad, sorted                                 one prompt per row (baselines)
  next-fit, first-fit, best-fit, worst-fit    arrival order, online (online)
  ffd, bfd, wfd                               longest first (decreasing); ffd/bfd place
                                              equal lengths in batches: 1M prompts < 1 s
  lpfhp                                       worst-fit decreasing on the length histogram,
                                              optional max prompts per row (histogram)
  ilp                                         fewest rows, proven optimal when it can be:
                                              FFD + LP bound + CP-SAT (ilp, colgen)
"""

from packers import bounds, limits
from packers.base import BasePacker, Packer, bins_from_assignment
from packers.checked import checked_pack
from packers.packing import Packing, validate_capacity, validate_lengths
from packers.registry import ENTRY_POINT_GROUP, PACKERS, available_packers, make_packer, register

# Importing these modules registers the built-in packers.
from packers import baselines, decreasing, histogram, ilp, online  # noqa: F401  isort: skip

__all__ = [
    "ENTRY_POINT_GROUP",
    "PACKERS",
    "BasePacker",
    "Packer",
    "Packing",
    "available_packers",
    "bins_from_assignment",
    "bounds",
    "checked_pack",
    "limits",
    "make_packer",
    "register",
    "validate_capacity",
    "validate_lengths",
]
