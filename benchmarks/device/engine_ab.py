"""A/B of engine variants on the MMLU batch of 64 (seed 0). Each variant is an engine whose
graph was captured with that variant's kernels; variants are alternated 6 times, 20 graph
replays each; logits are compared with the first variant's; then each engine's graph replay
alone and prompt 0's K/V against HF at the first and last layer. Usage: engine_ab.py MODEL...

Variants: `prev`, the engine as of commit 1d46bae (a copy of that gpu_runner at
benchmarks/device/prev_gpu_runner, made for the device calls and not kept: cuBLAS QKV,
rope_attention); this tree's engine (qkv_rope + packed_attention); and this tree's with
fused_qkv=False (cuBLAS QKV + rope_attention).

History (H100s; engines built in the order listed; calls 18-21 on forms of this tree with
the RMSNorm weights folded into the matmuls, `fold`, since removed):
  call 18: prev 91.69 ms, qkv_rope + fold 89.35; rope_attention with per-token RoPE rows
           93.35, and scaling rows by the folded norm 95.40 (neither kept); 1.3B 19.19,
           18.94, 19.25, 20.14;
  call 19: prev 92.59, qkv_rope + fold 90.75, without fold 83.95 (built third; see call 21),
           with qkv_rope's split in 2 and 32-key attention blocks 89.98; 1.3B 18.61, 19.05,
           18.47, 19.17;
  call 20: prev 92.57, fold 89.66, no fold 83.14 (third again), split2 + 32-key blocks
           89.38, + prefetched RoPE rows (now QKV_DEFAULT) 89.09; 1.3B 18.99, 18.96, 18.94,
           18.90, 18.97; graph_profile.py, each engine alone: fold 90.00, no fold 89.94;
  call 21: built first, no fold 89.85 and fold 90.17 (so the 83 ms was an artifact of the
           engine's place in the process, and folding did not pay: removed), prev 93.71;
  call 22: this tree 90.98, fused_qkv=False 92.51, prev 92.59; 1.3B 18.83, 19.15, 19.05;
  call 25 (--qkv-configs): qkv_rope with DEFAULT 89.36, QKV_DEFAULT 89.05, split 2 89.39.
Calls 10 and 14 (logs h100_call10_probes.log, h100_call14_split_rules.log) compared the
SwiGLU matmul's variants (fused_mlp_ab.py, then this script with other variants)."""
import statistics
import sys
from dataclasses import replace
from functools import partial
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import torch

import gpu_runner.engine as engine_mod
from gpu_runner import engine_kernels as ek
from gpu_runner import matmul_kernels as mk
from gpu_runner.bench import build_model, draw_prompts, load_lengths, real_token_flops
from gpu_runner.engine import PrefillEngine
from gpu_runner.timing import matmul_peak_flops, time_calls

dev = torch.device("cuda")
peak = matmul_peak_flops(device=dev)
print(f"matmul peak {peak / 1e12:.1f} TFLOP/s (20 reps)", flush=True)
lengths = load_lengths("mmlu")[np.random.default_rng(0).choice(14033, 64, replace=False)]


def prev_engine(model):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prev_gpu_runner.engine import PrefillEngine as Prev  # noqa: PLC0415 - present only for the call

    return Prev(model)


def patch(qkv=None, block_n=None, mlp=None):
    """Point the engine module at qkv_rope / packed_attention / swiglu with other settings
    (None: the defaults); an engine's graph keeps the kernels it was captured with."""
    namespace = SimpleNamespace(**{k: getattr(mk, k) for k in mk.__all__})
    if qkv:
        namespace.qkv_rope = partial(mk.qkv_rope, cfg=replace(mk.DEFAULT, **qkv))
    if mlp:
        namespace.swiglu = partial(mk.swiglu, cfg=replace(mk.DEFAULT, **mlp))
    engine_mod.mm = namespace
    engine_mod.packed_attention = partial(ek.packed_attention, block_n=block_n) if block_n else ek.packed_attention


variants = {  # name: (factory, qkv_rope / swiglu GemmConfig changes, packed_attention block_n); <= ~5 7B engines
    "default": (PrefillEngine, None, None, None),
    "fused_qkv=False": (partial(PrefillEngine, fused_qkv=False), None, None, None),
    "prev": (prev_engine, None, None, None),
}
if "--qkv-configs" in sys.argv:  # qkv_rope's GemmConfig in the engine (call 25)
    variants = {
        "qkv_rope DEFAULT": (PrefillEngine, dict(min_split=3), None, None),
        "qkv_rope QKV_DEFAULT (split 2, prefetch)": (PrefillEngine, dict(min_split=2, prefetch_rows=True), None, None),
        "qkv_rope split 2": (PrefillEngine, dict(min_split=2), None, None),
    }


def kv_error(out, ref, layer):
    """Relative error of prompt 0's K and V at `layer` against HF's cache."""
    k, v = out.prompt_kv(0)[layer]
    rk, rv = ref.layers[layer].keys[0].float(), ref.layers[layer].values[0].float()
    return max(((k.float() - rk).norm() / rk.norm()).item(), ((v.float() - rv).norm() / rv.norm()).item())


for name in (a for a in sys.argv[1:] if not a.startswith("--")):
    model = build_model(name, device="cuda", dtype="bfloat16")
    prompts = draw_prompts(lengths, model.config.vocab_size, 0)
    with torch.no_grad():
        ref_cache = model(torch.tensor([prompts[0]], device=dev), use_cache=True).past_key_values
    last = model.config.num_hidden_layers - 1
    roof = real_token_flops(model.config, lengths) / peak * 1e3
    engines, results, ref = {}, {k: [] for k in variants}, None
    for key, (make, qkv, block_n, mlp) in variants.items():
        patch(qkv, block_n, mlp)  # captured into this engine's graph by its first prefill
        try:
            engines[key] = make(model)
            logits = engines[key].prefill(prompts).logits.float()
        except Exception as exc:  # noqa: BLE001 - report and go on with the other variants
            print(f"{name} {key}: FAILED {type(exc).__name__}: {str(exc)[:300]}", flush=True)
            engines.pop(key, None)
            results.pop(key)
            continue
        finally:
            patch()
        ref = logits.clone() if ref is None else ref
        err = ((logits - ref).norm() / ref.norm()).item()
        same = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        print(f"{name} {key}: logits rel err vs {next(iter(engines))} {err:.2e}, same argmax {same:.3f}", flush=True)
    for _ in range(6):
        for key, eng in engines.items():
            results[key].append(time_calls(partial(eng.prefill, prompts), device=dev, warmup=2, reps=20).median_ms)
    for key, ms in results.items():
        med = statistics.median(ms)
        out = engines[key].prefill(prompts)
        graph = next(iter(engines[key]._graphs.values()))[0]  # noqa: SLF001 - the replay alone
        replay = time_calls(graph.replay, device=dev, warmup=2, reps=20).median_ms
        print(f"{name} {key}: medians {' '.join(f'{m:.2f}' for m in ms)} -> median {med:.2f} ms, "
              f"roofline {roof / med:.3f}; graph replay alone {replay:.2f} ms; prompt 0 K/V rel err vs HF "
              f"layer 0 {kv_error(out, ref_cache, 0):.2e}, layer {last} {kv_error(out, ref_cache, last):.2e}",
              flush=True)
    engines = model = None
    torch.cuda.empty_cache()
