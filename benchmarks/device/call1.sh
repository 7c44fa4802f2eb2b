#!/bin/bash
# Device call 1 (H100): versions, GPU tests, 1.3B scenarios a + b, a first 7B scenario a.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
python3 benchmarks/device/versions.py
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
timeout 100 python3 -m pytest -q -m gpu tests/test_engine_cuda.py -p no:cacheprovider 2>&1 | tail -25
timeout 120 python3 -m pytest -q -m gpu tests/ --ignore=tests/test_engine_cuda.py -p no:cacheprovider 2>&1 | tail -25
timeout 200 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --out $OUT/prefill_13b.json
timeout 90 python3 -m gpu_runner.bench_cli --model llama2-7b --scenarios a --methods padded,paper,best --modes prefill --reps 5 --out $OUT/prefill_7b_quick.json
} 2>&1 | tee $OUT/log.txt
