#!/bin/bash
# Device call 20 (H100): graph profile + K/V check against HF of the 7B engine with and
# without folded norms (call 19's A/B had the unfolded one 6.8 ms faster); kernel probe of
# qkv_rope / swiglu with the row data prefetched; engine A/B with the tuned settings.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 150 python3 benchmarks/device/graph_profile.py llama2-7b default fold_norms=0
timeout 120 python3 benchmarks/device/qkv_rope_probe.py
timeout 300 python3 benchmarks/device/engine_ab.py llama2-7b sheared-llama-1.3b
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
