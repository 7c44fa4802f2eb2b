"""The probes' benchmark batch as the engine lays it out: the MMLU batch of 64 (seed 0,
4,347 tokens) in one flat row of T = 4,352 tokens (rounded up to 128), with each token's
position in its prompt, its prompt's first index (the tail padding is a segment of its
own) and RoPE tables (base 10,000) in bf16. Imported by the probes in this folder."""
from types import SimpleNamespace

import numpy as np
import torch

from gpu_runner.bench import load_lengths


def mmlu_row(dev: torch.device, head_dim: int = 128, max_positions: int = 4096) -> SimpleNamespace:
    """lengths, cu (prompt bounds), real (tokens), t (row length), pos / seg (numpy and
    `pos_t` / `seg_t` on dev), cos / sin [max_positions, head_dim / 2] bf16 tables on dev."""
    lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]
    cu = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=cu[1:])
    real = int(cu[-1])
    t = -(-real // 128) * 128
    pos = np.zeros(t, dtype=np.int64)
    pos[:real] = np.arange(real) - np.repeat(cu[:-1], lengths)
    seg = np.full(t, real, dtype=np.int64)
    seg[:real] = np.repeat(cu[:-1], lengths)
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, device=dev, dtype=torch.float32) / head_dim))
    freqs = torch.arange(max_positions, device=dev, dtype=torch.float32)[:, None] * inv[None, :]
    return SimpleNamespace(lengths=lengths, cu=cu, real=real, t=t, pos=pos, seg=seg,
                           pos_t=torch.from_numpy(pos).to(dev), seg_t=torch.from_numpy(seg).to(dev),
                           cos=freqs.cos().bfloat16().contiguous(), sin=freqs.sin().bfloat16().contiguous())
