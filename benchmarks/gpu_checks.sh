#!/usr/bin/env bash
# The CUDA checks, as one script for a session that is lent a GPU machine (see CONTRIBUTING.md).
# Run from the repository root on the GPU machine; everything it prints and writes goes to $OUT (or ./gpu_out).
#   bash benchmarks/gpu_checks.sh
# That machine has no network: carry the wheels it lacks (xformers, torchdata, braceexpand) in .whl/
# (CONTRIBUTING.md) and this script installs them first; without xformers its tests skip and say why.
set -uo pipefail
source benchmarks/gpu_env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"
python3 -c "import xformers, xformers.ops; print('xformers', xformers.__version__)" 2>&1 | tail -1 | tee -a "$OUT/gpu.txt"
# 1. CUDA tests: SDPA and xformers against math in fp32/bf16/fp16, parity on CUDA incl. the xformers backend
timeout 150 python3 -m pytest -q -rs tests/layers/test_attention.py tests/models/test_flava_parity.py 2>&1 | tee "$OUT/tests.txt"
# 2. The step benchmark on the GPU, full size, bf16 and fp32, sdpa and xformers side by side with transformers
timeout 150 python3 benchmarks/flava_step.py --size full --batch 16 --steps 5 --device cuda --dtype bf16 --backends xformers 2>&1 | tee "$OUT/step_bf16.txt"
timeout 100 python3 benchmarks/flava_step.py --size full --batch 8 --steps 5 --device cuda --dtype fp32 --backends xformers 2>&1 | tee "$OUT/step_fp32.txt"
[ "${SKIP_PRETRAIN:-0}" = 1 ] && exit 0
# 3. The pretraining recipe on CUDA: FSDP2 + bf16 autocast + NCCL, medium model, short run
timeout 150 torchrun --standalone --nproc_per_node=1 recipes/flava/pretrain.py --config recipes/flava/configs/medium.yaml \
  model.codebook.allow_random=true distributed=fsdp precision=bf16 optim.total_steps=300 optim.warmup_steps=50 eval_every=300 checkpoint.every=300 \
  log_every=50 data.num_workers=4 run_dir=/tmp/run-medium 2>&1 | tr '\r' '\n' | grep -v "it/s" | tail -40 | tee "$OUT/pretrain_fsdp_bf16.txt"
cp /tmp/run-medium/summary.txt "$OUT/pretrain_summary.txt" 2>/dev/null
echo "results in $OUT"
