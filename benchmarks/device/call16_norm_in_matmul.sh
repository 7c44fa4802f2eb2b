#!/bin/bash
# Device call (H100): the MLP's RMSNorm inside the fused SwiGLU matmul (call 16): the engine's GPU
# tests, the MLP-front probe, the engine A/B on both shapes. It ran an attempt that was not kept
# (1.3x slower; see results/logs/h100_call16_norm_in_matmul.log); the scripts it calls are back
# in their call-15 form, so running it now repeats call 15's probe and A/B.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 200 python3 -m pytest -q -m gpu tests/test_engine_cuda.py -x -p no:cacheprovider -p no:warnings 2>&1 | tail -5
timeout 150 python3 benchmarks/device/gemm_tail_probe.py 7b 1.3b
timeout 200 python3 benchmarks/device/engine_ab.py llama2-7b sheared-llama-1.3b
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
