"""Kernel-level probe at the MMLU batch-64 shapes (seed 0, 4,347 tokens -> T = 4,352) of the
7B (32 heads) and 1.3B (16 heads) models, per call in one CUDA graph (time_graph: no launch
gaps): cuBLAS QKV against qkv_rope (the QKV matmul that ropes in its epilogue and writes Q
and the KV cache) over GemmConfig variants, packed_attention over tiles, and the attention
half of a layer two ways:
  old:   RMSNorm, cuBLAS QKV, rope_attention (RoPE of Q and K inside the attention loop,
         K and V written to the cache from its diagonal blocks);
  fused: RMSNorm, qkv_rope, packed_attention;
with errors against the torch references in HF's order. Usage: qkv_rope_probe.py

Calls 18-20 (logs results/logs/h100_call18_qkv_rope.log, h100_call19_qkv_tune.log,
h100_call20_profile.log) ran it on a form of the kernels with a row-scale input (RMSNorm
weights folded into the matmuls, not kept: no gain in the engine) and more variants: group_m
8 / 16, 4 stages and a 3-part split for qkv_rope (none better), attention tiles of 64 x 16,
32 x 32, 64 x 128, 128 x 64 / 128 and 8 warps (none better than 64 x 32, 4 warps, 3 stages)."""
from dataclasses import replace
from functools import partial

import torch
from mmlu_row import mmlu_row  # this folder

from gpu_runner import engine_kernels as ek
from gpu_runner import matmul_kernels as mk
from gpu_runner.timing import time_graph

dev = torch.device("cuda")
row = mmlu_row(dev)
cu, real, t, pos_t, seg_t, cos, sin = row.cu, row.real, row.t, row.pos_t, row.seg_t, row.cos, row.sin
d = 128
cos_t, sin_t = cos[pos_t].contiguous(), sin[pos_t].contiguous()
counters = torch.zeros(mk.counter_slots(dev), dtype=torch.int32, device=dev)


def us(fn, calls=8):
    return time_graph(fn, device=dev, calls=calls).median_ms * 1e3


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


qkv_configs = {  # qkv_rope configurations
    "DEFAULT": mk.DEFAULT,
    "QKV_DEFAULT": mk.QKV_DEFAULT,
    "split2 only": replace(mk.DEFAULT, min_split=2),
}
attn_tiles = ((64, 64, 4, 3), (64, 32, 4, 3))
for name, hidden, hq in (("7b", 4096, 32), ("1.3b", 2048, 16)):
    g = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn((t, hidden), device=dev, dtype=torch.bfloat16, generator=g)
    w = torch.randn((3 * hq * d, hidden), device=dev, dtype=torch.bfloat16, generator=g) * hidden**-0.5
    ln = torch.ones(hidden, device=dev, dtype=torch.bfloat16)
    k_out, v_out = (torch.empty(t, hq, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
    scale = d**-0.5
    flops = 2 * t * hidden * w.shape[0]
    # references: HF order (norm, projection, rope), torch attention per prompt
    qkv_ref = torch.nn.functional.linear(ek._rmsnorm_torch(h, ln, 1e-5), w)
    kr, vr = torch.empty_like(k_out), torch.empty_like(v_out)
    q_ref = ek._rope_store_torch(qkv_ref, pos_t, cos, sin, kr, vr, hq)
    a_ref = torch.cat([ek._packed_attention_torch(q_ref[a:b].float(), kr[a:b].float(), vr[a:b].float(),
                                                  seg_t[a:b] - a, scale) for a, b in zip(cu[:-1], cu[1:])])
    qkv_us = us(partial(torch.nn.functional.linear, h, w))
    print(f"{name} cublas qkv                 {qkv_us:7.1f} us  {flops / qkv_us / 1e6:.1f} TFLOP/s", flush=True)
    x = ek.rmsnorm(h, ln, 1e-5)
    for tag, cfg in qkv_configs.items():
        tiles = -(-t // cfg.block_m) * (w.shape[0] // 2 // cfg.block_n)
        split = mk.tail_split(tiles, mk.counter_slots(dev), -(-hidden // cfg.block_k), cfg)
        fn = partial(mk.qkv_rope, x, w, cos_t, sin_t, k_out, v_out, hq, cfg, counters=counters)
        try:
            q = fn()
            err = max(rel(q[:real], q_ref[:real]), rel(k_out[:real], kr[:real]), rel(v_out[:real], vr[:real]))
            tq = us(fn)
            print(f"{name} qkv_rope {tag:14s} split {split}: {tq:7.1f} us  {flops / tq / 1e6:.1f} TFLOP/s, "
                  f"max err vs HF order {err:.2e}", flush=True)
        except Exception as exc:  # noqa: BLE001 - some configurations do not fit
            print(f"{name} qkv_rope {tag:14s}: {type(exc).__name__} {str(exc)[:160]}", flush=True)
    q = mk.qkv_rope(x, w, cos_t, sin_t, k_out, v_out, hq, counters=counters)
    for bm, bn, warps, stages in attn_tiles:
        fn = partial(ek.packed_attention, q, k_out, v_out, seg_t, scale, block_m=bm, block_n=bn, num_warps=warps,
                     num_stages=stages)
        try:
            err = rel(fn()[:real], a_ref)
            print(f"{name} packed_attention BM={bm} BN={bn} w={warps} s={stages}: {us(fn):7.1f} us, err vs HF order "
                  f"{err:.2e}", flush=True)
        except Exception as exc:  # noqa: BLE001 - some tiles do not fit
            print(f"{name} packed_attention BM={bm} BN={bn} w={warps} s={stages}: {type(exc).__name__} {str(exc)[:120]}")

    def old():
        x = ek.rmsnorm(h, ln, 1e-5)
        return ek.rope_attention(torch.nn.functional.linear(x, w), pos_t, cos, sin, seg_t, k_out, v_out, hq, scale)

    def fused():
        qq = mk.qkv_rope(ek.rmsnorm(h, ln, 1e-5), w, cos_t, sin_t, k_out, v_out, hq, counters=counters)
        return ek.packed_attention(qq, k_out, v_out, seg_t, scale)

    for tag, fn in (("old", old), ("fused", fused)):
        err = rel(fn()[:real], a_ref)
        print(f"{name} attention half {tag:5s}: {us(fn, calls=4):7.1f} us, err vs HF order {err:.2e}", flush=True)
