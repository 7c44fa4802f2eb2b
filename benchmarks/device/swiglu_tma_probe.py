"""A fused SwiGLU matmul (persistent Triton GEMM with TMA tensor descriptors and SiLU * up in
its epilogue: no [T, 2 I] intermediate) against cuBLAS gate/up + the silu_mul kernel, for several tile
configurations. Both are timed as a graph of one product per layer over that many distinct
weight tensors (as in the forward: no weight reuse in L2), at the MMLU batch-64 token count.
Usage: swiglu_tma_probe.py

Outcome on an H100 (call 10, benchmarks/README.md): 0.94-1.02x of cuBLAS + silu_mul at the
7B shape and 1.02-1.13x at 1.3B in isolation, no end-to-end gain in the engine (the Triton
matmul runs about 8% under cuBLAS's rate), so the engine keeps cuBLAS + silu_mul. An
earlier pointer-based (non-TMA, non-persistent) version of this kernel reached 564-576
TFLOP/s (call 6)."""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from gpu_runner.engine_kernels import silu_mul
from gpu_runner.timing import time_graph


@triton.jit
def _swiglu_kernel(x_desc, w_desc, o_desc, M, N, K, num_programs, BM: tl.constexpr, BN: tl.constexpr,
                   BK: tl.constexpr, GROUP_M: tl.constexpr, IEEE: tl.constexpr):
    """Persistent: program p computes output tiles p, p + num_programs, ... (grouped by
    GROUP_M row tiles for L2 reuse). Tile (m, n): gate = x[m] . W[n]^T and up =
    x[m] . W[N + n]^T over K through TMA loads, then SiLU(gate) * up with HF's bf16 rounding
    points (gate and up rounded, SiLU rounded, product rounded). Columns past N (when N is
    not a multiple of BN) are computed from the next rows of W and clipped by the store."""
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    in_group = GROUP_M * num_n
    dt = o_desc.dtype
    for tile in tl.range(tl.program_id(0), num_m * num_n, num_programs):
        first_m = (tile // in_group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        off_m = (first_m + (tile % in_group) % size_m) * BM
        off_n = ((tile % in_group) // size_m) * BN
        acc_g = tl.zeros((BM, BN), dtype=tl.float32)
        acc_u = tl.zeros((BM, BN), dtype=tl.float32)
        for ki in range(tl.cdiv(K, BK)):
            a = x_desc.load([off_m, ki * BK])
            g = w_desc.load([off_n, ki * BK]).T
            u = w_desc.load([N + off_n, ki * BK]).T
            if IEEE:  # float32 inputs (CPU interpreter tests): no TF32 rounding
                acc_g = tl.dot(a, g, acc_g, input_precision="ieee")
                acc_u = tl.dot(a, u, acc_u, input_precision="ieee")
            else:
                acc_g = tl.dot(a, g, acc_g)
                acc_u = tl.dot(a, u, acc_u)
        gate = acc_g.to(dt).to(tl.float32)
        up = acc_u.to(dt).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dt).to(tl.float32)
        o_desc.store([off_m, off_n], (act * up).to(dt))


def swiglu(
    x: torch.Tensor,
    gate_up_weight: torch.Tensor,
    *,
    block_m: int = 128,
    block_n: int = 128,
    block_k: int = 64,
    group_m: int = 8,
    num_warps: int = 8,
    num_stages: int = 3,
) -> torch.Tensor:
    """SiLU(x W_gate^T) * (x W_up^T) for x [T, hidden] and the fused [2 I, hidden] weight
    (gate rows first, then up rows): a new [T, I] tensor in x's dtype, with HF's rounding.

    One persistent Triton matmul with TMA loads and the activation in its epilogue (CUDA,
    Hopper: contiguous operands, 16-byte row strides).
    """
    if x.shape[1] != gate_up_weight.shape[1] or gate_up_weight.shape[0] % 2:
        raise ValueError(f"swiglu needs x [T, hidden] and a [2 I, hidden] weight, got {tuple(x.shape)} "
                         f"and {tuple(gate_up_weight.shape)}")
    t, k = x.shape
    n = gate_up_weight.shape[0] // 2
    out = torch.empty((t, n), dtype=x.dtype, device=x.device)
    x_desc = TensorDescriptor.from_tensor(x, [block_m, block_k])
    w_desc = TensorDescriptor.from_tensor(gate_up_weight, [block_n, block_k])
    o_desc = TensorDescriptor.from_tensor(out, [block_m, block_n])
    tiles = triton.cdiv(t, block_m) * triton.cdiv(n, block_n)
    programs = min(tiles, torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4)
    _swiglu_kernel[(programs,)](
        x_desc, w_desc, o_desc, t, n, k, programs, BM=block_m, BN=block_n, BK=block_k, GROUP_M=group_m,
        IEEE=x.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages,
    )
    return out


dev = torch.device("cuda")


t = 4352
configs = [dict(block_m=128, block_n=128, block_k=64, group_m=gm, num_warps=8, num_stages=st)
           for gm, st in ((8, 3), (4, 3), (16, 3), (32, 3), (8, 4), (1, 3))]
configs += [dict(block_m=128, block_n=128, block_k=128, group_m=8, num_warps=8, num_stages=2),
            dict(block_m=128, block_n=128, block_k=64, group_m=8, num_warps=4, num_stages=3),
            dict(block_m=64, block_n=256, block_k=64, group_m=8, num_warps=8, num_stages=3)]
for name, hidden, inter, layers in (("7b", 4096, 11008, 32), ("1.3b", 2048, 5504, 24)):
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(t, hidden, device=dev, dtype=torch.bfloat16, generator=gen)
    ws = torch.randn(layers, 2 * inter, hidden, device=dev, dtype=torch.bfloat16, generator=gen) * hidden**-0.5
    flops = 2 * t * hidden * 2 * inter
    expect = silu_mul(F.linear(x, ws[0])).float()
    for rep in range(2):
        base = time_graph(lambda: [silu_mul(F.linear(x, ws[i])) for i in range(layers)], device=dev).median_ms / layers
        print(f"{name}: cublas gate_up + silu_mul {base * 1e3:.0f} us ({flops / base / 1e9:.0f} TFLOP/s effective)",
              flush=True)
        for cfg in configs if rep == 0 else configs[:1]:
            tag = " ".join(f"{k}={v}" for k, v in cfg.items())
            try:
                got = swiglu(x, ws[0], **cfg).float()
                err = ((got - expect).norm() / expect.norm()).item()
                ms = time_graph(lambda: [swiglu(x, ws[i], **cfg) for i in range(layers)], device=dev).median_ms / layers
                print(f"{name}: swiglu {tag}: {ms * 1e3:.0f} us ({flops / ms / 1e9:.0f} TFLOP/s) "
                      f"{base / ms:.3f}x of cublas+silu, rel err {err:.1e}", flush=True)
            except Exception as exc:  # noqa: BLE001 - a configuration that does not compile or fit
                print(f"{name}: swiglu {tag}: {type(exc).__name__} {str(exc)[:160]}", flush=True)
    x = ws = None
    torch.cuda.empty_cache()
