"""Tile variants of the fused RoPE attention kernel at the MMLU batch-64 shape of the 7B (32
heads) and 1.3B (16 heads) models: graph-replay time per call and the error against the torch
reference (HF's bf16 rope, fp32 softmax). Usage: attn_variants_probe.py [BM BN WARPS STAGES]
(with a configuration: that one alone, 7B shape, e.g. under
`ncu --clock-control none -k regex:rope_attention -c 1 --section SpeedOfLight --section Occupancy`)

Call 10 (H100, log in results/logs/h100_call10_probes.log) ran this with two more knobs the
kernel then had: RoPE arithmetic in float32 (the old kernel: 123.7 us on 7B, 68.9 us on 1.3B)
against the model dtype (116.1 / 63.9 us, and closer to the torch reference: rel err 2.7e-3
against 3.1e-3), which the kernel now uses; and Triton's `maxnreg` register cap (128 or 168:
28-75% slower, spills), dropped. The kernel is latency-bound: ncu (its 7B launch, see above) showed
254 registers a thread and 82 KB of shared memory, so 2 programs (8 warps) per SM."""
import sys

import torch
from mmlu_row import mmlu_row  # this folder

from gpu_runner import engine_kernels as ek
from gpu_runner.timing import time_graph

dev = torch.device("cuda")
row = mmlu_row(dev)
cu, real, t, pos_t, seg_t, cos, sin = row.cu, row.real, row.t, row.pos_t, row.seg_t, row.cos, row.sin
d = 128


variants = [  # BM, BN, warps, stages
    (64, 64, 4, 3), (64, 64, 4, 2), (128, 64, 8, 3), (64, 128, 4, 2), (64, 32, 4, 3), (64, 64, 4, 3),
]
shapes = (("7b", 32), ("1.3b", 16))
if len(sys.argv) > 4:
    variants, shapes = [tuple(int(a) for a in sys.argv[1:5])], shapes[:1]
for name, hq in shapes:
    g = torch.Generator(device=dev).manual_seed(0)
    qkv = torch.randn((t, 3 * hq * d), device=dev, dtype=torch.bfloat16, generator=g)
    kr, vr = (torch.empty(t, hq, d, device=dev, dtype=torch.bfloat16) for _ in range(2))
    q = ek._rope_store_torch(qkv, pos_t, cos, sin, kr, vr, hq)
    ref = torch.cat([ek._packed_attention_torch(q[a:b], kr[a:b], vr[a:b], seg_t[a:b] - a, d**-0.5)
                     for a, b in zip(cu[:-1], cu[1:])]).float()
    for bm, bn, warps, stages in variants:
        k_out, v_out = (torch.full((t, hq, d), float("nan"), device=dev, dtype=torch.bfloat16) for _ in range(2))

        def fn():
            return ek.rope_attention(qkv, pos_t, cos, sin, seg_t, k_out, v_out, hq, d**-0.5, block_m=bm, block_n=bn,
                                     num_warps=warps, num_stages=stages)

        tag = f"BM={bm} BN={bn} w={warps} s={stages}"
        try:
            out = fn()[:real].float()
            err = ((out - ref).norm() / ref.norm()).item()
            kerr = ((k_out[:real].float() - kr[:real].float()).abs().max()).item()
            us = time_graph(fn, device=dev, calls=8).median_ms * 1e3
            print(f"{name} {tag}: {us:6.1f} us  rel err vs torch {err:.2e}, K max |diff| {kerr:.3g}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"{name} {tag}: FAILED {type(exc).__name__}: {str(exc)[:200]}", flush=True)
