#!/bin/bash
# Device call 2 (H100): GPU tests, engine profile (kernel categories, gemm rates, q_chunk
# variants), and a quick scenario-a check of the HF baselines with autograd off.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 60 python3 -m pytest -q -m gpu tests/test_engine_cuda.py -p no:cacheprovider 2>&1 | tail -15
timeout 90 python3 benchmarks/device/profile_engine.py sheared-llama-1.3b llama2-7b
timeout 60 python3 -m gpu_runner.bench_cli --model llama2-7b --scenarios a --methods padded,paper,best --modes prefill --reps 5 --out $OUT/quick_7b.json
} 2>&1 | tee $OUT/log.txt
