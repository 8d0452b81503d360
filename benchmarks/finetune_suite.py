"""FLAVA's finetuned tasks (8 GLUE, VQA v2, SNLI-VE, Hateful Memes): what the suite costs.

1. **Measured, this machine, tiny size**: ``suites/shapes_finetune.yaml`` (each task's shipped recipe
   shrunk to 100 steps of 32) on the miniature copies of the tasks' released layouts
   (``python -m mmkit.eval.benchmarks.shapes_finetune``), finetuned from ``--checkpoint``; prints each
   task's wall time (reading, tokenizer, model, training, every evaluation, the export of the best step)
   and its headline metric, from the suite's own ``results.json``.
2. **Projected, released size on one H100**: each task's model FLOPs counted by
   ``torch.utils.flop_counter`` on the meta device (nothing is allocated) — one training sample forward
   and backward, one evaluation sample forward, at the task's shipped sequence lengths and image size —
   times the shipped recipe's samples (``epochs`` x the released training split) and evaluations
   (``eval_every``, over the released selection and report splits), divided by the H100's dense bf16 peak
   (989.4 TFLOP/s, SXM) at a model FLOPs utilisation of ``--mfu`` (default: 40%, issue 23's target for the
   pretraining step, and 6.5%, the last measured one, on an H200 at batch 16 — finetuning runs at batch
   256, so closer to the first).

    python -m mmkit.eval.benchmarks.shapes_finetune --out data/shapes-finetune
    python benchmarks/finetune_suite.py --checkpoint runs/demo/final          # about a minute on 2 CPU cores
    python benchmarks/finetune_suite.py --projection-only                       # part 2 alone, seconds
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
H100_BF16_DENSE = 989.4e12  # FLOP/s, H100 SXM, dense bf16 (NVIDIA's datasheet; 1,979 with sparsity)
#: The released splits' sizes (docs/EVALUATION.md, "The layouts"): training, then every split scored at
#: each evaluation (the selection split and any other report split).
RELEASED = {
    "glue:cola": (8_551, (1_043,)),
    "glue:sst2": (67_349, (872,)),
    "glue:mrpc": (3_668, (408,)),
    "glue:qqp": (363_846, (40_430,)),
    "glue:stsb": (5_749, (1_500,)),
    "glue:mnli": (392_702, (9_815, 9_832)),
    "glue:qnli": (104_743, (5_463,)),
    "glue:rte": (2_490, (277,)),
    "vqav2": (443_757, (214_354,)),
    "snli_ve": (529_527, (17_858, 17_901)),
    "hateful_memes": (8_500, (500, 1_000)),
}


def measured(checkpoint: str | None, data: Path, out: Path) -> dict:
    """Run the CPU suite; each task's seconds and metrics from its ``results.json``."""
    from mmkit.eval.benchmarks.shapes_finetune import write_finetune_benchmarks

    write_finetune_benchmarks(data, 200, 100)
    evaluate = _recipe("evaluate")
    keys = [f"suite={REPO / 'suites' / 'shapes_finetune.yaml'}", f"data_root={data}", f"out={out}", "progress=false"]
    keys += [f"checkpoint={checkpoint}"] if checkpoint else []
    start = time.perf_counter()
    if evaluate.main(keys) != 0:
        raise SystemExit("the suite failed (above)")
    total = time.perf_counter() - start
    return {"total": total, "results": json.loads((out / "results.json").read_text())}


def _recipe(name: str):
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "recipes" / "flava" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def flops_per_sample(modality: str, text_len: int, image_size: int | None, classes: int) -> tuple[float, float]:
    """Model FLOPs of one sample at the released size: (training forward + backward, evaluation forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    from mmkit.models import FLAVAConfig, flava_model_for_classification

    overrides = {"image.image_size": image_size} if image_size else {}
    with torch.device("meta"):
        model = flava_model_for_classification(classes, modality, FLAVAConfig(), **overrides)
    batch = 2  # per-sample counts are exact multiples; 2 keeps every shape honest
    inputs = {}
    if modality != "image":
        inputs.update(
            input_ids=torch.zeros(batch, text_len, dtype=torch.long, device="meta"),
            attention_mask=torch.ones(batch, text_len, dtype=torch.long, device="meta"),
        )
    if modality != "text":
        size = image_size or 224
        inputs["pixel_values"] = torch.zeros(batch, 3, size, size, device="meta")
    counter = FlopCounterMode(display=False)
    with counter:
        logits = model(**inputs).logits
    forward = counter.get_total_flops() / batch
    counter = FlopCounterMode(display=False)
    with counter:
        model(**inputs).logits.float().sum().backward()
    del logits
    return counter.get_total_flops() / batch, forward


def projection(mfus: list[float]) -> list[dict]:
    """Per task: samples trained and evaluated by the shipped recipe, FLOPs, hours on one H100."""
    from mmkit.eval import finetune_task
    from mmkit.utils import load_config

    finetune = _recipe("finetune")
    rows, cache = [], {}
    for name, (n_train, n_evals) in RELEASED.items():
        config = REPO / "recipes" / "flava" / "configs" / "paper" / f"{name.replace(':', '_')}.yaml"
        cfg = load_config(finetune.FinetuneConfig, str(config), ["path=."])
        task = finetune_task(name)
        steps = math.ceil(cfg.epochs * n_train / cfg.batch_size)
        evaluations = steps // cfg.eval_every + (steps % cfg.eval_every != 0)  # and the last step's
        classes = 3129 if name == "vqav2" else 3 if name in ("glue:mnli", "snli_ve") else 2
        key = (task.modality, cfg.max_length, cfg.image_size, classes)
        if key not in cache:
            cache[key] = flops_per_sample(*key)
        train_flops, eval_flops = cache[key]
        trained, scored = steps * cfg.batch_size, evaluations * sum(n_evals)
        total = trained * train_flops + scored * eval_flops
        rows.append(
            {
                "task": name,
                "steps": steps,
                "trained": trained,
                "evaluations": evaluations,
                "scored": scored,
                "train_gflop": train_flops / 1e9,
                "eval_gflop": eval_flops / 1e9,
                "pflop": total / 1e15,
                "hours": {m: total / (H100_BF16_DENSE * m) / 3600 for m in mfus},
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="what to finetune (default: a randomly initialised tiny FLAVA)")
    parser.add_argument("--data", default=str(REPO / "data" / "shapes-finetune"))
    parser.add_argument("--mfu", type=float, nargs="+", default=[0.40, 0.065])
    parser.add_argument("--projection-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.projection_only:
        out = Path(tempfile.mkdtemp(prefix="finetune-suite-"))
        try:
            run = measured(args.checkpoint, Path(args.data), out)
        finally:
            shutil.rmtree(out, ignore_errors=True)
        print(
            f"\n### Measured: suites/shapes_finetune.yaml from {args.checkpoint or 'random init'}, "
            f"tiny size, this CPU\n"
        )
        print("| task | steps (x 32) | training split | scored samples | seconds | headline metric (best step) |")
        print("|---|---|---|---|---|---|")
        tasks = {name: r for name, r in run["results"].items() if not name.startswith("_")}
        for name, r in tasks.items():
            metric = r["metric"]  # the headline, as the suite records it
            print(
                f"| {name} | {r['steps']} | {r['train_samples']:,} | {r['samples']:,} | {r['seconds']:.1f} | "
                f"{metric} {100 * r[metric]:.2f} |"
            )
        print(f"\nWhole suite: {run['total']:.0f} s (tasks: {sum(r['seconds'] for r in tasks.values()):.0f} s)")
    rows = projection(args.mfu)
    print("\n### Projected: the shipped recipes at the released size, one H100 (bf16 dense peak 989.4 TFLOP/s)\n")
    mfu_cols = " | ".join(f"hours at {100 * m:g}% MFU" for m in args.mfu)
    print(f"| task | steps | samples trained | samples scored | GFLOP/sample (train, eval) | PFLOP | {mfu_cols} |")
    print("|---|---|---|---|---|---|" + "---|" * len(args.mfu))
    for r in rows:
        hours = " | ".join(f"{r['hours'][m]:.2f}" for m in args.mfu)
        print(
            f"| {r['task']} | {r['steps']:,} | {r['trained']:,} | {r['scored']:,} | "
            f"{r['train_gflop']:.1f}, {r['eval_gflop']:.1f} | {r['pflop']:,.0f} | {hours} |"
        )
    totals = " | ".join(f"**{sum(r['hours'][m] for r in rows):.1f}**" for m in args.mfu)
    print(f"| all 11 | | | | | {sum(r['pflop'] for r in rows):,.0f} | {totals} |")


if __name__ == "__main__":
    main()
