"""Does pretraining help? Finetune from a pretraining export and from random initialisation, side by side.

For each task, the same classifier (same config, steps, batch and schedule) is trained from the
checkpoint and from random weights, at each learning rate given (each side gets its best); then a
linear probe is fitted on frozen image features of both. Prints one table.

    torchrun --standalone --nproc_per_node=2 recipes/flava/pretrain.py --config recipes/flava/configs/demo.yaml
    python benchmarks/finetune_transfer.py --checkpoint runs/demo/final

The metric is the best validation score over the run (the recipe's best-checkpoint selection), on
the built-in dataset's held-out split.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {
    "shapes:color (image)": "finetune_shapes_color.yaml",
    "shapes:count (image)": ("finetune_shapes_color.yaml", "task=shapes:count"),
    "shapes:shape (text)": "finetune_shapes_text.yaml",
    "shapes:count regression (image)": "finetune_shapes_count_regression.yaml",
    "shapes:entailment (multimodal)": "finetune_shapes_entailment.yaml",
}


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a pretraining export, e.g. runs/demo/final")
    parser.add_argument("--tasks", default=",".join(CONFIGS), help=f"comma-separated, from: {', '.join(CONFIGS)}")
    parser.add_argument("--lrs", default="1e-4,1e-3", help="learning rates tried for each side")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--probes", default="color,count,shape", help="linear-probe tasks ('' to skip)")
    parser.add_argument("--out", default="runs/finetune_transfer")
    args = parser.parse_args()
    finetune = _load("flava_finetune_recipe", REPO / "recipes/flava/finetune.py")
    evaluate = _load("flava_evaluate_recipe", REPO / "recipes/flava/evaluate.py")
    out = Path(args.out)
    rows = []
    for task in filter(None, args.tasks.split(",")):
        spec = CONFIGS[task]
        config, *extra = (spec,) if isinstance(spec, str) else spec
        scores = {}
        for init in ("pretrained", "random"):
            for lr in args.lrs.split(","):
                run = out / f"{task.split()[0].replace(':', '-')}-{'reg-' if 'regression' in task else ''}{init}-{lr}"
                overrides = [
                    *extra,
                    f"run_dir={run}",
                    f"optim.total_steps={args.steps}",
                    f"optim.lr={lr}",
                    "checkpoint.resume=none",
                    "checkpoint.every=100000",
                ]
                if init == "pretrained":  # the configs say init_from: null, i.e. random init
                    overrides.append(f"init_from={args.checkpoint}")
                cfg = finetune.load_config(str(REPO / "recipes/flava/configs" / config), overrides)
                recipe = finetune.FinetuneRecipe(cfg)
                with contextlib.redirect_stdout(io.StringIO()):
                    recipe.setup()
                    result = recipe.train()
                scores[(init, lr)] = result["best"]
                print(f"{task:34s} {init:10s} lr {lr:6s} {cfg.metric} {result['best']:.4f}", flush=True)
        best = {init: max((v, lr) for (i, lr), v in scores.items() if i == init) for init in ("pretrained", "random")}
        rows.append((task, cfg.metric, best["pretrained"], best["random"]))
    _report(args, rows, _probe(args, evaluate, out))


def _probe(args, evaluate, out: Path) -> dict:
    """Linear probes of the checkpoint and of a random model of its sizes: ``{init: results}``."""
    probes = {}
    for init, ckpt in (("pretrained", args.checkpoint), ("random", None)):
        tasks = ",".join(f"linear_probe:{t}" for t in filter(None, args.probes.split(",")))
        if not tasks:
            break
        path = out / f"probe-{init}.json"
        keys = [f"tasks={tasks}", f"out={path}"] + ([f"checkpoint={ckpt}"] if ckpt else [])
        if ckpt is None:  # the random model must have the checkpoint's sizes
            keys.append(f"model_config={Path(args.checkpoint) / 'config.json'}")
        with contextlib.redirect_stdout(io.StringIO()):
            evaluate.evaluate(evaluate.load_config(None, keys))
        probes[init] = json.loads(path.read_text())
    return probes


def _report(args, rows: list, probes: dict) -> None:
    """The finetuning table (pretrained vs random init) and the probe table."""
    print(f"\n## finetuning, {args.steps} steps, best over lr in {{{args.lrs}}}: pretrained vs random init\n")
    print("| task | metric | from the checkpoint (lr) | from random init (lr) | difference |")
    print("|---|---|---|---|---|")
    for task, metric, (p, plr), (r, rlr) in rows:
        print(f"| {task} | {metric} | {p:.3f} ({plr}) | {r:.3f} ({rlr}) | {p - r:+.3f} |")
    if probes:
        print("\n## linear probe on frozen image CLS features (accuracy on the held-out split)\n")
        print("| task | pretrained | random init | difference |")
        print("|---|---|---|---|")
        for key in (k for k in probes["pretrained"] if k.startswith("linear_probe:") and "/" not in k):
            p, r = probes["pretrained"][key], probes["random"][key]
            print(f"| {key.split(':')[1]} | {p:.3f} | {r:.3f} | {p - r:+.3f} |")


if __name__ == "__main__":
    main()
