#!/bin/bash
# Device call 19 (H100): GPU suite; kernel probe (qkv_rope GemmConfigs, packed_attention tiles,
# the folded MLP norm); engine A/B: the previous engine (benchmarks/device/prev_gpu_runner, a
# copy of commit 1d46bae's gpu_runner), this tree's default, without folding, and with a tuned
# qkv_rope split rule + attention tile.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 170 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider -p no:warnings 2>&1 | tail -25
timeout 150 python3 benchmarks/device/qkv_rope_probe.py
timeout 260 python3 benchmarks/device/engine_ab.py llama2-7b sheared-llama-1.3b
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
