"""Probe: can a Triton GEMM with the SiLU * up epilogue (gate/up product and activation in
one kernel, no [T, 2I] intermediate) beat cuBLAS gate/up + the Triton silu_mul kernel?
Times both on the engine's shapes (T = 4352 tokens) and checks the result; prints one line
per configuration. Usage: swiglu_gemm_probe.py"""
from functools import partial

import torch
import triton
import triton.language as tl

from gpu_runner.engine_kernels import silu_mul
from gpu_runner.timing import time_calls


@triton.jit
def _swiglu_gemm(a_ptr, w_ptr, o_ptr, M, N, K, stride_am, stride_om,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(N, BN)
    in_group = GROUP_M * num_pid_n
    group = pid // in_group
    first_m = group * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % in_group) % size_m
    pid_n = (pid % in_group) // size_m
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_k = tl.arange(0, BK)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    g_ptrs = w_ptr + offs_n[None, :].to(tl.int64) * K + offs_k[:, None]
    u_ptrs = g_ptrs + N.to(tl.int64) * K
    mask_m = offs_m[:, None] < M
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for _ in range(tl.cdiv(K, BK)):
        a = tl.load(a_ptrs, mask=mask_m, other=0.0)
        acc_g = tl.dot(a, tl.load(g_ptrs), acc_g)
        acc_u = tl.dot(a, tl.load(u_ptrs), acc_u)
        a_ptrs += BK
        g_ptrs += BK
        u_ptrs += BK
    g = acc_g.to(o_ptr.dtype.element_ty).to(tl.float32)
    u = acc_u.to(o_ptr.dtype.element_ty).to(tl.float32)
    act = (g / (1.0 + tl.exp(-g))).to(o_ptr.dtype.element_ty).to(tl.float32)
    out = o_ptr + offs_m[:, None].to(tl.int64) * stride_om + offs_n[None, :]
    tl.store(out, (act * u).to(o_ptr.dtype.element_ty), mask=mask_m)


def swiglu(x, w, bm, bn, bk, group, warps, stages):
    m, k = x.shape
    n = w.shape[0] // 2
    out = torch.empty((m, n), device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _swiglu_gemm[grid](x, w, out, m, n, k, x.stride(0), out.stride(0), BM=bm, BN=bn, BK=bk, GROUP_M=group,
                       num_warps=warps, num_stages=stages)
    return out


dev = torch.device("cuda")
for name, hidden, inter in (("1.3b", 2048, 5504), ("7b", 4096, 11008)):
    t = 4352
    x = torch.randn(t, hidden, device=dev, dtype=torch.bfloat16)
    w = torch.randn(2 * inter, hidden, device=dev, dtype=torch.bfloat16) * hidden**-0.5
    flops = 2 * t * hidden * 2 * inter

    def ref(x=x, w=w):
        return silu_mul(torch.nn.functional.linear(x, w))

    r = time_calls(ref, device=dev, warmup=5, reps=50)
    expect = ref().float()
    print(f"{name}: cublas gate_up + silu_mul {r.median_ms * 1e3:.0f} us ({flops / r.median_ms / 1e9:.0f} TFLOP/s eff)")
    for bm, bn, bk, group, warps, stages in ((128, 128, 64, 8, 8, 3), (128, 128, 64, 8, 8, 4), (128, 64, 64, 8, 4, 4),
                                             (128, 128, 32, 8, 8, 5), (64, 128, 64, 8, 4, 4), (128, 256, 64, 8, 8, 3)):
        try:
            fn = partial(swiglu, x, w, bm, bn, bk, group, warps, stages)
            got = fn().float()
            err = (got - expect).abs().max().item()
            tm = time_calls(fn, device=dev, warmup=5, reps=50)
            print(f"{name}: triton swiglu BM={bm} BN={bn} BK={bk} G={group} w={warps} s={stages}: "
                  f"{tm.median_ms * 1e3:.0f} us ({flops / tm.median_ms / 1e9:.0f} TFLOP/s) max err {err:.3g}")
        except Exception as exc:  # noqa: BLE001 - a tile that does not fit
            print(f"{name}: triton swiglu BM={bm} BN={bn} BK={bk}: {type(exc).__name__} {str(exc)[:100]}")
