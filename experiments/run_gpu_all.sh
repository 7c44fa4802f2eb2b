#!/bin/bash
# GPU driver for one H100 (about 7 minutes): experiments 1-4 and 6 (+5 measured, 7 on the
# result) in one Python process. CSVs and the log go to $OUT (default /tmp/out); arguments
# pass through (e.g. --plan fill, --plan 13b, --models, --stages). Then, with $OUT fetched:
# `python -m experiments.collect $OUT`, commit experiments/results, `python -m experiments.plot`.
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=.
OUT=${OUT:-/tmp/out}; export OUT; mkdir -p "$OUT"
{
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout 560 python3 -m experiments.run_gpu_all --out-dir "$OUT" "$@"
} 2>&1 | tee "$OUT/run_gpu_all.log"
