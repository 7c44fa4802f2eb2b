#!/bin/bash
# Multi-GPU prefill benchmark (issue 6) on one host with 4 H100s: world sizes 1, 2 and 4;
# padded-rr (real HF padding through the runner's dense path, and the engine), packed-rr,
# cost-balanced (and prompt-balanced under the engine); Llama-2 7B shape, MMLU, batches 256 and
# 1024. NVLink multicast stays off. Usage (repo root): OUT=/tmp/out bash benchmarks/device/multigpu_x4.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
{
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0))"
nvidia-smi topo -m
timeout 500 python3 -m torch.distributed.run --nproc-per-node 4 --nnodes 1 --master-addr 127.0.0.1 --master-port 29517 \
  benchmarks/multigpu_bench.py --model llama2-7b --dataset mmlu --batches 256,1024 \
  --executors runner,engine --backends dense,varlen --padded-runs runner/dense,engine/varlen \
  --max-padded-batch 256 --warmup 1 --reps 3 --out "$OUT/multigpu_{gpu}.json"
echo "exit $?"
} 2>&1 | tee "$OUT/multigpu_log.txt"
