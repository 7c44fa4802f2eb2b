"""The prefill engine's Triton matmuls: one persistent matmul (TMA, Hopper) with two epilogues.

swiglu(x, W) = SiLU(x Wg^T) * (x Wu^T) [T, I] for x [T, hidden] and the fused [2 I, hidden]
gate/up weight W (gate rows first, as `nn.Linear` stores weights), with HF's bf16 rounding
points; the [T, 2 I] intermediate is never written. `activation="gelu_tanh"` makes it Gemma's
GeGLU (the activation a constexpr of the epilogue, shared with `kernels.gated_act`).

qkv_rope(x, W, ...) = the QKV projection with RoPE applied in the epilogue: roped Q returned
as [T, Hq, D], roped K and V stored straight into the KV cache; the [T, (Hq + 2 Hkv) D]
projection is never written, and the attention after it has no RoPE in its loop.

How the work is split (`_gemm_kernel`):
  - one program per SM (persistent); output tiles are dealt round-robin, GROUP_M row tiles at
    a time so that weight tiles are reused from L2;
  - the weight [2 N, hidden] is viewed as [2, N, hidden]: every K step is one TMA load of
    the x tile, one TMA load of rows n.. and N + n.. (a [2, BN, BK] box: SwiGLU's gate and up
    rows; for QKV, two blocks of 128 columns that are whole heads of one kind) and one
    [BM, 2 BN] matmul; the epilogue applies SiLU(gate) * up, or rounds, ropes and stores each
    half to Q, the K cache or the V cache, through TMA;
  - the last wave: with P programs and L = tiles mod P leftover tiles, that wave would leave
    P - L SMs idle for a whole tile. Where L <= P / 2 and K is long enough, each leftover
    tile is instead split along K into S parts (L S <= P units, `tail_split`): each unit
    writes its float32 partial to a workspace and bumps the tile's counter (an atomic); the
    unit that finishes last sums the S partials in a fixed order (deterministic: no float
    atomics), resets the counter and runs the epilogue. The counters are a zeroed int32
    buffer that the kernel leaves at zero.

Measured on H100s (benchmarks/README.md): swiglu alone 1.00-1.06x of cuBLAS + silu_mul at the
7B shape and 1.07-1.14x at 1.3B (T = 4,352; its matmul runs a few percent under cuBLAS's
rate, which shares operand loads between 2-CTA clusters); in the engine's forward about 1 ms
on 1.3B and 0-1.8 ms on 7B depending on the machine; the K split adds 0.2-0.5 ms on 7B.
qkv_rope alone 597-670 us at the 7B shape (cuBLAS QKV without RoPE 569-602); with the
attention after it, 1.5 ms off the 7B forward against cuBLAS QKV + RoPE in the attention.

The tile loop runs as Triton's flattened and warp-specialized pipeline (`GemmConfig.flatten`,
`warp_specialize`); where that does not compile for a launch's settings (a Triton without
the pass for the GPU, or a pass failure) it warns once and runs the plain loop.

Where a kernel cannot run (no Triton tensor descriptors, a pre-Hopper GPU, the CPU without
Triton's interpreter, non-contiguous or misaligned operands, heads that do not fit the
tiles) `swiglu` runs F.linear (cuBLAS on a GPU), then `kernels.gated_act`, and
`qkv_rope` F.linear, then the torch RoPE, with the same contracts.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gpu_runner.engine.kernels import GATED_ACTIVATIONS, gated_act, use_triton
from gpu_runner.engine.reference import rope_store_torch

try:  # Triton is optional: without it `swiglu` runs its F.linear + gated_act fallback.
    import triton
    import triton.language as tl

    from gpu_runner.engine.kernels import _gate_activation  # the jit activation shared with gated_act
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
try:  # TMA tensor descriptors (Triton >= 3.3)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - depends on the install
    TensorDescriptor = None

__all__ = ["GemmConfig", "counter_slots", "fusable", "qkv_fusable", "qkv_rope", "swiglu", "tail_split"]


@dataclass(frozen=True)
class GemmConfig:
    """Tiles and launch settings of the fused SwiGLU matmul.

    block_m x (2 block_n) is the matmul tile (gate and up halves); block_k the K step;
    group_m row tiles share weight tiles in L2. The last wave's tiles are split along K into
    at most max_split parts (1 = never split) of at least min_split_steps K steps each, and
    only into min_split parts or more (fewer do not pay for writing and summing the
    partials). Measured on an H100 (benchmarks/device/gemm_tail_probe.py, engine_ab.py, in git history): with
    these defaults the 7B shape (64 K steps) splits into 5, the 1.3B shape (32) does not.
    prefetch_rows: load a tile's RoPE rows (qkv_rope's epilogue input) before its K loop,
    their latency hidden behind the matmul, instead of in the epilogue.
    flatten: Triton flattens the tile loop and the K loop into one software pipeline (the
    next tile's first loads issued during this tile's epilogue); warp_specialize: Triton's
    producer / consumer warp groups for that loop (both `tl.range` options).
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
    prefetch_rows: bool = False
    flatten: bool = False
    warp_specialize: bool = False


# Triton's flattened, warp-specialized loop (H100, one 32,768-token row of the 1.3B shape:
# 1.938 against 2.253 ms for the plain loop, bit-equal; benchmarks/README.md)
DEFAULT = GemmConfig(flatten=True, warp_specialize=True)
# qkv_rope's: its last wave split in 2 (7B: 1,632 tiles on 132 SMs leave 48) and each tile's
# RoPE rows loaded before its matmul. Alone the two configurations trade places between H100s
# (7B shape: 597 against 655 us with DEFAULT in call 20, 670 against 596 in call 24; cuBLAS
# without the epilogue 569-592); in the engine they are within noise (call 25: 89.05 against
# 89.36 ms; benchmarks/README.md). Warp-specialized: 1.168 against 1.322 ms at the 1.3B row
# above (Triton 3.6 cannot flatten this loop: its flattening pass fails on the epilogue).
QKV_DEFAULT = GemmConfig(min_split=2, prefetch_rows=True, warp_specialize=True)

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
    def _swiglu_epilogue(acc, o_desc, off_m, off_n, BM: tl.constexpr, BN: tl.constexpr, ACT: tl.constexpr):
        """Write one [BM, BN] tile of act(gate) * up (ACT: SiLU or GeLU-tanh) with HF's rounding
        points (gate, up, act and the product each rounded to the output dtype); TMA clips rows
        and columns past the end."""
        dt = o_desc.dtype
        acc_g, acc_u = tl.split(acc.reshape(BM, 2, BN).permute(0, 2, 1))
        gate = acc_g.to(dt).to(tl.float32)
        up = acc_u.to(dt).to(tl.float32)
        act = _gate_activation(gate, ACT).to(dt).to(tl.float32)
        o_desc.store([off_m, off_n], (act * up).to(dt))

    @triton.jit
    def _rope_store_cols(x, c, s, col, off_m, q_desc, k_desc, v_desc, QD, KD,
                         BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
        """Store projection columns col..col+BN (whole heads of one kind): Q and K roped (HF's
        rotate-half RoPE in the model dtype) to q / the K cache, V as it is to the V cache."""
        if col < QD + KD:
            x1, x2 = tl.split(x.reshape(BM, BN // D, 2, D // 2).permute(0, 1, 3, 2))
            y1 = (x1 * c - x2 * s).to(x.dtype)
            y2 = (x2 * c + x1 * s).to(x.dtype)
            y = tl.join(y1, y2).permute(0, 1, 3, 2).reshape(BM, BN)
            if col < QD:
                q_desc.store([off_m, col], y)
            else:
                k_desc.store([off_m, col - QD], y)
        else:
            v_desc.store([off_m, col - QD - KD], x)

    @triton.jit
    def _rope_rows(off_m, M, cos_ptr, sin_ptr, BM: tl.constexpr, D: tl.constexpr, ROPE: tl.constexpr):
        """The RoPE rows [BM, 1, D / 2] of the tile at row off_m (placeholders without ROPE)."""
        if ROPE:
            rows = off_m + tl.arange(0, BM)
            cs = rows.to(tl.int64)[:, None] * (D // 2) + tl.arange(0, D // 2)[None, :]
            c = tl.load(cos_ptr + cs, mask=(rows < M)[:, None], other=0.0)[:, None, :]
            s = tl.load(sin_ptr + cs, mask=(rows < M)[:, None], other=0.0)[:, None, :]
        else:
            c = tl.zeros([BM, 1, D // 2], dtype=tl.float32)
            s = c
        return c, s

    @triton.jit
    def _epilogue(acc, off_m, off_n, N, c, s, o_desc, k_desc, v_desc, b_ptr, QD, KD,
                  BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr, HAS_BIAS: tl.constexpr, ROPE: tl.constexpr,
                  ACT: tl.constexpr):
        """One [BM, 2 BN] tile: columns off_n.. and N + off_n.. of the product, a bias added
        (HAS_BIAS) in float32; then ROPE: the QKV epilogue (`_rope_store_cols` on each half,
        RoPE rows c / s), else act(first half) * second half (ACT: "silu" or "gelu_tanh")."""
        if HAS_BIAS:
            j = tl.arange(0, 2 * BN)
            acc = acc + tl.load(b_ptr + tl.where(j < BN, off_n + j, N + off_n + j - BN)).to(tl.float32)[None, :]
        if ROPE:
            dt = o_desc.dtype
            lo, hi = tl.split(acc.reshape(BM, 2, BN).permute(0, 2, 1))
            _rope_store_cols(lo.to(dt), c, s, off_n, off_m, o_desc, k_desc, v_desc, QD, KD, BM, BN, D)
            _rope_store_cols(hi.to(dt), c, s, N + off_n, off_m, o_desc, k_desc, v_desc, QD, KD, BM, BN, D)
        else:
            _swiglu_epilogue(acc, o_desc, off_m, off_n, BM, BN, ACT)

    @triton.jit
    def _gemm_kernel(x_desc, w_desc, o_desc, k_desc, v_desc, b_ptr, cos_ptr, sin_ptr, part_ptr, count_ptr,
                     M, N, K, QD, KD, num_programs, split,
                     BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, D: tl.constexpr,
                     HAS_BIAS: tl.constexpr, ROPE: tl.constexpr, PREFETCH: tl.constexpr, IEEE: tl.constexpr,
                     ACT: tl.constexpr, FLATTEN: tl.constexpr, WS: tl.constexpr):
        """Persistent: full tiles round-robin, then the last wave's tiles split along K into
        `split` parts (split == 1: no split). N = half the weight's rows (tile columns n.. and
        N + n.. are computed together). PREFETCH: a tile's RoPE rows are loaded before its
        matmul (their latency hidden by it) instead of in the epilogue."""
        num_m = tl.cdiv(M, BM)
        num_n = tl.cdiv(N, BN)
        tiles = num_m * num_n
        steps = tl.cdiv(K, BK)
        tail = tiles % num_programs if split > 1 else 0
        full = tiles - tail
        for tile in tl.range(tl.program_id(0), full, num_programs, flatten=FLATTEN, warp_specialize=WS):
            off_m, off_n = _tile_origin(tile, num_m, num_n, GROUP_M, BM, BN)
            if PREFETCH:
                c, s = _rope_rows(off_m, M, cos_ptr, sin_ptr, BM, D, ROPE)
            acc = _mainloop(x_desc, w_desc, off_m, off_n, 0, steps, BM, BN, BK, IEEE)
            if not PREFETCH:
                c, s = _rope_rows(off_m, M, cos_ptr, sin_ptr, BM, D, ROPE)
            _epilogue(acc, off_m, off_n, N, c, s, o_desc, k_desc, v_desc, b_ptr, QD, KD, BM, BN, D, HAS_BIAS, ROPE, ACT)
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
                c, s = _rope_rows(off_m, M, cos_ptr, sin_ptr, BM, D, ROPE)
                _epilogue(acc, off_m, off_n, N, c, s, o_desc, k_desc, v_desc, b_ptr, QD, KD, BM, BN, D, HAS_BIAS, ROPE,
                          ACT)


def fusable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """True where the fused kernel runs on x [T, hidden] and the fused weight w [2 I, hidden]:
    Triton with TMA descriptors, a Hopper-or-newer GPU (or the CPU interpreter), one dtype
    (16-bit on the GPU: fp32 tiles of the default config need ~320 KB of shared memory),
    contiguous operands, and 16-byte strides of x's, w's and the output's rows (TMA's rule)."""
    if TensorDescriptor is None or not use_triton(x) or x.dtype != w.dtype:
        return False
    if x.is_cuda and torch.cuda.get_device_capability(x.device) < (9, 0):
        return False
    if x.is_cuda and x.element_size() > 2:  # fp32 tiles of the default config overflow shared memory
        return False
    size = x.element_size()
    return x.is_contiguous() and w.is_contiguous() and (x.shape[1] * size) % 16 == 0 and (w.shape[0] * size) % 32 == 0


def qkv_fusable(x: torch.Tensor, w: torch.Tensor, num_q_heads: int, num_kv_heads: int, head_dim: int,
                cfg: GemmConfig = QKV_DEFAULT) -> bool:
    """True where `qkv_rope` runs its fused kernel: `fusable`, and every block_n columns of the
    [(Hq + 2 Hkv) D, hidden] weight, in either half of its rows, are whole heads of one kind
    (block_n a multiple of D; Hq D, Hkv D and half the rows multiples of block_n)."""
    bn = cfg.block_n
    rows = (num_q_heads + 2 * num_kv_heads) * head_dim
    return (w.shape[0] == rows and rows % 2 == 0 and bn % head_dim == 0 and head_dim % 2 == 0
            and (num_q_heads * head_dim) % bn == 0 and (num_kv_heads * head_dim) % bn == 0 and (rows // 2) % bn == 0
            and fusable(x, w))


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
# launch settings whose flattened / warp-specialized loop failed to compile (Triton builds
# without the pass for this GPU, or a pass failure): they run the plain loop
_PLAIN_ONLY: set[tuple] = set()


def counter_slots(device: torch.device) -> int:
    """Entries the `counters` buffer of `swiglu` needs on `device` (one per split tile, fewer
    than the programs of one wave: the device's SM count)."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else _CPU_PROGRAMS


def _launch(x: torch.Tensor, w: torch.Tensor, outs: tuple[torch.Tensor, ...], cfg: GemmConfig,
            counters: torch.Tensor, bias: torch.Tensor | None = None,
            rope: tuple[torch.Tensor, torch.Tensor, int] | None = None, activation: str = "silu") -> None:
    """Launch `_gemm_kernel` (its descriptors, grid, split and workspace): x @ w^T with tile
    columns n.. and N + n.. together (N = rows of w / 2); outs = (out [T, N],) for the gated
    MLP (`activation`), or (q, k, v) with rope = (cos, sin, head_dim) for the QKV epilogue."""
    t, k = x.shape
    n = w.shape[0] // 2
    bm, bn, bk = cfg.block_m, cfg.block_n, cfg.block_k
    x_desc = TensorDescriptor.from_tensor(x, [bm, bk])
    w_desc = TensorDescriptor.from_tensor(w.view(2, n, k), [2, bn, bk])
    descs = [TensorDescriptor.from_tensor(o, [bm, bn]) for o in outs]
    descs += descs[:1] * (3 - len(descs))  # SwiGLU's one output also fills the unused K / V slots
    tiles = triton.cdiv(t, bm) * triton.cdiv(n, bn)
    programs = min(tiles, counter_slots(x.device))
    split = tail_split(tiles, programs, triton.cdiv(k, bk), cfg)
    left = tiles % programs if split > 1 else 0
    parts = torch.empty(max(1, left * split * bm * 2 * bn), dtype=torch.float32, device=x.device)
    cos, sin, d = rope if rope is not None else (parts, parts, 2)
    qd, kd = (outs[0].shape[1], outs[1].shape[1]) if rope is not None else (0, 0)
    constants = {"BM": bm, "BN": bn, "BK": bk, "GROUP_M": cfg.group_m, "D": d, "HAS_BIAS": bias is not None,
                 "ROPE": rope is not None, "PREFETCH": cfg.prefetch_rows, "IEEE": x.dtype == torch.float32,
                 "ACT": activation, "num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    args = (x_desc, w_desc, *descs, parts if bias is None else bias, cos, sin, parts, counters, t, n, k, qd, kd,
            programs, split)
    pipelined = cfg.flatten or cfg.warp_specialize
    key = (cfg, activation, d, bias is None, rope is None, x.dtype, x.device)  # what the compiled kernel depends on
    if pipelined and key not in _PLAIN_ONLY:
        try:
            _gemm_kernel[(programs,)](*args, FLATTEN=cfg.flatten, WS=cfg.warp_specialize, **constants)
            return
        except Exception as exc:  # noqa: BLE001 - a Triton compiler failure (its classes vary by version)
            _PLAIN_ONLY.add(key)  # a failed compile launched nothing: run the plain loop from now on
            warnings.warn(f"the Triton matmul's pipelined loop (flatten={cfg.flatten}, warp_specialize="
                          f"{cfg.warp_specialize}) did not compile here ({str(exc).strip().splitlines()[-1][:120]}); "
                          "running the plain loop", RuntimeWarning, stacklevel=3)
    _gemm_kernel[(programs,)](*args, FLATTEN=False, WS=False, **constants)


def _check_counters(counters: torch.Tensor | None, device: torch.device) -> None:
    slots = counter_slots(device)
    if counters is not None and (counters.dtype != torch.int32 or counters.numel() < slots or counters.device != device):
        raise ValueError(f"counters must be int32 on {device} with >= {slots} entries, got "
                         f"{counters.dtype} [{counters.numel()}] on {counters.device}")


def swiglu(x: torch.Tensor, gate_up_weight: torch.Tensor, cfg: GemmConfig = DEFAULT, *,
           counters: torch.Tensor | None = None, activation: str = "silu") -> torch.Tensor:
    """act(x W_gate^T) * (x W_up^T) for x [T, hidden] and the fused [2 I, hidden] weight
    (gate rows first, then up rows): a new [T, I] tensor in x's dtype with HF's rounding;
    activation: "silu" (SwiGLU) or "gelu_tanh" (Gemma's GeGLU), a constexpr of the epilogue.
    Fused kernel where `fusable`; elsewhere F.linear, then `kernels.gated_act`.

    counters: int32 zeros on x's device, at least `counter_slots(device)` entries, which the
    kernel leaves at zero (for callers that launch it repeatedly or inside CUDA graphs: the
    engine owns one); None = a fresh zeroed buffer for this call. Launches that run at the
    same time (several streams) need buffers of their own.
    """
    if x.dim() != 2 or gate_up_weight.dim() != 2 or x.shape[1] != gate_up_weight.shape[1] or gate_up_weight.shape[0] % 2:
        raise ValueError(f"swiglu needs x [T, hidden] and a [2 I, hidden] weight, got {tuple(x.shape)} "
                         f"and {tuple(gate_up_weight.shape)}")
    if activation not in GATED_ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(GATED_ACTIVATIONS)}, got {activation!r}")
    _check_counters(counters, x.device)
    if not fusable(x, gate_up_weight):
        return gated_act(F.linear(x, gate_up_weight), activation)
    out = torch.empty((x.shape[0], gate_up_weight.shape[0] // 2), dtype=x.dtype, device=x.device)
    if counters is None:
        counters = torch.zeros(counter_slots(x.device), dtype=torch.int32, device=x.device)
    _launch(x, gate_up_weight, (out,), cfg, counters, activation=activation)
    return out


def qkv_rope(x: torch.Tensor, qkv_weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_out: torch.Tensor,
             v_out: torch.Tensor, num_q_heads: int, cfg: GemmConfig = QKV_DEFAULT, *, bias: torch.Tensor | None = None,
             counters: torch.Tensor | None = None) -> torch.Tensor:
    """The QKV projection with RoPE in its epilogue: q = RoPE(x W_q^T + b_q), and the
    roped keys and the values written straight into k_out / v_out (the KV cache); the
    [T, (Hq + 2 Hkv) D] projection is never written. Returns q [T, Hq, D].

    x [T, hidden]; qkv_weight [(Hq + 2 Hkv) D, hidden] (q, k, v rows); cos/sin [T, D/2]:
    each token's RoPE table rows; k_out / v_out [T, Hkv, D] contiguous; bias [(Hq + 2 Hkv) D]
    or None (added in float32); counters as in `swiglu`. Rounding as HF: the projection
    rounded to the model dtype, then RoPE in the model dtype. Fused kernel where
    `qkv_fusable`; elsewhere F.linear and `kernels.rope_store`'s torch version.
    """
    t = x.shape[0]
    num_kv, d = k_out.shape[1], k_out.shape[2]
    rows = (num_q_heads + 2 * num_kv) * d
    if x.dim() != 2 or qkv_weight.shape != (rows, x.shape[1]) or k_out.shape != (t, num_kv, d) or v_out.shape != k_out.shape:
        raise ValueError(f"qkv_rope needs x [T, hidden], a [(Hq + 2 Hkv) D, hidden] weight and k_out / v_out "
                         f"[T, Hkv, D], got {tuple(x.shape)}, {tuple(qkv_weight.shape)}, {tuple(k_out.shape)}, "
                         f"{tuple(v_out.shape)} with Hq = {num_q_heads}")
    if cos.shape != (t, d // 2) or sin.shape != (t, d // 2):
        raise ValueError(f"cos/sin must be per-token rows [{t}, {d // 2}], got {tuple(cos.shape)} and {tuple(sin.shape)}")
    _check_counters(counters, x.device)
    fused = (qkv_fusable(x, qkv_weight, num_q_heads, num_kv, d, cfg) and k_out.is_contiguous() and v_out.is_contiguous()
             and cos.is_contiguous() and sin.is_contiguous())
    if not fused:
        return rope_store_torch(F.linear(x, qkv_weight, bias), torch.arange(t, device=x.device), cos, sin, k_out, v_out, num_q_heads)
    q = torch.empty((t, num_q_heads, d), dtype=x.dtype, device=x.device)
    if counters is None:
        counters = torch.zeros(counter_slots(x.device), dtype=torch.int32, device=x.device)
    outs = (q.view(t, num_q_heads * d), k_out.view(t, num_kv * d), v_out.view(t, num_kv * d))
    _launch(x, qkv_weight, outs, cfg, counters, bias, (cos, sin, d))
    return q
