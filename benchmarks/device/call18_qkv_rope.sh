#!/bin/bash
# Device call 18 (H100): GPU suite on this tree; kernel probe of the attention half of a layer
# (old / folded norm / QKV matmul with RoPE epilogue + packed attention); engine A/B against
# the previous engine (benchmarks/device/prev_gpu_runner, a copy of commit 1d46bae's gpu_runner).
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 170 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider -p no:warnings 2>&1 | tail -25
timeout 130 python3 benchmarks/device/qkv_rope_probe.py
timeout 270 python3 benchmarks/device/engine_ab.py llama2-7b sheared-llama-1.3b
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
