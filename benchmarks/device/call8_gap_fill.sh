#!/bin/bash
# Device call (H100): the engine's graph-vs-eager gap diagnostic, then the experiments'
# second pass (--plan fill: the points the first run skipped) and the optional 13B plan.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 60 python3 benchmarks/device/graph_gap.py sheared-llama-1.3b
timeout 60 python3 benchmarks/device/graph_gap.py llama2-7b
PREPACKING_CODE_REV=$(git rev-parse --short HEAD 2>/dev/null || echo unknown) timeout 420 python3 -m experiments.run_gpu_all --out-dir "$OUT" --plan fill,13b
} 2>&1 | tee $OUT/log.txt
