#!/bin/bash
# Device call (H100): kernel GPU tests, the fused-attention tile sweep, then the benchmark
# (scenario a: padded, sorted, paper, best; scenario b: sorted and best streams) for both
# shapes with the GEMM-residual engine and fused RoPE-attention.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 90 python3 -m pytest -q -m gpu tests/test_engine_cuda.py -k "kernels or rope or graphs" -x -p no:cacheprovider 2>&1 | tail -4
timeout 80 python3 benchmarks/device/tune_attention.py
timeout 200 python3 -m gpu_runner.bench_cli --model llama2-7b --reps 5 --methods padded,sorted,paper,best --stream-methods best,sorted --out $OUT/prefill_7b.json
timeout 150 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --methods padded,sorted,paper,best --stream-methods best,sorted --out $OUT/prefill_13b.json
} 2>&1 | tee $OUT/log.txt
