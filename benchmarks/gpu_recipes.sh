#!/usr/bin/env bash
# The recipes on CUDA, as one script for a GPU session (after gpu_checks.sh; see CONTRIBUTING.md):
# tokenizer training, token caching, pretraining with cached ids vs the tokenizer in the loop,
# finetuning and evaluation. Everything it prints and writes goes to $OUT (or ./gpu_out).
set -uo pipefail
source benchmarks/gpu_env.sh
TOK_STEPS=${TOK_STEPS:-600}; PRE_STEPS=${PRE_STEPS:-300}; FT_STEPS=${FT_STEPS:-300}  # smaller for a CPU dry run
quiet() { tr '\r' '\n' | grep -v -e "it/s" -e "s/it" -e Warning -e "return func" ; }
python3 -c "import torch; print(torch.cuda.get_device_name())" | tee "$OUT/recipes.txt"
# 1. tokenizer training (the shapes config, 600 steps)
( time timeout 200 python3 recipes/dalle/train_tokenizer.py --config recipes/dalle/configs/shapes.yaml \
    run_dir=/tmp/dvae optim.total_steps=$TOK_STEPS objective.temperature_steps=$TOK_STEPS eval_every=300 image_every=$TOK_STEPS \
    data.num_workers=6 ) 2>&1 | quiet | tail -4 | tee -a "$OUT/recipes.txt"
cp /tmp/dvae/recon_step*.png "$OUT/" 2>/dev/null
# 2. cache its ids for the built-in training pairs
( time timeout 120 python3 -m mmkit.data.token_cache --shards "$MMKIT_DATA/shapes-v1/train-pairs-*.tar" \
    --tokenizer /tmp/dvae/final --out /tmp/cached ) 2>&1 | quiet | tail -4 | tee -a "$OUT/recipes.txt"
# 3. pretraining (medium, bf16) with the tokenizer in the loop vs its cached ids: same losses, samples/s
for kind in loop cached; do
  pairs=$([ $kind = cached ] && echo "/tmp/cached/*.tar" || echo "$MMKIT_DATA/shapes-v1/train-pairs-*.tar")
  timeout 150 python3 recipes/flava/pretrain.py --config recipes/flava/configs/medium.yaml precision=bf16 \
    model.codebook.checkpoint=/tmp/dvae/final data.dataset=files "data.train_pairs=[\"$pairs\"]" \
    "data.val_pairs=[\"$MMKIT_DATA/shapes-v1/val-pairs-*.tar\"]" "data.images=[]" \
    "data.text=[\"$MMKIT_DATA/shapes-v1/text.txt\"]" data.image_prob=0 data.text_prob=0.3 data.pair_prob=0.7 \
    data.num_workers=6 optim.total_steps=$PRE_STEPS optim.warmup_steps=2 eval_every=$PRE_STEPS log_every=50 \
    checkpoint.every=1000 run_dir=/tmp/pre-$kind 2>&1 | quiet | grep -e "cached" -e samples_per_s -e "loss/mim " -e Error | tee -a "$OUT/recipes.txt"
done
# 4. finetuning and evaluation on CUDA from the in-loop run's export
timeout 120 python3 recipes/flava/finetune.py --config recipes/flava/configs/finetune_shapes_entailment.yaml \
  init_from=/tmp/pre-loop/final run_dir=/tmp/ft optim.total_steps=$FT_STEPS eval_every=100 2>&1 | quiet | tail -2 | tee -a "$OUT/recipes.txt"
timeout 120 python3 recipes/flava/evaluate.py checkpoint=/tmp/pre-loop/final \
  tasks=zero_shot:color,retrieval,linear_probe:count out="$OUT/eval.json" 2>&1 | quiet | tail -12 | tee -a "$OUT/recipes.txt"
echo "results in $OUT"
