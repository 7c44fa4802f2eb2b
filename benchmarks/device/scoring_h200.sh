#!/bin/bash
# Scoring benchmark (issue 15) on one H200, bf16, random weights: gpu_runner.score (runner
# path) against lm-eval's HFLM (batch 64 and auto) on the MMLU-shaped, HellaSwag-shaped and
# mixed 200-request sets, both model shapes. Needs lm_eval (and accelerate, which HFLM
# imports) importable on the machine. About 12-20 min of device time in all; each line has
# its own timeout so one slow method cannot eat the rest.
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
timeout 560 python3 benchmarks/scoring_bench.py --model sheared-llama-1.3b --sets mmlu,hellaswag,mixed200 \
    --methods ours-auto,ours-identical,ours-tree,hflm-64,hflm-auto --out $OUT/scoring_13b.json
timeout 560 python3 benchmarks/scoring_bench.py --model llama2-7b --sets mmlu,mixed200 \
    --methods ours-auto,hflm-64,hflm-auto --out $OUT/scoring_7b_mmlu.json
timeout 560 python3 benchmarks/scoring_bench.py --model llama2-7b --sets hellaswag \
    --methods ours-identical,ours-tree,hflm-64 --out $OUT/scoring_7b_hellaswag.json
} 2>&1 | grep -v -i "warn" | tee $OUT/log.txt
