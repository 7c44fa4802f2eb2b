#!/bin/bash
# Device call 22 (H100): the final engine of this session (qkv_rope with QKV_DEFAULT,
# packed_attention with 32-key blocks; no norm folding): the whole GPU suite, the engine A/B
# (default, fused_qkv=False, the previous engine) with K/V checks against HF, then scenario a
# (padded, paper, best) and the best stream for both shapes.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 130 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider -p no:warnings 2>&1 | tail -15
timeout 170 python3 benchmarks/device/engine_ab.py llama2-7b sheared-llama-1.3b
timeout 160 python3 -m gpu_runner.bench_cli --model llama2-7b --reps 5 --methods padded,paper,best --stream-methods best --out $OUT/prefill_7b.json
timeout 110 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --methods padded,paper,best --stream-methods best --out $OUT/prefill_13b.json
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
