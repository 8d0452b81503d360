"""The pretraining recipe's throughput against the model alone, same config, same process.

1. model only: the recipe's model, optimiser and step (forward, backward, clipping, AdamW) on
   batches fetched beforehand, so no data loading, logging or checkpointing is timed;
2. the recipe's ``train()`` loop on those same prefetched batches: progress bar, metrics and
   finite-loss checks included, data loading not;
3. the recipe's ``train()`` loop on live data for as many steps (data loading included).
Evaluation and checkpoints are switched off; samples/s come from the run's ``metrics.jsonl``.

    python benchmarks/recipe_overhead.py [--steps 150] [key=value overrides of the demo config]

One process (2 threads here): the demo itself runs 2 processes under torchrun, where DDP's
gradient all-reduce adds its own cost; this isolates what the loop, logging and data add.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmkit.train import read_metrics

REPO = Path(__file__).resolve().parents[1]


def load_recipe():
    spec = importlib.util.spec_from_file_location("flava_pretrain", REPO / "recipes/flava/pretrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _model_only(recipe, batches: list) -> float:
    """Samples/s of forward + backward + clip + AdamW alone on ``batches`` (the first 10 steps not counted)."""
    model, opt = recipe.model, recipe.step.optimizer
    params = [p for p in recipe.raw_model.parameters() if p.requires_grad]
    times = []
    for batch in batches:
        t = time.perf_counter()
        model(**batch.model_inputs()).loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append((time.perf_counter() - t, len(batch)))
    return sum(n for _, n in times[10:]) / sum(t for t, _ in times[10:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    recipe_mod = load_recipe()
    run_dir = tempfile.mkdtemp(prefix="mmkit-overhead-")
    overrides = [
        f"run_dir={run_dir}",
        "eval_at_start=false",
        "eval_every=1000000",
        "checkpoint.every=1000000",
        "progress=true",
        f"optim.total_steps={2 * args.steps}",
        "log_every=10",
        *args.overrides,
    ]
    cfg = recipe_mod.load_config(str(REPO / "recipes/flava/configs/demo.yaml"), overrides)
    recipe = recipe_mod.FLAVAPretrainRecipe(cfg)
    recipe.setup()

    recipe.metrics.log(0, {}, split="eval")  # keeps the metrics file's schema simple for read_metrics

    # 1. model only, on batches fetched beforehand (same stream, so the same mixture of kinds)
    batches = [next(recipe.stream) for _ in range(args.steps)]
    model_only = _model_only(recipe, batches)

    # 2. the recipe loop (mmkit.train.train_loop + TrainStep) on the same prefetched batches: what
    # the loop, logging and checks add; no evaluation or export at its end
    live_stream, real = recipe.stream, (recipe.evaluate, recipe.export)
    recipe.stream = iter(batches)
    recipe.evaluate, recipe.export = (lambda: {}), (lambda: None)
    recipe.cfg.optim.total_steps = args.steps
    recipe.train()
    recipe.evaluate, recipe.export = real
    rows = [r for r in read_metrics(run_dir) if r["split"] == "train"]
    loop_only = statistics.median(r["perf/samples_per_s"] for r in rows[1:])
    n_rows = len(rows)

    # 3. the recipe loop with live data for as many steps (data loading included), then its final
    # evaluation and export
    recipe.stream = live_stream
    recipe.cfg.optim.total_steps = 2 * args.steps
    t = time.perf_counter()
    recipe.train()
    wall = time.perf_counter() - t
    rows = [r for r in read_metrics(run_dir) if r["split"] == "train"][n_rows:]
    in_loop = statistics.median(r["perf/samples_per_s"] for r in rows[1:])
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, demo config, {args.steps} steps each")
    print("| measurement | samples/s |")
    print("|---|---|")
    print(f"| model only (fwd + bwd + clip + AdamW) | {model_only:.0f} |")
    print(f"| recipe loop on prefetched batches (logging, checks) | {loop_only:.0f} |")
    print(f"| recipe loop with live data (data loading too) | {in_loop:.0f} |")
    print(
        f"loop / model only: {loop_only / model_only:.2f}; with data: {in_loop / model_only:.2f} "
        f"(last train() wall time incl. final eval and export: {wall:.0f} s)"
    )


if __name__ == "__main__":
    main()
