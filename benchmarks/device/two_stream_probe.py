"""Would two concurrent halves hide the memory-bound kernels behind the matmuls?

The batch's prompts are split into two groups of about equal tokens; each group is its own
flat row (rounded up to 128 tokens) and runs the engine's layer sequence on its own CUDA
stream, both inside one CUDA graph, so one half's RMSNorm / attention / SiLU*up can run in
the other half's matmul tails. Compared with the engine's single row. Usage:
two_stream_probe.py MODEL [MODEL...]
"""
import sys
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from gpu_runner.bench import build_model, draw_prompts, load_lengths, real_token_flops
from gpu_runner.engine import PrefillEngine
from gpu_runner.engine_kernels import rmsnorm, rope_attention, silu_mul
from gpu_runner.timing import matmul_peak_flops, time_calls, time_graph

dev = torch.device("cuda")
peak = matmul_peak_flops(device=dev)
print(f"matmul peak {peak / 1e12:.1f} TFLOP/s", flush=True)
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]


def half_inputs(lens, vocab, seed):
    total = int(lens.sum())
    t = -(-total // 128) * 128
    cu = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=cu[1:])
    ids = np.zeros(t, dtype=np.int64)
    ids[:total] = np.random.default_rng(seed).integers(1, vocab, total)
    pos = np.zeros(t, dtype=np.int64)
    pos[:total] = np.arange(total) - np.repeat(cu[:-1], lens)
    seg = np.full(t, total, dtype=np.int64)
    seg[:total] = np.repeat(cu[:-1], lens)
    last = cu[1:] - 1
    return {k: torch.from_numpy(v).to(dev) for k, v in (("ids", ids), ("pos", pos), ("seg", seg), ("last", last))}, t


def run_half(eng, inp, kv, events=None, wait=None):
    """The engine's layer sequence over one flat row; kv [layers, 2, t, Hkv, D]."""
    h = F.embedding(inp["ids"], eng.embed)
    t = h.shape[0]
    for li, w in enumerate(eng.layers):
        x = rmsnorm(h, w.ln1, eng.eps)
        qkv = F.linear(x, w.qkv, w.qkv_bias)
        if events is not None and li == 0:
            events.record()
        if wait is not None and li == 0:
            torch.cuda.current_stream().wait_event(wait)
        a = rope_attention(qkv, inp["pos"], eng.cos, eng.sin, inp["seg"], kv[li, 0], kv[li, 1], eng.num_q_heads, eng.scale)
        h.addmm_(a.reshape(t, -1), w.o.t())
        x = rmsnorm(h, w.ln2, eng.eps)
        gate_up = F.linear(x, w.gate_up)
        h.addmm_(silu_mul(gate_up), w.down.t())
    hl = h.index_select(0, inp["last"]).float()
    xl = eng.final_norm * (hl * torch.rsqrt(hl.pow(2).mean(-1, keepdim=True) + eng.eps)).to(torch.bfloat16)
    return F.linear(xl, eng.lm_head)


for name in sys.argv[1:]:
    model = build_model(name, device="cuda", dtype="bfloat16")
    cfg = model.config
    prompts = draw_prompts(lengths, cfg.vocab_size, 0)
    roof = real_token_flops(cfg, lengths) / peak * 1e3
    eng = PrefillEngine(model)
    base = time_calls(partial(eng.prefill, prompts), device=dev, warmup=3, reps=20).median_ms
    print(f"{name}: engine one row {base:.2f} ms -> roofline {roof / base:.3f}", flush=True)
    order = np.argsort(-lengths, kind="stable")
    groups, sums = ([], []), [0, 0]
    for i in order:  # greedy balance
        g = 0 if sums[0] <= sums[1] else 1
        groups[g].append(i)
        sums[g] += int(lengths[i])
    halves = [half_inputs(lengths[np.array(gi)], cfg.vocab_size, s) for s, gi in enumerate(groups)]
    ts = [t for _, t in halves]
    print(f"  halves: real {sums} rows {ts} (one row {-(-int(lengths.sum()) // 128) * 128})", flush=True)
    kvs = [torch.empty(len(eng.layers), 2, t, eng.num_kv_heads, eng.head_dim, device=dev, dtype=torch.bfloat16) for t in ts]

    def sequential():
        for (inp, _), kv in zip(halves, kvs):
            run_half(eng, inp, kv)

    def concurrent(offset, priority):
        s1 = torch.cuda.Stream(priority=priority)
        cur = torch.cuda.current_stream()
        s1.wait_stream(cur)
        ev = torch.cuda.Event() if offset else None
        run_half(eng, halves[0][0], kvs[0], events=ev)
        with torch.cuda.stream(s1):
            run_half(eng, halves[1][0], kvs[1], wait=ev)
        cur.wait_stream(s1)

    print(f"  two halves, one stream: {time_graph(sequential, device=dev).median_ms:.2f} ms", flush=True)
    for offset in (False, True):
        for priority in (0, -1):
            try:
                ms = time_graph(partial(concurrent, offset, priority), device=dev).median_ms
                print(f"  two streams offset={offset} priority={priority}: {ms:.2f} ms -> roofline {roof / ms:.3f}",
                      flush=True)
            except Exception as exc:  # noqa: BLE001
                print(f"  two streams offset={offset} priority={priority}: FAILED {type(exc).__name__}: {exc}")
    eng = model = kvs = halves = None
    torch.cuda.empty_cache()
