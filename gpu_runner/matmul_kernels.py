"""The fused SwiGLU matmul of the prefill engine: a persistent Triton matmul (TMA, Hopper).

swiglu(x, W) = SiLU(x Wg^T) * (x Wu^T) [T, I] for x [T, hidden] and the fused [2 I, hidden]
gate/up weight W (gate rows first, as `nn.Linear` stores weights), with HF's bf16 rounding
points; the [T, 2 I] intermediate is never written.

How the work is split (`_swiglu_kernel`):
  - one program per SM (persistent); [BM, BN] output tiles are dealt round-robin, GROUP_M
    row tiles at a time so that weight tiles are reused from L2;
  - every K step is one TMA load of the x tile, one TMA load of the gate rows n.. and the up
    rows I + n.. (a [2, BN, BK] box of the [2, I, hidden] view) and one [BM, 2 BN] matmul; the
    epilogue applies SiLU(gate) * up and stores through TMA;
  - the last wave: with P programs and L = tiles mod P leftover tiles, that wave would leave
    P - L SMs idle for a whole tile. Where L <= P / 2 and K is long enough, each leftover
    tile is instead split along K into S parts (L S <= P units, `tail_split`): each unit
    writes its float32 partial to a workspace and bumps the tile's counter (an atomic); the
    unit that finishes last sums the S partials in a fixed order (deterministic: no float
    atomics), resets the counter and runs the epilogue. The counters are a zeroed int32
    buffer that the kernel leaves at zero.

Measured on H100s (benchmarks/README.md): alone, 1.00-1.06x of cuBLAS + silu_mul at the 7B
shape and 1.07-1.14x at 1.3B (T = 4,352; its matmul runs a few percent under cuBLAS's rate,
which shares operand loads between 2-CTA clusters); in the engine's forward about 1 ms on
1.3B and 0-1.8 ms on 7B depending on the machine; the K split adds 0.2-0.5 ms on 7B.

Where the kernel cannot run (no Triton tensor descriptors, a pre-Hopper GPU, the CPU without
Triton's interpreter, non-contiguous or misaligned operands) `swiglu` runs F.linear (cuBLAS on
a GPU), then `engine_kernels.silu_mul`, with the same contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpu_runner.engine_kernels import silu_mul, use_triton

try:  # Triton is optional: without it `swiglu` runs its F.linear + silu_mul fallback.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
try:  # TMA tensor descriptors (Triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the install
    TensorDescriptor = None

__all__ = ["GemmConfig", "counter_slots", "fusable", "swiglu", "tail_split"]


@dataclass(frozen=True)
class GemmConfig:
    """Tiles and launch settings of the fused SwiGLU matmul.

    block_m x (2 block_n) is the matmul tile (gate and up halves); block_k the K step;
    group_m row tiles share weight tiles in L2. The last wave's tiles are split along K into
    at most max_split parts (1 = never split) of at least min_split_steps K steps each, and
    only into min_split parts or more (fewer do not pay for writing and summing the
    partials). Measured on an H100 (benchmarks/device/gemm_tail_probe.py, engine_ab.py): with
    these defaults the 7B shape (64 K steps) splits into 5, the 1.3B shape (32) does not.
    """

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    group_m: int = 12
    num_warps: int = 8
    num_stages: int = 3
    max_split: int = 6
    min_split_steps: int = 12
    min_split: int = 3


DEFAULT = GemmConfig()

if triton is not None:

    @triton.jit
    def _tile_origin(tile, num_m, num_n, GROUP_M: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
        """Tile number -> (row, column) of its top-left output element, GROUP_M row tiles per group."""
        in_group = GROUP_M * num_n
        first_m = (tile // in_group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        return (first_m + (tile % in_group) % size_m) * BM, ((tile % in_group) // size_m) * BN

    @triton.jit
    def _mainloop(x_desc, w_desc, off_m, off_n, k_lo, k_hi, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  IEEE: tl.constexpr):
        """float32 [BM, 2 BN] = x[off_m:, K steps k_lo..k_hi] @ [gate rows off_n.. ; up rows I + off_n..]^T
        (one TMA load of the [2, I, K] weight view and one matmul per K step)."""
        acc = tl.zeros((BM, 2 * BN), dtype=tl.float32)
        for ki in range(k_lo, k_hi):
            a = x_desc.load([off_m, ki * BK])
            b = w_desc.load([0, off_n, ki * BK]).reshape(2 * BN, BK).T
            if IEEE:  # float32 inputs (CPU interpreter tests): no TF32 rounding
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
        return acc

    @triton.jit
    def _epilogue(acc, o_desc, off_m, off_n, BM: tl.constexpr, BN: tl.constexpr):
        """Write one [BM, BN] tile of SiLU(gate) * up with HF's rounding points (gate, up, SiLU
        and the product each rounded to the output dtype); TMA clips rows and columns past the end."""
        dt = o_desc.dtype
        acc_g, acc_u = tl.split(acc.reshape(BM, 2, BN).permute(0, 2, 1))
        gate = acc_g.to(dt).to(tl.float32)
        up = acc_u.to(dt).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
        o_desc.store([off_m, off_n], (act * up).to(dt))

    @triton.jit
    def _swiglu_kernel(x_desc, w_desc, o_desc, part_ptr, count_ptr, M, N, K, num_programs, split,
                       BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                       IEEE: tl.constexpr):
        """Persistent: full tiles round-robin, then the last wave's tiles split along K into
        `split` parts (split == 1: no split). N = I, the output columns."""
        num_m = tl.cdiv(M, BM)
        num_n = tl.cdiv(N, BN)
        tiles = num_m * num_n
        steps = tl.cdiv(K, BK)
        tail = tiles % num_programs if split > 1 else 0
        full = tiles - tail
        for tile in tl.range(tl.program_id(0), full, num_programs):
            off_m, off_n = _tile_origin(tile, num_m, num_n, GROUP_M, BM, BN)
            acc = _mainloop(x_desc, w_desc, off_m, off_n, 0, steps, BM, BN, BK, IEEE)
            _epilogue(acc, o_desc, off_m, off_n, BM, BN)
        for unit in tl.range(tl.program_id(0), tail * split, num_programs):
            t_local = unit // split
            part = unit % split
            off_m, off_n = _tile_origin(full + t_local, num_m, num_n, GROUP_M, BM, BN)
            acc = _mainloop(x_desc, w_desc, off_m, off_n, part * steps // split, (part + 1) * steps // split,
                            BM, BN, BK, IEEE)
            offs = tl.arange(0, BM)[:, None] * (2 * BN) + tl.arange(0, 2 * BN)[None, :]
            tile_parts = part_ptr + t_local.to(tl.int64) * split * (BM * 2 * BN)
            tl.store(tile_parts + part * (BM * 2 * BN) + offs, acc)
            tl.debug_barrier()  # every thread's partial is written before the counter moves
            done = tl.atomic_add(count_ptr + t_local, 1, sem="acq_rel", scope="gpu")
            if done == split - 1:  # the last part of this tile: sum the parts in order
                acc = tl.load(tile_parts + offs, cache_modifier=".cg")
                for j in range(1, split):
                    acc += tl.load(tile_parts + j * (BM * 2 * BN) + offs, cache_modifier=".cg")
                tl.atomic_xchg(count_ptr + t_local, 0, sem="relaxed", scope="gpu")
                _epilogue(acc, o_desc, off_m, off_n, BM, BN)


def fusable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """True where the fused kernel runs on x [T, hidden] and the fused weight w [2 I, hidden]:
    Triton with TMA descriptors, a Hopper-or-newer GPU (or the CPU interpreter), one dtype,
    contiguous operands, and 16-byte strides of x's, w's and the output's rows (TMA's rule)."""
    if TensorDescriptor is None or not use_triton(x) or x.dtype != w.dtype:
        return False
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (9, 0):
        return False
    size = x.element_size()
    return x.is_contiguous() and w.is_contiguous() and (x.shape[1] * size) % 16 == 0 and (w.shape[0] * size) % 32 == 0


def tail_split(tiles: int, programs: int, k_steps: int, cfg: GemmConfig = DEFAULT) -> int:
    """How many K parts each tile of the last wave is split into (1 = none): the leftover
    tiles L = tiles mod programs are split when L <= programs / 2, into as many parts as
    fit one wave (L S <= programs), at most cfg.max_split, each of >= cfg.min_split_steps
    steps; a split into fewer than cfg.min_split parts is not made."""
    left = tiles % programs if tiles > programs else 0
    if left == 0 or 2 * left > programs:
        return 1
    split = min(programs // left, cfg.max_split, k_steps // max(1, cfg.min_split_steps))
    return split if split >= max(2, cfg.min_split) else 1


_CPU_PROGRAMS = 4  # programs per launch in Triton's CPU interpreter (tests)


def counter_slots(device: torch.device) -> int:
    """Entries the `counters` buffer of `swiglu` needs on `device` (one per split tile, fewer
    than the programs of one wave: the device's SM count)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else _CPU_PROGRAMS


def _launch(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, cfg: GemmConfig, counters: torch.Tensor) -> None:
    """Launch `_swiglu_kernel` over `out` (its descriptors, grid, split and workspace)."""
    t, k = x.shape
    n = out.shape[1]
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    x_desc = TensorDescriptor.from_tensor(x, [bm, bk])
    w_desc = TensorDescriptor.from_tensor(w.view(2, n, k), [2, bn, bk])
    o_desc = TensorDescriptor.from_tensor(out, [bm, bn])
    tiles = triton.cdiv(t, bm) * triton.cdiv(n, bn)
    programs = min(tiles, counter_slots(x.device))
    split = tail_split(tiles, programs, triton.cdiv(k, bk), cfg)
    left = tiles % programs if split > 1 else 0
    parts = torch.empty(max(1, left * split * bm * 2 * bn), dtype=torch.float32, device=x.device)
    _swiglu_kernel[(programs,)](
        x_desc, w_desc, o_desc, parts, counters, t, n, k, programs, split,
        BM=bm, BN=bn, BK=bk, GROUP_M=cfg.group_m, IEEE=x.dtype == torch.float32,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )


def swiglu(x: torch.Tensor, gate_up_weight: torch.Tensor, cfg: GemmConfig = DEFAULT, *,
           counters: torch.Tensor | None = None) -> torch.Tensor:
    """SiLU(x W_gate^T) * (x W_up^T) for x [T, hidden] and the fused [2 I, hidden] weight
    (gate rows first, then up rows): a new [T, I] tensor in x's dtype with HF's rounding.
    Fused kernel where `fusable`; elsewhere F.linear, then `engine_kernels.silu_mul`.

    counters: int32 zeros on x's device, at least `counter_slots(device)` entries, which the
    kernel leaves at zero (for callers that launch it repeatedly or inside CUDA graphs: the
    engine owns one); None = a fresh zeroed buffer for this call. Launches that run at the
    same time (several streams) need buffers of their own.
    """
    if x.dim() != 2 or gate_up_weight.dim() != 2 or x.shape[1] != gate_up_weight.shape[1] or gate_up_weight.shape[0] % 2:
        raise ValueError(f"swiglu needs x [T, hidden] and a [2 I, hidden] weight, got {tuple(x.shape)} "
                         f"and {tuple(gate_up_weight.shape)}")
    slots = counter_slots(x.device)
    if counters is not None and (counters.dtype != torch.int32 or counters.numel() < slots
                                 or counters.device != x.device):
        raise ValueError(f"counters must be int32 on {x.device} with >= {slots} entries, got "
                         f"{counters.dtype} [{counters.numel()}] on {counters.device}")
    if not fusable(x, gate_up_weight):
        return silu_mul(F.linear(x, gate_up_weight))
    out = torch.empty((x.shape[0], gate_up_weight.shape[0] // 2), dtype=x.dtype, device=x.device)
    if counters is None:
        counters = torch.zeros(slots, dtype=torch.int32, device=x.device)
    _launch(x, gate_up_weight, out, cfg, counters)
    return out
