#!/bin/bash
# Device call (H100): engine GPU tests, fused RoPE-attention tile sweep, the SwiGLU-GEMM probe,
# and the engine profile (variants + per-kernel breakdown) for both shapes.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
nvidia-smi --query-gpu=name,clocks.max.sm,power.limit --format=csv
timeout 200 python3 -m pytest -q -m gpu tests/test_engine_cuda.py -x -p no:cacheprovider 2>&1 | tail -8
timeout 120 python3 benchmarks/device/tune_attention.py
timeout 60 python3 benchmarks/device/swiglu_gemm_probe.py
(while sleep 1; do nvidia-smi --query-gpu=clocks.sm,power.draw --format=csv,noheader; done) > $OUT/clocks.txt &
timeout 120 python3 benchmarks/device/profile_engine.py sheared-llama-1.3b llama2-7b
kill %1 2>/dev/null
sort $OUT/clocks.txt | uniq -c | sort -rn | head -8
} 2>&1 | tee $OUT/log.txt
