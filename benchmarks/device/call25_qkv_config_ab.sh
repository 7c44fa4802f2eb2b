#!/bin/bash
# Device call 25 (H100): call 24's probe had qkv_rope faster with DEFAULT than with
# QKV_DEFAULT once the norms were no longer folded (596 against 670 us at the 7B shape);
# the engine A/B of the three qkv_rope configurations on 7B.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
timeout 200 python3 benchmarks/device/engine_ab.py llama2-7b --qkv-configs 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
