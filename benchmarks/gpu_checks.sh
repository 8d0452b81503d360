#!/usr/bin/env bash
# The CUDA checks, as one script for a session that is lent a GPU machine (see CONTRIBUTING.md).
# Run from the repository root on the GPU machine; everything it prints and writes goes to $OUT (or ./gpu_out).
#   bash benchmarks/gpu_checks.sh
# xformers is not installable there without a network: carry its wheel in .whl/ (CONTRIBUTING.md) and
# this script installs it first; without it, the xformers tests skip and say why.
set -uo pipefail
OUT="${OUT:-gpu_out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
# 1. CUDA tests: SDPA and xformers against math in fp32/bf16/fp16, parity on CUDA (about 1 minute)
timeout 300 python3 -m pytest -q tests/layers/test_attention.py tests/models/test_flava_parity.py 2>&1 | tee "$OUT/tests.txt"
# 2. The step benchmark on the GPU, fp32 and bf16, full size (a few minutes)
timeout 400 python3 benchmarks/flava_step.py --size full --batch 16 --steps 5 --device cuda --dtype bf16 2>&1 | tee "$OUT/step_bf16.txt"
timeout 300 python3 benchmarks/flava_step.py --size full --batch 8 --steps 5 --device cuda --dtype fp32 2>&1 | tee "$OUT/step_fp32.txt"
echo "results in $OUT"
