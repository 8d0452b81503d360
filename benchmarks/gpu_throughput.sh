#!/usr/bin/env bash
# Issue 23 on one GPU (H100 or H200), as two device calls of under 8 and under 4 minutes:
#   PARTS=step   the released-size step in bf16 compiled whole (compile=step) over a batch sweep with MFU
#                against the card's dense bf16 peak, transformers at its own best batch; host-sync checks of
#                a non-logging step (set_sync_debug_mode("error")); CUDA graphs at one batch; a profile of
#                the compiled step at its best batch (kernels by device time, GPU busy vs idle, by family);
#   PARTS=recipe the pretraining recipe at the released size on synthetic 256² JPEG shards decoded on the
#                device, at the step's best batch, its samples/s against the step's (reads the sweep's JSON:
#                SWEEP=path, default $OUT/step_sweep.json; copy the first call's file into the tree, since
#                every call starts with an empty $OUT; or give RECIPE_BATCH).
# JPEG=1 adds the JPEG-decode benchmark and the CUDA decode test to the step part. Run from the repository
# root; everything goes to $OUT.
#   PARTS=step bash benchmarks/gpu_throughput.sh; PARTS=recipe SWEEP=... bash benchmarks/gpu_throughput.sh
#   DRY=1 bash benchmarks/gpu_throughput.sh            # both parts on CPU at the tiny size (minutes)
# Each part has its own timeout and writes its file as it goes (the sweep after every batch size), so a
# part cut short keeps what it measured. BATCHES, STEPS and RECIPE_BATCH override the plan.
set -uo pipefail
source benchmarks/gpu_env.sh
quiet() { tr '\r' '\n' | grep -v -e Warning -e "return func" -e "warnings.warn" -e "^W[0-9]" -e "it/s" -e "s/it"; }
if [ "${DRY:-0}" = 1 ]; then
  DEV=cpu; SIZE=tiny; DTYPE=fp32; BATCHES=${BATCHES:-8,16}; STEPS=${STEPS:-2}; GRAPH_BATCH=8
  T_SWEEP=900; T_GRAPHS=600; T_PROFILE=300; T_RECIPE=300; PRECISION=fp32
  SYNTH="--samples 1000 --side 64"; WORKERS=1; RECIPE_STEPS=30
  echo "dry run on CPU (tiny)" | tee "$OUT/gpu.txt"
else
  DEV=cuda; SIZE=full; DTYPE=bf16; BATCHES=${BATCHES:-16,32,64,128,256}; STEPS=${STEPS:-3}; GRAPH_BATCH=64
  T_SWEEP=280; T_GRAPHS=80; T_PROFILE=100; T_RECIPE=200; PRECISION=bf16
  SYNTH="--samples 20000 --side 256"; WORKERS=12; RECIPE_STEPS=100000  # cut by its timeout
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
fi
PARTS=${PARTS:-step,recipe}; SWEEP=${SWEEP:-$OUT/step_sweep.json}
best_batch() { python3 benchmarks/recipe_vs_step.py --sweep "$SWEEP" --best-batch 2>/dev/null; }
python3 -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu', 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
if [[ $PARTS == *step* ]]; then
# 1. The step at the released size, bf16: transformers, mmkit eager, mmkit compiled whole (one graph per batch
#    kind, batch size symbolic so the sweep compiles once), each with the tokenizer in the step and with cached
#    ids; MFU and each model at its own best batch; the sync checks on the first batch size.
timeout $T_SWEEP python3 benchmarks/flava_step.py --size $SIZE --device $DEV --dtype $DTYPE --compile none,step \
  --dynamic --batches "$BATCHES" --steps $STEPS --sync-check --json "$SWEEP" 2>&1 | quiet \
  | tee "$OUT/step_sweep.txt"
# 2. CUDA graphs (reduce-overhead) of the compiled step at one batch size, beside the default mode
timeout $T_GRAPHS python3 benchmarks/flava_step.py --size $SIZE --device $DEV --dtype $DTYPE --compile step \
  --compile-mode reduce-overhead --batches $GRAPH_BATCH --steps $STEPS --no-memory --no-cached \
  --json "$OUT/step_cudagraphs.json" 2>&1 | quiet | tee "$OUT/step_cudagraphs.txt"
# 2b. Where the compiled step's time goes, at its best batch (the inductor cache is warm from the sweep)
BEST=$(best_batch); BEST=${BEST:-$GRAPH_BATCH}
timeout $T_PROFILE python3 benchmarks/flava_step.py --size $SIZE --device $DEV --dtype $DTYPE --compile step \
  --dynamic --batches $BEST --steps 2 --no-memory --no-cached --profile 2>&1 | quiet | tee "$OUT/step_profile.txt"
# 2c. (JPEG=1) JPEG decode on the device (data.image_decode=device): nvJPEG's share per sample vs the workers'
#     CPU, and the CUDA test of the decode path against CPU decoding
if [ "${JPEG:-0}" = 1 ]; then
  timeout 120 python3 benchmarks/data_scale.py --sizes 1000 --throughput-samples 500 --root /tmp/mmkit-data-scale \
    2>&1 | quiet | tail -12 | tee "$OUT/jpeg_decode.txt"
  timeout 60 python3 -m pytest -q -p no:cacheprovider tests/data/test_device_decode.py 2>&1 | tail -3 \
    | tee -a "$OUT/jpeg_decode.txt"
fi
fi
[[ $PARTS == *recipe* ]] || { echo "results in $OUT"; exit 0; }
# 3. The pretraining recipe at the same size, precision and compile=step, one process, on synthetic JPEG shards
#    decoded on the device (the workers only read tar headers), the released 30,522-id vocabulary, the random
#    tokenizer in the loop, one source per step in equal shares (the step above runs all three), texts padded
#    to the step's 40, fused AdamW as the step's; killed at its timeout (metrics.jsonl is written as it goes),
#    then compared.
S=/tmp/synth
RECIPE_BATCH=${RECIPE_BATCH:-$(best_batch)}
RECIPE_BATCH=${RECIPE_BATCH:-64}  # no sweep to read: its middle batch
echo "recipe at batch $RECIPE_BATCH (the compiled step's best in the sweep)" | tee "$OUT/pretrain_full.txt"
timeout 60 python3 benchmarks/synthetic_shards.py --out $S $SYNTH 2>&1 | tee -a "$OUT/pretrain_full.txt"
timeout -s KILL $T_RECIPE python3 recipes/flava/pretrain.py --config recipes/flava/configs/flava_full.yaml \
  preset=$SIZE compile=step precision=$PRECISION distributed=none activation_checkpointing=false \
  data.tokenizer=$S/tokenizer/vocab.txt "data.train_pairs=[\"$S/pairs-*.tar\"]" \
  "data.val_pairs=[\"$S/pairs-000000.tar\"]" "data.images=[\"$S/pairs-*.tar\"]" "data.text=[\"$S/text.txt\"]" \
  data.pair_prob=0.34 data.image_prob=0.33 data.text_prob=0.33 data.max_length=40 data.batch_size=$RECIPE_BATCH \
  data.image_decode=device data.num_workers=$WORKERS model.codebook.allow_random=true optim.fused=true \
  optim.total_steps=$RECIPE_STEPS optim.warmup_steps=10 log_every=5 eval_every=1000000 eval_samples=32 \
  eval_at_start=false checkpoint.every=1000000 progress=false run_dir=/tmp/run-full 2>&1 | quiet | tail -25 \
  | tee -a "$OUT/pretrain_full.txt"
cp /tmp/run-full/metrics.jsonl "$OUT/pretrain_full_metrics.jsonl" 2>/dev/null
python3 benchmarks/recipe_vs_step.py --run /tmp/run-full --sweep "$SWEEP" --batch $RECIPE_BATCH \
  2>&1 | tee -a "$OUT/pretrain_full.txt"
echo "results in $OUT"
