"""Time the fused RoPE + packed-tile attention kernel (`rope_attention`) over tile
configurations on the benchmark batch (MMLU seed 0, 64 prompts, 4,347 tokens -> 4,352), for
the 1.3B (16 heads) and 7B (32 heads) shapes, next to the unfused pair it replaces (RoPE
kernel + torch's flash varlen, FA2). Prints one line per configuration."""
from functools import partial
from itertools import product

import numpy as np
import torch

from gpu_runner.bench import load_lengths
from gpu_runner.engine_kernels import rope_attention, rope_store
from gpu_runner.timing import time_calls

dev = torch.device("cuda")
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]
total = int(lengths.sum())
t = -(-total // 128) * 128
starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
seg_np = np.concatenate([np.repeat(starts, lengths), np.full(t - total, total)])
seg = torch.tensor(seg_np, device=dev)
pos = torch.tensor(np.arange(t) - seg_np, device=dev)
cu = torch.tensor(np.concatenate([starts, [total, t]]), device=dev, dtype=torch.int32)
d = 128
freqs = torch.arange(4096, device=dev).float()[:, None] * (10000 ** (-torch.arange(0, d, 2, device=dev).float() / d))
cos, sin = freqs.cos().bfloat16(), freqs.sin().bfloat16()
for heads in (16, 32):
    qkv = torch.randn(t, 3 * heads * d, device=dev, dtype=torch.bfloat16)
    k, v = (torch.empty(t, heads, d, device=dev, dtype=torch.bfloat16) for _ in range(2))

    def unfused(qkv=qkv, k=k, v=v, heads=heads):
        q = rope_store(qkv, pos, cos, sin, k, v, heads)
        return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, 512, 512, 0.0, True, False)[0]

    fa = time_calls(unfused, device=dev, warmup=3, reps=50)
    print(f"heads {heads}: rope_store + flash varlen (max_len 512) {fa.median_ms * 1e3:.1f} us")
    configs = [(64, bn, 4, st) for bn, st in product((32, 64), (2, 3, 4))]
    for bm, bn, warps, stages in configs + [(128, 64, 8, 3)]:
        try:
            fn = partial(rope_attention, qkv, pos, cos, sin, seg, k, v, heads, d**-0.5, block_m=bm, block_n=bn,
                         num_warps=warps, num_stages=stages)
            tm = time_calls(fn, device=dev, warmup=3, reps=50)
            print(f"heads {heads}: rope_attention BM={bm} BN={bn} warps={warps} stages={stages}: {tm.median_ms * 1e3:.1f} us")
        except Exception as exc:  # noqa: BLE001 - some tiles do not fit shared memory
            print(f"heads {heads}: rope_attention BM={bm} BN={bn} warps={warps} stages={stages}: {type(exc).__name__}")
