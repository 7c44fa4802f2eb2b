#!/bin/bash
# Device call (H100): the one-matmul fused SwiGLU kernel, GROUP_M 12 (call 12): GPU tests, then scenario a
# (padded, paper, best) and the best stream for both shapes, then the 1.3B best twice more.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 150 python3 -m pytest -q -m gpu tests/ -x -p no:cacheprovider -p no:warnings 2>&1 | tail -3
timeout 150 python3 -m gpu_runner.bench_cli --model llama2-7b --reps 5 --methods padded,paper,best --stream-methods best --out $OUT/prefill_7b.json
timeout 100 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --methods padded,paper,best --stream-methods best --out $OUT/prefill_13b.json
for i in 1 2; do timeout 60 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --methods best --modes prefill --scenarios a --out $OUT/extra_13b_$i.json; done
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
