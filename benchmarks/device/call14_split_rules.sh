#!/bin/bash
# Device call (H100): split rules of the fused SwiGLU matmul and a heads-fastest attention grid
# (call 14): GPU tests, the SwiGLU probe, the engine A/B on both shapes (engine_ab.py then had
# seven variants, then four after an out-of-memory: see the log's header).
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 200 python3 -m pytest -q -m gpu tests/test_engine_cuda.py -x -p no:cacheprovider -p no:warnings 2>&1 | tail -5
timeout 150 python3 benchmarks/device/gemm_tail_probe.py 7b 1.3b
timeout 240 python3 benchmarks/device/engine_ab.py llama2-7b sheared-llama-1.3b
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
