"""Sweep of `packed_attention`'s launch configurations (AttentionTiles) on one GPU.

Rows of MMLU prompts (../shared/data/lengths/mmlu.txt, drawn at random and in length-sorted
order, as the scoring stream's FFD rows hold them) of 4k, 32k and 65k tokens, 16 and 32 heads
of 128 (the 1.3B and 7B shapes), bf16; per configuration the median of 20 timed calls, its
output checked against the default configuration's (max abs difference), and the attention's
causal FLOPs per second. Usage: python benchmarks/tools/attention_tiles.py OUT.json
"""

import json
import sys

import numpy as np
import torch

from gpu_runner.bench import load_lengths
from gpu_runner.bench.timing import time_calls
from gpu_runner.engine.kernels import PACKED_TILES, AttentionTiles, packed_attention

CONFIGS = [AttentionTiles(*c) for c in (
    (64, 32, 4, 3), (64, 16, 4, 3), (64, 64, 4, 3), (64, 64, 8, 3), (64, 32, 4, 2), (64, 32, 4, 4), (64, 32, 8, 3),
    (128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 4, 2), (128, 128, 8, 2), (32, 32, 4, 3),
    (32, 16, 2, 3), (32, 64, 4, 3), (16, 32, 4, 3),
)]  # fmt: skip
dev = torch.device("cuda")
lengths = load_lengths("mmlu")
rng = np.random.default_rng(0)


def row(num_tokens: int, order: str) -> np.ndarray:
    """Prompt lengths filling a row of `num_tokens` (the last one cut to fit)."""
    pick = rng.permutation(lengths) if order == "random" else np.sort(rng.choice(lengths, 4096))[::-1]
    cum = np.cumsum(pick)
    n = int(np.searchsorted(cum, num_tokens))
    out = pick[: n + 1].copy()
    out[-1] -= int(cum[n] - num_tokens)
    return out[out > 0]


records = []
torch.manual_seed(0)
for num_tokens in (4096, 32768, 65536):
    for order in ("random", "sorted"):
        lens = row(num_tokens, order)
        seg = torch.from_numpy(np.repeat(np.cumsum(lens) - lens, lens)).to(dev, torch.int64)
        for heads in (16, 32):
            q, k, v = (torch.randn(num_tokens, heads, 128, device=dev, dtype=torch.bfloat16) for _ in range(3))
            flops = 4 * 128 * heads * float((lens * (lens + 1) / 2).sum())
            ref = packed_attention(q, k, v, seg, 128**-0.5, tiles=PACKED_TILES).float()
            for tiles in CONFIGS:
                try:
                    out = packed_attention(q, k, v, seg, 128**-0.5, tiles=tiles)
                    err = (out.float() - ref).abs().max().item()
                    ms = time_calls(lambda t=tiles, a=(q, k, v, seg): packed_attention(*a, 128**-0.5, tiles=t),
                                    device=dev, warmup=3, reps=20).median_ms
                except Exception as e:  # noqa: BLE001 - a configuration the card cannot launch is a finding
                    records.append({"tokens": num_tokens, "order": order, "heads": heads,
                                    "tiles": list(tiles.__dict__.values()), "error": str(e).splitlines()[0]})
                    continue
                records.append({"tokens": num_tokens, "order": order, "heads": heads, "prompts": int(lens.size),
                                "tiles": [tiles.block_m, tiles.block_n, tiles.num_warps, tiles.num_stages],
                                "median_us": round(ms * 1e3, 1), "tflops": round(flops / ms / 1e9, 1),
                                "max_abs_diff_vs_default": err})  # fmt: skip
            best = min((r for r in records if r.get("median_us") and r["tokens"] == num_tokens
                        and r["order"] == order and r["heads"] == heads), key=lambda r: r["median_us"])
            default = next(r for r in records if r.get("median_us") and r["tokens"] == num_tokens
                           and r["order"] == order and r["heads"] == heads and r["tiles"] == [64, 32, 4, 3])
            print(f"{num_tokens:6d} {order:6s} {heads:2d} heads: default {default['median_us']:8.1f} us "
                  f"best {best['tiles']} {best['median_us']:8.1f} us", flush=True)
with open(sys.argv[1], "w") as f:
    json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "records": records}, f, indent=1)
