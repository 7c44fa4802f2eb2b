"""The engine's RoPE, read from the model's own rotary embedding: per-layer cos / sin tables
and the head-dim permutation that lets the half-split kernels compute any static RoPE style.

The engine's kernels (`kernels.rope_store`, `rope_attention`, `matmul.qkv_rope`, the decode
step) rotate pairs (j, j + D/2) of each head with tables cos / sin [P, D/2] indexed by
position. Everything else is mapped onto that here, outside the kernels:

  - the tables are the model's rotary module evaluated at positions 0..P-1 (its own
    inv_freq and attention_scaling, in the model dtype as HF rounds them), so every static
    RoPE type (default, linear, llama3, yarn, ...) is exact; dynamic ones are refused by
    `engine.support`; a model rotating by minus the angle (NanoChat) gets -sin;
  - per-layer tables: a layer of another RoPE kind (Gemma 3's local base, OLMo 3's per-type
    parameters) reads its own table; a layer without RoPE (SmolLM3's NoPE layers, EXAONE 4's
    global layers) reads an identity table (cos 1, sin 0: the rotation is exact identity);
  - interleaved RoPE (pairs (2i, 2i + 1): Helium, ERNIE 4.5, GLM) and partial RoPE (the
    first R of D dims: GLM) become half-split by permuting each Q / K head's dims at fuse
    time (`head_permutation`; weights permuted in `weights.fuse_layer`): engine dim e holds
    model dim perm[e]. Q . K is unchanged by a permutation applied to both, and K is put back
    in the model's order (`to_model_order`) wherever it leaves the attention step, so the
    KV cache the engine hands back equals HF's.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["RopePlan", "head_permutation", "rope_plan", "to_model_order"]


@dataclass(frozen=True)
class RopePlan:
    """The RoPE the engine applies to one model.

    tables:      distinct (cos, sin) tables, each [P, D/2] in the model dtype on its device
    layer_table: for each decoder layer, the index of its table in `tables`
    perm:        [D] int64: engine head dim e holds model head dim perm[e]; None = identity
    inverse:     [D] int64: x[..., inverse] puts engine-ordered dims back in the model's order
    """

    tables: tuple[tuple[torch.Tensor, torch.Tensor], ...]
    layer_table: tuple[int, ...]
    perm: torch.Tensor | None = None
    inverse: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not self.tables or any(not 0 <= i < len(self.tables) for i in self.layer_table):
            raise ValueError("layer_table must index tables (at least one table)")
        if (self.perm is None) != (self.inverse is None):
            raise ValueError("perm and inverse come together")


def head_permutation(head_dim: int, rotary_dim: int, interleaved: bool) -> list[int] | None:
    """perm (engine dim -> model dim) mapping the model's rotary pairs of one head onto the
    kernels' half-split pairs (e, e + D/2), e < R/2; None when that is the identity.

    Model pairs: (i, i + R/2) half-split, (2i, 2i + 1) interleaved, for i < R/2; the D - R
    dims past the rotary part pass through (they sit at e in [R/2, D/2) and [D/2 + R/2, D),
    where the table is the identity)."""
    d, r = int(head_dim), int(rotary_dim)
    if d % 2 or r % 2 or not 0 < r <= d:
        raise ValueError(f"rotary dims must be even and within the head: head_dim {d}, rotary {r}")
    half, rh = d // 2, r // 2
    first = [2 * i if interleaved else i for i in range(rh)]
    second = [2 * i + 1 if interleaved else rh + i for i in range(rh)]
    rest = list(range(r, d))
    perm = first + rest[: half - rh] + second + rest[half - rh :]
    return None if perm == list(range(d)) else perm


def to_model_order(x: torch.Tensor, inverse: torch.Tensor | None) -> torch.Tensor:
    """x [..., D] in the engine's head-dim order, put back in the model's order in place
    (unchanged when there is no permutation); returns x."""
    if inverse is not None:
        x.copy_(x.index_select(-1, inverse))
    return x


def _takes_layer_type(rotary: torch.nn.Module) -> bool:
    """Whether the rotary module has one table per layer kind (Gemma 3, OLMo 3:
    forward(x, position_ids, layer_type))."""
    return "layer_type" in inspect.signature(rotary.forward).parameters


def rope_plan(model: torch.nn.Module, *, max_positions: int, head_dim: int, interleaved: bool,
              layer_ropes: list[bool], layer_types: list[Any] | None, negate_sin: bool = False) -> RopePlan:
    """The plan of `model` (accepted by `engine.support`): tables for positions
    0..max_positions-1 from `model.model.rotary_emb` on the model's device and dtype;
    layer_ropes[i]: whether layer i applies RoPE (else the identity table); layer_types[i]:
    the layer's kind (config.layer_types), asked of rotary modules with a table per kind;
    negate_sin: the model rotates by minus the angle (NanoChat's rotate_half (x2, -x1)), so
    the tables hold -sin (exact: a sign flip)."""
    rotary = model.model.rotary_emb
    device, dtype = model.lm_head.weight.device, model.lm_head.weight.dtype
    probe = torch.empty(1, device=device, dtype=dtype)
    positions = torch.arange(max_positions, device=device)
    half = head_dim // 2
    tables: list[tuple[torch.Tensor, torch.Tensor]] = []
    keys: list[Any] = []
    layer_table: list[int] = []
    rotary_dims: set[int] = set()
    per_type = _takes_layer_type(rotary)
    if per_type and not layer_types:
        raise ValueError("the rotary module has a table per layer type, and the config lists no layer_types")
    with torch.no_grad():
        for i, ropes in enumerate(layer_ropes):
            key = ("rope", layer_types[i] if per_type else None) if ropes else ("none",)
            if key not in keys:
                cos = torch.ones((max_positions, half), device=device, dtype=dtype)
                sin = torch.zeros((max_positions, half), device=device, dtype=dtype)
                if ropes:
                    kind = {"layer_type": key[1]} if per_type else {}
                    c, s = (t[0] for t in rotary(probe, positions[None], **kind))
                    r = c.shape[-1]
                    rotary_dims.add(r)
                    # HF's tables are cat(freqs, freqs) (half-split) or read as their first
                    # half repeated (interleaved): either way the first R/2 columns
                    cos[:, : r // 2] = c[:, : r // 2]
                    sin[:, : r // 2] = -s[:, : r // 2] if negate_sin else s[:, : r // 2]
                keys.append(key)
                tables.append((cos.contiguous(), sin.contiguous()))
            layer_table.append(keys.index(key))
    if len(rotary_dims) > 1:
        raise ValueError(f"rotary dims differ across layers ({sorted(rotary_dims)}): not implemented")
    rotary_dim = rotary_dims.pop() if rotary_dims else head_dim
    perm = head_permutation(head_dim, rotary_dim, interleaved)
    if perm is None:
        return RopePlan(tuple(tables), tuple(layer_table))
    p = torch.tensor(perm, dtype=torch.int64, device=device)
    return RopePlan(tuple(tables), tuple(layer_table), perm=p, inverse=torch.argsort(p))
