#!/bin/bash
# Device call 21 (H100): GPU suite on the final kernels (qkv_rope with QKV_DEFAULT,
# packed_attention with 32-key blocks, folded norms); engine A/B (no folding first, default,
# the previous engine) with a K/V check against HF and the replay alone; then scenario a
# (padded, paper, best) and the best stream for both shapes.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 150 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider -p no:warnings 2>&1 | tail -15
timeout 120 python3 benchmarks/device/engine_ab.py llama2-7b
timeout 150 python3 -m gpu_runner.bench_cli --model llama2-7b --reps 5 --methods padded,paper,best --stream-methods best --out $OUT/prefill_7b.json
timeout 100 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --methods padded,paper,best --stream-methods best --out $OUT/prefill_13b.json
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
