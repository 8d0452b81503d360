"""Which objectives help at toy scale? FLAVA's ablation (paper Table 5) and CLIP / SigLIP, on the built-in data.

Every model is the tiny preset (width 32, 32² images in 8² patches) pretrained by its recipe with the
demo's data, batch size (64 per rank, 2 ranks), steps (1,200) and optimiser, at each seed; then, from
each export:

* held-out retrieval R@1 (the recipes' own last evaluation, 512 held-out pairs);
* zero-shot and linear-probe accuracy on the three shapes tasks (``recipes/flava/evaluate.py``, the
  same code for all model kinds);
* finetune transfer: the FLAVA classifier of ``recipes/flava/finetune.py`` (300 steps, best over
  ``--lrs``), started from the FLAVA export, or for CLIP/SigLIP from their towers
  (``model.image.init_from`` / ``model.text.init_from``: FLAVA's encoder takes the tower, its head is
  new). Caption-image entailment needs FLAVA's fusion encoder, so only the FLAVA variants have it.

The variants (paper Table 5's rows, at toy scale):

* ``flava-contrastive``: paired batches only, the global contrastive loss alone;
* ``flava+mmm``: + masked multimodal modelling (MMM image and text) on the pairs;
* ``flava+mim/mlm``: + the unimodal batches (the demo's 0.70 / 0.15 / 0.15 source mixture) with MIM and MLM;
* ``flava``: + ITM with 10% swapped captions: every objective, the demo as it is (MIM and MMM-image
  predict the ids of the built-in dVAE tokenizer, cached in the shards);
* ``flava-pixels``: the demo regressing the masked patches' normalised pixels instead (MAE's targets,
  ``model.pretraining.mim_target=pixels``: no tokenizer);
* ``flava-rawpx``: the same without MAE's per-patch normalisation (``pixel_norm=false``: the targets keep
  each patch's mean colour);
* ``clip``, ``siglip``: the dual encoders' demo (``recipes/clip/configs/demo.yaml``).

Equal steps and batch, not equal FLOPs: the wall time of each pretraining run is reported. Each
finished (model, seed) is kept in ``--out`` (``results.json``), so a rerun continues where an
interrupted one stopped, ``--report`` prints the tables again without training, and ``--rescore`` recomputes
the zero-shot and probe columns from the kept exports (after a change to the evaluation code).

    # the RESULTS.md tables: ~1 hour on 2 CPU cores (4 seeds: ~2 hours)
    python benchmarks/model_comparison.py --seeds 0,1 \\
        --models flava,flava-contrastive,flava+mmm,flava+mim/mlm,flava-pixels,clip,siglip
    python benchmarks/model_comparison.py --models clip,siglip --steps 200 --seeds 0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from finetune_transfer import _load

REPO = Path(__file__).resolve().parents[1]
_W = "model.pretraining.weights"
PAIRS_ONLY = ["data.pair_prob=1.0", "data.image_prob=0.0", "data.text_prob=0.0"]
NO_ITM = ["data.itm_negative_prob=0.0", f"{_W}.itm=0.0"]
NO_MMM = [f"{_W}.mmm_image=0.0", f"{_W}.mmm_text=0.0"]
NO_UNIMODAL = [f"{_W}.mim=0.0", f"{_W}.mlm=0.0"]
FLAVA, CLIP = (
    ("recipes/flava/pretrain.py", "recipes/flava/configs/demo.yaml"),
    ("recipes/clip/pretrain.py", "recipes/clip/configs/demo.yaml"),
)
MODELS = {  # name -> (recipe, config, extra keys)
    "flava-contrastive": (*FLAVA, [*PAIRS_ONLY, *NO_ITM, *NO_MMM, *NO_UNIMODAL]),
    "flava+mmm": (*FLAVA, [*PAIRS_ONLY, *NO_ITM, *NO_UNIMODAL]),
    "flava+mim/mlm": (*FLAVA, NO_ITM),
    "flava": (*FLAVA, []),
    "flava-pixels": (*FLAVA, ["model.pretraining.mim_target=pixels"]),
    "flava-rawpx": (*FLAVA, ["model.pretraining.mim_target=pixels", "model.pretraining.pixel_norm=false"]),
    "clip": (*CLIP, ["model_type=clip"]),
    "siglip": (*CLIP, ["model_type=siglip"]),
}
FINETUNE = {  # task -> (config, extra keys, encoder the classifier reads)
    "color": ("finetune_shapes_color.yaml", [], "image"),
    "count": ("finetune_shapes_color.yaml", ["task=shapes:count"], "image"),
    "shape (text)": ("finetune_shapes_text.yaml", [], "text"),
    "entailment": ("finetune_shapes_entailment.yaml", [], "multimodal"),
}
TASKS = ("color", "count", "shape")


def pretrain(name: str, run: Path, steps: int, seed: int) -> tuple[dict, float]:
    """Run one recipe on 2 ranks; returns its last held-out evaluation and the wall time."""
    script, config, extra = MODELS[name]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(REPO / script),
        "--config",
        str(REPO / config),
        f"run_dir={run}",
        f"optim.total_steps={steps}",
        "progress=false",
        "checkpoint.resume=none",
        f"seed={seed}",
        *extra,
    ]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=os.environ)
    if done.returncode:
        raise RuntimeError(f"{name} seed {seed} failed:\n{done.stderr[-3000:]}")
    seconds = time.perf_counter() - start
    evals = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "eval"]
    return evals[-1], seconds


def zero_shot_and_probe(evaluate, export: Path, out: Path) -> dict:
    tasks = ",".join(f"{kind}:{t}" for kind in ("zero_shot", "linear_probe") for t in TASKS)
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluate.evaluate(evaluate.load_config(None, [f"checkpoint={export}", f"tasks={tasks}", f"out={out}"]))


def finetune_best(finetune, name: str, export: Path, task: str, out: Path, steps: int, lrs: list[str]) -> float:
    config, extra, side = FINETUNE[task]
    best = float("-inf")
    for lr in lrs:
        keys = [
            *extra,
            f"run_dir={out / f'{task.split()[0]}-{lr}'}",
            f"optim.total_steps={steps}",
            f"optim.lr={lr}",
            "checkpoint.resume=none",
            "checkpoint.every=100000",
        ]
        if name.startswith("flava"):
            keys.append(f"init_from={export}")
        else:  # the dual encoder's tower in FLAVA's encoder
            keys.append(f"model.{side}.init_from={export}")
            if side == "text":
                keys.append(f"tokenizer={export / 'tokenizer'}")
        cfg = finetune.load_config(str(REPO / "recipes/flava/configs" / config), keys)
        recipe = finetune.FinetuneRecipe(cfg)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            recipe.setup()
            best = max(best, recipe.train()["best"])
    return best


def measure(name: str, seed: int, args, out: Path) -> dict:
    """Pretrain one (model, seed) and score its export; the record that ``results.json`` keeps."""
    finetune = _load("flava_finetune_recipe", REPO / "recipes/flava/finetune.py")
    evaluate = _load("flava_evaluate_recipe", REPO / "recipes/flava/evaluate.py")
    run = out / f"{name.replace('/', '-')}-seed{seed}"
    last, seconds = pretrain(name, run, args.steps, seed)
    record = {
        "seconds": seconds,
        "i2t_r1": last["retrieval/image_to_text_r1"],
        "t2i_r1": last["retrieval/text_to_image_r1"],
    }
    if not args.pretrain_only:
        scores = zero_shot_and_probe(evaluate, run / "final", run / "eval.json")
        record.update({f"{kind}:{t}": scores[f"{kind}:{t}"] for kind in ("zero_shot", "linear_probe") for t in TASKS})
        for task, (_, _, side) in FINETUNE.items():
            if side == "multimodal" and not name.startswith("flava"):
                continue  # no pretrained fusion encoder
            record[f"finetune:{task}"] = finetune_best(
                finetune, name, run / "final", task, run / "finetune", args.finetune_steps, args.lrs.split(",")
            )
    return record


def _cell(values: list[float], digits: int = 3) -> str:
    """mean (min-max) over seeds."""
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    spread = max(digits - 1, 0)
    return f"{statistics.fmean(values):.{digits}f} ({min(values):.{spread}f}-{max(values):.{spread}f})"


def report(results: dict, models: list[str], seeds: list[int], steps: int) -> None:
    """Two Markdown tables (pretraining, retrieval and zero-shot; probes and finetuning): mean (min-max)."""
    rows = {m: [results[f"{m}@{s}"] for s in seeds if f"{m}@{s}" in results] for m in models}
    print(
        f"\n## {steps} pretraining steps, batch 64 x 2 ranks, tiny models, built-in data, seeds "
        f"{','.join(map(str, seeds))}: mean (min-max)"
    )
    tables = (
        [
            ("pretrain s", "seconds"),
            ("R@1 i->t", "i2t_r1"),
            ("R@1 t->i", "t2i_r1"),
            *((f"zero-shot {t}", f"zero_shot:{t}") for t in TASKS),
        ],
        [
            *((f"probe {t}", f"linear_probe:{t}") for t in TASKS),
            *((f"finetune {t}", f"finetune:{t}") for t in FINETUNE),
        ],
    )
    for columns in tables:
        columns = [(h, k) for h, k in columns if any(k in r for rs in rows.values() for r in rs)]
        if not columns:
            continue
        print("\n| model | seeds | " + " | ".join(h for h, _ in columns) + " |")
        print("|---|---" + "|---" * len(columns) + "|")
        for model, rs in rows.items():
            cells = [_cell([r[k] for r in rs if k in r], 0 if k == "seconds" else 3) for _, k in columns]
            print(f"| {model} | {len(rs)} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from: {', '.join(MODELS)}")
    parser.add_argument("--seeds", default="0", help="pretraining seeds, comma-separated (the demos: 0)")
    parser.add_argument("--steps", type=int, default=1200, help="pretraining steps (the demos: 1200)")
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--lrs", default="1e-3", help="finetuning learning rates; the best is kept")
    parser.add_argument("--pretrain-only", action="store_true", help="retrieval only: no zero-shot, probe, finetune")
    parser.add_argument("--report", action="store_true", help="print the tables of what --out holds, train nothing")
    parser.add_argument("--rescore", action="store_true", help="redo zero-shot and probe from the kept exports")
    parser.add_argument("--out", default="runs/model_comparison")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    models, seeds = args.models.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    store = out / "results.json"
    results = json.loads(store.read_text()) if store.exists() else {}
    if args.rescore:
        evaluate = _load("flava_evaluate_recipe", REPO / "recipes/flava/evaluate.py")
        for key, record in results.items():
            name, seed = key.split("@")
            run = out / f"{name.replace('/', '-')}-seed{seed}"
            if name in models and int(seed) in seeds and (run / "final").is_dir():
                scores = zero_shot_and_probe(evaluate, run / "final", run / "eval.json")
                record.update({k: scores[k] for k in record if k in scores})
                store.write_text(json.dumps(results, indent=1))
                print(f"rescored {key}", flush=True)
    elif not args.report:
        for seed in seeds:
            for name in models:
                key = f"{name}@{seed}"
                if key in results:
                    continue  # measured by an earlier (interrupted) run of the same --out
                results[key] = measure(name, seed, args, out)
                store.write_text(json.dumps(results, indent=1))
                r = results[key]
                print(
                    f"{name} seed {seed}: {r['seconds']:.0f} s, R@1 {r['i2t_r1']:.3f} / {r['t2i_r1']:.3f}", flush=True
                )
    report(results, models, seeds, args.steps)


if __name__ == "__main__":
    main()
