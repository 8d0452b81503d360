#!/usr/bin/env bash
# Issue 13 on one GPU (H100 or H200) in under 8 minutes: the released-size step in bf16 compiled whole
# (compile=step) over a batch sweep with MFU against the card's dense bf16 peak, transformers at its own
# best batch; host-sync checks of a non-logging step (set_sync_debug_mode("error")); CUDA graphs at one
# batch; JPEG decoding on the device; the pretraining recipe with compile=step. Run from the repository root;
# everything goes to $OUT.
#   bash benchmarks/gpu_throughput.sh                  # on the GPU machine
#   DRY=1 bash benchmarks/gpu_throughput.sh            # the same commands on CPU at the tiny size (minutes)
# Each part has its own timeout and writes its file as it goes (the sweep after every batch size), so a
# part cut short keeps what it measured. BATCHES, STEPS and SKIP_RECIPE=1 override the plan.
set -uo pipefail
source benchmarks/gpu_env.sh
quiet() { tr '\r' '\n' | grep -v -e Warning -e "return func" -e "warnings.warn" -e "^W[0-9]" -e "it/s" -e "s/it"; }
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; SIZE=tiny; DTYPE=fp32; BATCHES=${BATCHES:-8,16}; STEPS=${STEPS:-2}; GRAPH_BATCH=8
  T_SWEEP=900; T_GRAPHS=600; T_RECIPE=600; RECIPE_CFG=recipes/flava/configs/demo.yaml; PRECISION=fp32
  echo "dry run on CPU (tiny)" | tee "$OUT/gpu.txt"
else
  DEV=cuda; SIZE=full; DTYPE=bf16; BATCHES=${BATCHES:-16,32,64,128,256}; STEPS=${STEPS:-3}; GRAPH_BATCH=64
  T_SWEEP=300; T_GRAPHS=100; T_RECIPE=70; RECIPE_CFG=recipes/flava/configs/medium.yaml; PRECISION=bf16
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
# 1. The step at the released size, bf16: transformers, mmkit eager, mmkit compiled whole (one graph per batch
#    kind, batch size symbolic so the sweep compiles once), each with the tokenizer in the step and with cached
#    ids; MFU and each model at its own best batch; the sync checks on the first batch size.
timeout $T_SWEEP python3 benchmarks/flava_step.py --size $SIZE --device $DEV --dtype $DTYPE --compile none,step \
  --dynamic --batches "$BATCHES" --steps $STEPS --sync-check --json "$OUT/step_sweep.json" 2>&1 | quiet \
  | tee "$OUT/step_sweep.txt"
# 2. CUDA graphs (reduce-overhead) of the compiled step at one batch size, beside the default mode
timeout $T_GRAPHS python3 benchmarks/flava_step.py --size $SIZE --device $DEV --dtype $DTYPE --compile step \
  --compile-mode reduce-overhead --batches $GRAPH_BATCH --steps $STEPS --no-memory --no-cached \
  --json "$OUT/step_cudagraphs.json" 2>&1 | quiet | tee "$OUT/step_cudagraphs.txt"
# 2b. JPEG decode on the device (data.image_decode=device): nvJPEG's share per sample vs the workers' CPU,
#     and the CUDA test of the decode path against CPU decoding
timeout 120 python3 benchmarks/data_scale.py --sizes 1000 --throughput-samples 500 --root /tmp/mmkit-data-scale \
  2>&1 | quiet | tail -12 | tee "$OUT/jpeg_decode.txt"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/data/test_device_decode.py 2>&1 | tail -3 \
  | tee -a "$OUT/jpeg_decode.txt"
[ "${SKIP_RECIPE:-0}" = 1 ] && { echo "results in $OUT"; exit 0; }
# 3. The pretraining recipe with compile=step (the recipe path: parallelize, TrainStep, eager evaluation)
timeout $T_RECIPE python3 recipes/flava/pretrain.py --config $RECIPE_CFG compile=step precision=$PRECISION \
  model.codebook.checkpoint=null model.codebook.allow_random=true model.pretraining.mim_target=tokens \
  optim.total_steps=40 optim.warmup_steps=5 log_every=10 eval_every=1000 eval_samples=32 eval_at_start=false \
  checkpoint.every=1000 data.num_workers=4 progress=false run_dir=/tmp/run-compile-step 2>&1 | quiet | tail -25 \
  | tee "$OUT/pretrain_compile_step.txt"
echo "results in $OUT"
