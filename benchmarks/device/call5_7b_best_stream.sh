#!/bin/bash
# NOT RUN (device allowance spent): the one missing record, the 7B `best` stream (~45 s).
# Afterwards: python benchmarks/merge_results.py benchmarks/results/prefill_h100.json \
#   benchmarks/results/prefill_h100.json <files_at>/stream_best_7b.json
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
timeout 110 python3 -m gpu_runner.bench_cli --model llama2-7b --scenarios b --stream-methods best \
    --out $OUT/stream_best_7b.json 2>&1 | tee $OUT/log.txt
# Optional second step (~90 s): packed-attention tile configurations vs flash varlen.
timeout 90 python3 benchmarks/device/tune_attention.py 2>&1 | tee $OUT/tune_attention.txt
