#!/bin/bash
# Device call (H100): the final engine of this session (fused SwiGLU with the K-split last wave)
# (call 15): the whole GPU suite, then scenario a (padded, paper, best) and the best stream for
# both shapes, then the engine A/B (cuBLAS + silu_mul / fused without split / fused).
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 150 python3 -m pytest -q -m gpu tests/ -x -p no:cacheprovider -p no:warnings 2>&1 | tail -3
timeout 150 python3 -m gpu_runner.bench_cli --model llama2-7b --reps 5 --methods padded,paper,best --stream-methods best --out $OUT/prefill_7b.json
timeout 100 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --methods padded,paper,best --stream-methods best --out $OUT/prefill_13b.json
timeout 150 python3 benchmarks/device/engine_ab.py llama2-7b sheared-llama-1.3b
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
