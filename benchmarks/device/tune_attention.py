"""Time the packed-tile attention kernel over tile configurations on the benchmark batch
(MMLU seed 0, 64 prompts, 4,347 tokens -> 4,352), for the 1.3B (16 heads) and 7B (32 heads)
shapes, next to torch's flash varlen (FA2). Not run yet: prints one line per configuration."""
from functools import partial
from itertools import product

import numpy as np
import torch

from gpu_runner.bench import load_lengths
from gpu_runner.engine_kernels import packed_attention
from gpu_runner.timing import time_calls

dev = torch.device("cuda")
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]
total = int(lengths.sum())
t = -(-total // 128) * 128
starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
seg = torch.tensor(np.concatenate([np.repeat(starts, lengths), np.full(t - total, total)]), device=dev)
cu = torch.tensor(np.concatenate([starts, [total, t]]), device=dev, dtype=torch.int32)
for heads in (16, 32):
    q, k, v = (torch.randn(t, heads, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
    fa = time_calls(partial(torch.ops.aten._flash_attention_forward, q, k, v, cu, cu, 512, 512, 0.0, True, False),
                    device=dev, warmup=3, reps=50)
    print(f"heads {heads}: flash varlen (max_len 512) {fa.median_ms * 1e3:.1f} us")
    for bm, bn, warps, stages in product((64, 128), (32, 64, 128), (4, 8), (1, 2, 3)):
        try:
            fn = partial(packed_attention, q, k, v, seg, 128**-0.5, block_m=bm, block_n=bn, num_warps=warps,
                         num_stages=stages)
            tm = time_calls(fn, device=dev, warmup=3, reps=50)
            print(f"heads {heads}: packed BM={bm} BN={bn} warps={warps} stages={stages}: {tm.median_ms * 1e3:.1f} us")
        except Exception as exc:  # noqa: BLE001 - some tiles do not fit shared memory
            print(f"heads {heads}: packed BM={bm} BN={bn} warps={warps} stages={stages}: {type(exc).__name__}")
