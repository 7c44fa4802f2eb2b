#!/bin/bash
# Device call 3 (H100): GPU tests, engine profile, the full benchmark for both shapes
# (scenarios a + b), then the cost-model sweep with the time left (rows written as they come).
set -o pipefail; export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; mkdir -p $OUT
{
ATT=auto
timeout 150 python3 -m pytest -q -m gpu tests/ -rf -p no:cacheprovider 2>&1 | tail -25 | tee $OUT/tests.txt
grep -q "test_packed_attention_matches_reference FAILED\|FAILED.*packed" $OUT/tests.txt && ATT=flash
echo "best uses attention=$ATT"
timeout 50 python3 benchmarks/device/profile_engine.py sheared-llama-1.3b llama2-7b
timeout 270 python3 -m gpu_runner.bench_cli --model llama2-7b --reps 5 --attention $ATT --stream-methods padded,paper,best --out $OUT/prefill_7b.json
timeout 130 python3 -m gpu_runner.bench_cli --model sheared-llama-1.3b --reps 10 --attention $ATT --out $OUT/prefill_13b.json
left=$((540 - SECONDS)); echo "sweep gets ${left}s"
[ $left -gt 20 ] && timeout $left python3 -m gpu_runner.bench_cli --sweep --model sheared-llama-1.3b,llama2-7b --datasets mmlu,alpaca,samsum,wikitext256 --batches 16,64 --combos pad/padded,ffd/dense,ffd/varlen,pad/varlen --out $OUT/sweep.csv
} 2>&1 | tee $OUT/log.txt
