#!/bin/bash
# Device call 24 (H100): after the review refactors (the attention kernels' shared online-
# softmax step, the probes' shared batch layout): the whole GPU suite, and the kernel probe.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 150 python3 -m pytest -q -m gpu tests/ -p no:cacheprovider -p no:warnings 2>&1 | tail -15
timeout 150 python3 benchmarks/device/qkv_rope_probe.py
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
