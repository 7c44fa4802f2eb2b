#!/bin/bash
# Multi-GPU follow-up (4 x H100): the engine executor only, with per-rank plan / run / gather
# host times, to locate the time the 4-GPU prompt-balanced run at 1024 prompts spent outside
# its executors. Usage (repo root): OUT=/tmp/out bash benchmarks/device/multigpu_x4_phases.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
timeout 300 python3 -m torch.distributed.run --nproc-per-node 4 --nnodes 1 --master-addr 127.0.0.1 --master-port 29517 \
  benchmarks/multigpu_bench.py --model llama2-7b --dataset mmlu --batches 1024,256 \
  --executors engine --strategies packed-rr,cost-balanced,prompt-balanced --world-sizes 1,2,4 \
  --warmup 1 --reps 5 --out "$OUT/multigpu_{gpu}_phases.json"
echo "exit $?"
} 2>&1 | tee "$OUT/multigpu_phases_log.txt"
