#!/bin/bash
# Device call (H100): RoPE in the model dtype inside the fused attention (call 10): GPU tests,
# the attention variants, then scenario a (padded, paper, best) and the best stream for both shapes.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 150 python3 -m pytest -q -m gpu tests/test_engine_cuda.py -x -p no:cacheprovider 2>&1 | tail -3
timeout 150 python3 -m gpu_runner.bench_cli --model llama2-7b --reps 5 --methods padded,paper,best --stream-methods best --out $OUT/prefill_7b.json
timeout 100 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --methods padded,paper,best --stream-methods best --out $OUT/prefill_13b.json
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
