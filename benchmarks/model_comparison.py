"""FLAVA (all objectives) vs FLAVA contrastive-only vs CLIP vs SigLIP, on the built-in data, side by side.

Every model is the tiny preset (width 32, 32² images in 8² patches) pretrained by its recipe with the
demo's data, batch size (64 per rank, 2 ranks), steps (1,200) and optimiser; then, from each export:

* held-out retrieval R@1 (the recipes' own last evaluation, 512 held-out pairs);
* zero-shot and linear-probe accuracy on the three shapes tasks (``recipes/flava/evaluate.py``, the
  same code for all three model kinds);
* finetune transfer: the FLAVA classifier of ``recipes/flava/finetune.py`` (300 steps, best of lr 1e-4
  and 1e-3), started from the FLAVA export, or for CLIP/SigLIP from their towers
  (``model.image.init_from`` / ``model.text.init_from``: FLAVA's encoder takes the tower, its head is new).

FLAVA contrastive-only draws only paired batches and weights every objective but the contrastive one
by 0: the same data and steps as CLIP, with FLAVA's encoders. Equal steps and batch, not equal FLOPs:
the wall time of each pretraining run is printed beside it.

    python benchmarks/model_comparison.py                      # about 15 minutes on 2 CPU cores
    python benchmarks/model_comparison.py --models clip,siglip --steps 200
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_transfer import _load

REPO = Path(__file__).resolve().parents[1]
FLAVA_ONLY_CONTRASTIVE = ["data.pair_prob=1.0", "data.image_prob=0.0", "data.text_prob=0.0",
                          "data.itm_negative_prob=0.0", "model.pretraining.weights.mim=0.0",
                          "model.pretraining.weights.mlm=0.0", "model.pretraining.weights.mmm_image=0.0",
                          "model.pretraining.weights.mmm_text=0.0", "model.pretraining.weights.itm=0.0"]  # fmt: skip
MODELS = {
    "flava": ("recipes/flava/pretrain.py", "recipes/flava/configs/demo.yaml", []),
    "flava-contrastive": ("recipes/flava/pretrain.py", "recipes/flava/configs/demo.yaml", FLAVA_ONLY_CONTRASTIVE),
    "clip": ("recipes/clip/pretrain.py", "recipes/clip/configs/demo.yaml", ["model_type=clip"]),
    "siglip": ("recipes/clip/pretrain.py", "recipes/clip/configs/demo.yaml", ["model_type=siglip"]),
}
FINETUNE = {  # task -> (config, extra keys, encoder the classifier reads)
    "color (image)": ("finetune_shapes_color.yaml", [], "image"),
    "count (image)": ("finetune_shapes_color.yaml", ["task=shapes:count"], "image"),
    "shape (text)": ("finetune_shapes_text.yaml", [], "text"),
}


def pretrain(name: str, out: Path, steps: int, seed: int) -> tuple[dict, float]:
    """Run one recipe on 2 ranks; returns its last held-out evaluation and the wall time."""
    script, config, extra = MODELS[name]
    run = out / name
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(REPO / script),
           "--config", str(REPO / config), f"run_dir={run}", f"optim.total_steps={steps}", "progress=false",
           "checkpoint.resume=none", f"seed={seed}", *extra]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True, env=os.environ)
    seconds = time.perf_counter() - start
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"]
    return evals[-1], seconds


def zero_shot_and_probe(evaluate, export: Path, out: Path) -> dict:
    tasks = ",".join(f"{kind}:{t}" for kind in ("zero_shot", "linear_probe") for t in ("color", "count", "shape"))
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluate.evaluate(evaluate.load_config(None, [f"checkpoint={export}", f"tasks={tasks}", f"out={out}"]))


def finetune_best(finetune, name: str, export: Path, task: str, out: Path, steps: int, lrs: list[str]) -> float:
    config, extra, side = FINETUNE[task]
    best = float("-inf")
    for lr in lrs:
        keys = [*extra, f"run_dir={out / f'{name}-{task.split()[0]}-{lr}'}", f"optim.total_steps={steps}",
                f"optim.lr={lr}", "checkpoint.resume=none", "checkpoint.every=100000"]  # fmt: skip
        if name.startswith("flava"):
            keys.append(f"init_from={export}")
        else:  # the dual encoder's tower in FLAVA's encoder
            keys.append(f"model.{side}.init_from={export}")
            if side == "text":
                keys.append(f"tokenizer={export / 'tokenizer'}")
        cfg = finetune.load_config(str(REPO / "recipes/flava/configs" / config), keys)
        recipe = finetune.FinetuneRecipe(cfg)
        with contextlib.redirect_stdout(io.StringIO()):
            recipe.setup()
            best = max(best, recipe.train()["best"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=1200, help="pretraining steps (the demos: 1200)")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--lrs", default="1e-4,1e-3")
    parser.add_argument("--seed", type=int, default=0, help="pretraining seed (the demos: 0)")
    parser.add_argument("--pretrain-only", action="store_true", help="retrieval only: no zero-shot, probe, finetune")
    parser.add_argument("--out", default="runs/model_comparison")
    args = parser.parse_args()
    out = Path(args.out)
    finetune = _load("flava_finetune_recipe", REPO / "recipes/flava/finetune.py")
    evaluate = _load("flava_evaluate_recipe", REPO / "recipes/flava/evaluate.py")
    rows = {}
    for name in args.models.split(","):
        last, seconds = pretrain(name, out, args.steps, args.seed)
        export = out / name / "final"
        scores, tuned = {}, {}
        if not args.pretrain_only:
            scores = zero_shot_and_probe(evaluate, export, out / f"{name}-eval.json")
            tuned = {t: finetune_best(finetune, name, export, t, out / "finetune", args.finetune_steps,
                                      args.lrs.split(",")) for t in FINETUNE}  # fmt: skip
        rows[name] = (last, seconds, scores, tuned)
        print(f"{name}: {seconds:.0f} s, R@1 {last['retrieval/image_to_text_r1']:.3f} / "
              f"{last['retrieval/text_to_image_r1']:.3f}", flush=True)  # fmt: skip
    tasks = ("color", "count", "shape")
    print(f"\n## {args.steps} pretraining steps, batch 64 x 2 ranks, tiny models, built-in data, seed {args.seed}\n")
    if args.pretrain_only:
        print("| model | pretrain s | R@1 i->t | R@1 t->i |\n|---|---|---|---|")
        for name, (last, seconds, _, _) in rows.items():
            r1 = [last[f"retrieval/{d}_r1"] for d in ("image_to_text", "text_to_image")]
            print(f"| {name} | {seconds:.0f} | {r1[0]:.3f} | {r1[1]:.3f} |")
        return
    print(
        "| model | pretrain s | R@1 i->t | R@1 t->i | "
        + " | ".join(f"zero-shot {t}" for t in tasks)
        + " | "
        + " | ".join(f"probe {t}" for t in tasks)
        + " | "
        + " | ".join(f"finetune {t}" for t in FINETUNE)
        + " |"
    )
    print("|---" * (4 + 2 * len(tasks) + len(FINETUNE)) + "|")
    for name, (last, seconds, scores, tuned) in rows.items():
        r1 = [last[f"retrieval/{d}_r1"] for d in ("image_to_text", "text_to_image")]
        cells = [f"{seconds:.0f}", *(f"{v:.3f}" for v in r1)]
        cells += [f"{scores[f'{kind}:{t}']:.3f}" for kind in ("zero_shot", "linear_probe") for t in tasks]
        cells += [f"{tuned[t]:.3f}" for t in FINETUNE]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
