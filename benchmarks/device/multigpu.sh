#!/bin/bash
# Multi-GPU prefill benchmark (issue 6) on one host with 2 GPUs (H100 x2): padded-rr, packed-rr,
# cost-balanced on 1 and 2 GPUs; Llama-2 7B shape, random bf16 weights built on each GPU; MMLU
# lengths (seed 0), batches 256 and 1024; the prepacked runner under dense (the paper's method)
# and varlen, then the PrefillEngine. Writes $OUT/multigpu_<gpu>.json (records rewritten after
# each measurement, so a timeout keeps what was measured) and $OUT/multigpu_log.txt.
# NVLink multicast stays off. Usage (repo root): OUT=/tmp/out bash benchmarks/device/multigpu.sh
set -o pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=. NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
NPROC=${NPROC:-$(nvidia-smi -L | wc -l)}
{
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'gpus', torch.cuda.device_count(), torch.cuda.get_device_name(0))"
nvidia-smi topo -m
timeout 330 python3 -m torch.distributed.run --nproc-per-node "$NPROC" --nnodes 1 --master-addr 127.0.0.1 --master-port 29517 \
  benchmarks/multigpu_bench.py --model llama2-7b --dataset mmlu --batches 256,1024 \
  --executors runner,engine --backends dense,varlen --padded-runs runner/dense,engine/varlen \
  --max-padded-batch 256 --warmup 1 --reps 3 --out "$OUT/multigpu_{gpu}.json"
echo "exit $?"
} 2>&1 | tee "$OUT/multigpu_log.txt"
