"""Evaluate a FLAVA, CLIP or SigLIP checkpoint: zero-shot classification, retrieval, linear probe — on
the built-in data, on your own folders, or as a suite of benchmarks in the files they ship in — and, in
a suite, FLAVA's finetuned tasks (GLUE, VQA v2, SNLI-VE, Hateful Memes).

    python recipes/flava/evaluate.py suite=suites/flava_vision.yaml data_root=/data checkpoint=CKPT out=runs/eval
    python recipes/flava/evaluate.py checkpoint=runs/demo/final out=runs/demo/eval.json
    python recipes/flava/evaluate.py checkpoint=runs/demo/final tasks=retrieval,linear_probe:count
    python recipes/flava/evaluate.py --config eval.yaml            # the same keys in a YAML file

On your own data:

    python recipes/flava/evaluate.py checkpoint=CKPT tasks=zero_shot images=val/ [templates=t.txt]
    python recipes/flava/evaluate.py checkpoint=CKPT tasks=retrieval pairs=pairs.jsonl
    python recipes/flava/evaluate.py checkpoint=CKPT tasks=linear_probe train_images=train/ images=val/

``checkpoint`` is anything :func:`mmkit.models.load` reads: what :func:`mmkit.models.load_flava` reads (a
pretraining export ``<run>/final``, a finetune export ``<run>/best``, its encoders, or a transformers FLAVA
directory) or :func:`mmkit.models.load_dual_encoder` reads (a CLIP/SigLIP export of
``recipes/clip/pretrain.py`` or a transformers ``CLIPModel`` / ``SiglipModel`` directory). The
encoders are loaded strictly (a checkpoint that does not fit the config is an error). The
tokenizer is ``tokenizer`` if set, else ``<checkpoint>/tokenizer``, else the checkpoint directory
itself when it holds ``tokenizer.json`` or ``vocab.txt``. Without ``checkpoint`` the model is
randomly initialised (``model_config``: a ``config.json``; default the tiny preset): the baseline.

* ``zero_shot``: class prompts through the text encoder (a CLIP-style template ensemble: the
  default list, or ``templates`` with one ``{}`` template per line), images through the image
  encoder, cosine similarity; accuracy. Classes are the subfolders of ``images`` (``_`` read as a
  space), or a built-in task: ``zero_shot:<color|count|shape>``.
* ``retrieval``: image->text and text->image R@1/5/10 over ``pairs`` (a JSONL/CSV manifest with
  ``image`` and ``caption`` columns, or WebDataset tar shards), default the built-in held-out pairs.
* ``linear_probe``: logistic regression on frozen image features (the model's pooled feature before
  the projection: FLAVA's and CLIP's CLS after the final LayerNorm, SigLIP's attention pool),
  L2 strength swept on a validation split carved from ``train_images`` (class subfolders), refit on
  all of them (:func:`mmkit.eval.fit_linear_probe`), accuracy on ``images``; or a built-in task
  ``linear_probe:<color|count|shape>``.

Results go to a JSON file (``out``) and a readable table. A bad key or value, a missing file or a
checkpoint that does not fit prints one ``error:`` line (``--debug`` for the traceback).

**Suites** (``suite=SUITE.yaml``, :mod:`mmkit.eval.suite`): every task the file lists — zero-shot,
linear probe or several-captions retrieval, on benchmarks read in their own layouts
(:mod:`mmkit.eval.benchmarks`: CLIP_benchmark's WebDataset folders, class folders, CIFAR, MNIST, COCO,
Karpathy splits, Hugging Face parquet) — into ``<out>/results.json`` and ``<out>/results.md`` (the
paper's numbers beside), skipping tasks already done. Keys: ``data_root`` (where the file's relative
paths start), ``cache`` (image and text features, default ``<out>/features``: a rerun or another probe
sweep does no forward pass), ``batch_size``, ``num_workers`` (decoding processes),
``max_bad_fraction`` (unreadable images tolerated, each named), ``progress``.

A suite's ``kind: finetune`` tasks (``task: glue:<name> | vqav2 | snli_ve | hateful_memes``, ``path``,
and any key of ``recipes/flava/finetune.py`` — ``steps``, ``lr``, ``warmup_steps`` are shorthands for
``optim.*``) finetune the checkpoint with the task's shipped recipe (``configs/paper/<task>.yaml``), each
in ``<out>/runs/<name>`` (kept; a cut-off one resumes), and report the best step's metrics; the table
adds the GLUE and multimodal averages (``suites/flava_finetune.yaml``; on the built-in data:
``suites/shapes_finetune.yaml``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mmkit.data import (
    TASKS,
    ClassificationDataset,
    ImageFolder,
    Manifest,
    ShapesTask,
    Source,
    TarShards,
    collate_classification,
    decode_image,
    decode_text,
    pad_sequences,
    shapes_dataset,
)
from mmkit.eval import (
    DEFAULT_TEMPLATES,
    FeatureCache,
    SuiteContext,
    checkpoint_digest,
    class_embeddings,
    eval_transform,
    finetune_task,
    fit_linear_probe,
    load_encoders,
    load_suite,
    mean_per_class_recall,
    retrieval_recall,
    run_suite,
    zero_shot_logits,
)
from mmkit.models import DualEncoderModel, FLAVAModel
from mmkit.tokenizers import TextTokenizer
from mmkit.train import RunDirLock, debug_enabled, recipe_arg_parser, run_cli, run_training
from mmkit.utils import (
    MAX_SAMPLE_BYTES,
    InputError,
    at_least,
    check_name,
    choice,
    fraction,
    read_text_file,
    set_sample_limit,
)
from mmkit.utils import load_config as load_recipe_config

TEMPLATES = {
    "color": ("a picture of something {}.", "{} shapes", "{}"),
    "count": ("{} shapes", "a picture of {} objects.", "{}"),
    "shape": ("a picture of a {}.", "{}s", "{}"),
}
COUNT_WORDS = {"1": "one", "2": "two", "3": "three"}
KINDS = ("zero_shot", "retrieval", "linear_probe")
#: Each named finetuning task's shipped recipe (the paper's settings): configs/paper/<task>.yaml.
PAPER_CONFIGS = Path(__file__).resolve().parent / "configs" / "paper"
#: Suite shorthands for finetuning keys, and the keys a suite entry may not set (the suite sets them).
FINETUNE_ALIASES = {"steps": "optim.total_steps", "lr": "optim.lr", "warmup_steps": "optim.warmup_steps"}
FINETUNE_RESERVED = {"task", "path", "init_from", "run_dir", "progress"}
#: A suite entry's step count overrides the recipe's share of the training split.
REPLACES = {"optim.total_steps": "epochs", "optim.warmup_steps": "warmup_fraction"}


@dataclass
class EvalConfig:
    checkpoint: str | None = None  # export / transformers dir; None: random init (the baseline)
    model_config: str | None = None  # without checkpoint: config.json of the random model (default tiny)
    tokenizer: str | None = None  # default <checkpoint>/tokenizer, or the checkpoint dir itself
    tasks: str = "zero_shot:color,retrieval,linear_probe:count"  # comma-separated
    images: str | None = None  # evaluation images in class subfolders (zero_shot, linear_probe)
    train_images: str | None = None  # training images in class subfolders (linear_probe)
    pairs: str | None = None  # retrieval pairs: .jsonl/.csv manifest or tar shards
    templates: str | None = None  # zero-shot prompt templates, one per line with {} for the class
    samples: int = at_least(1, 1000)  # evaluation images per task (at most)
    out: str | None = None  # results as JSON (a folder with suite=)
    device: str = choice("auto", "cpu", "cuda")
    seed: int = 0
    suite: str | None = None  # a suite file: its tasks instead of tasks= (out= is then a folder)
    data_root: str | None = None  # suite: where relative paths start (default the file's root: or its folder)
    cache: str | None = None  # suite: feature cache folder (default <out>/features)
    batch_size: int = at_least(1, 128)
    num_workers: int = at_least(0, 0)  # suite: image-decoding processes
    max_bad_fraction: float = fraction(0.01)  # suite: unreadable images tolerated per split (each named)
    max_sample_bytes: int = at_least(1, MAX_SAMPLE_BYTES)  # the largest image file read; larger: named skips
    allow_outside_root: bool = False  # pairs=: read manifest image paths outside the manifest's folder
    progress: bool = True


def load_config(path: str | None, overrides: list[str]) -> EvalConfig:
    """YAML file, then ``key=value`` overrides; unknown keys, bad values and unknown tasks raise."""
    cfg = load_recipe_config(EvalConfig, path, overrides, dict_fields=())
    if cfg.checkpoint and cfg.model_config:
        raise InputError("model_config is for a randomly initialised model; a checkpoint brings its own")
    if cfg.suite:
        if not cfg.out:
            raise InputError("suite= needs out= (the folder for results.json, results.md and the feature cache)")
        load_suite(cfg.suite, cfg.data_root, finetune_keys())  # every problem of the file now, before any model
        return cfg
    for task in cfg.tasks.split(","):
        kind, _, name = task.partition(":")
        if kind not in KINDS:
            raise InputError(
                f"unknown task {task!r} in tasks: use zero_shot[:<name>], retrieval or linear_probe[:<name>]"
            )
        if name and (kind == "retrieval" or name not in TEMPLATES):
            raise InputError(f"unknown built-in task {name!r} in {task!r}; choose one of {sorted(TEMPLATES)}")
    return cfg


def load_model(cfg: EvalConfig, device: torch.device) -> tuple[FLAVAModel | DualEncoderModel, TextTokenizer | None]:
    """The encoders (strictly loaded, eval mode) and their tokenizer (:func:`mmkit.eval.loading.load_encoders`)."""
    return load_encoders(
        cfg.checkpoint,
        tokenizer=cfg.tokenizer,
        model_config=cfg.model_config,
        device=device,
        log=lambda m: print(m, flush=True),
    )


class Evaluation:
    """The three task kinds on one model; each returns its metrics as a flat dict."""

    def __init__(self, cfg: EvalConfig, model: FLAVAModel | DualEncoderModel, tokenizer: TextTokenizer | None) -> None:
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.device = next(model.parameters()).device
        self.transform, _ = eval_transform(model, cfg.checkpoint)
        self.templates = DEFAULT_TEMPLATES
        if cfg.templates:
            self.templates = [t for t in read_text_file(cfg.templates, "templates file").splitlines() if t.strip()]

    def run(self) -> dict[str, float]:
        results: dict[str, float] = {}
        with torch.no_grad():
            for task in self.cfg.tasks.split(","):
                kind, _, name = task.partition(":")
                results.update(getattr(self, kind)(task, name))
        return results

    # -- features -----------------------------------------------------------------------------
    def image_features(self, source: Source, n: int, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen pooled image features ``(n, D)`` (before the projection) and labels ``(n,)``."""
        ds = ClassificationDataset(source, "image", self.transform)
        feats, labels = [], []
        for s in tqdm(range(0, min(n, len(ds)), batch), desc="image features", leave=False, disable=None):
            b = collate_classification([ds[i] for i in range(s, min(n, len(ds), s + batch))])
            out = self.model.encode_image(b["pixel_values"].to(self.device))
            feats.append(self.model.image_features(out).float())
            labels.append(b["labels"].to(self.device))
        return torch.cat(feats), torch.cat(labels)

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings ``(len(texts), projection_dim)``."""
        if self.tokenizer is None:
            raise InputError("text tasks need a tokenizer: set tokenizer= or use a checkpoint exported with one")
        tok, text_cfg = self.tokenizer, self.model.config.text
        pad_to = text_cfg.max_positions if text_cfg.pooler == "last" else None  # SigLIP: the trained length
        ids, mask = pad_sequences([tok.encode(t).input_ids for t in texts], tok.pad_token_id, pad_to)
        return self.model.embed_text(self.model.encode_text(ids.to(self.device), mask.to(self.device))).float()

    def labelled_images(self, path: str | None, key: str) -> tuple[ImageFolder, list[str]]:
        if not path:
            raise InputError(f"this task needs {key}= (a folder with one subfolder of images per class)")
        folder = ImageFolder(path, labels=True)
        return folder, [c.replace("_", " ") for c in folder.classes]

    # -- tasks --------------------------------------------------------------------------------
    def zero_shot(self, task: str, name: str) -> dict[str, float]:
        if name:
            src = ShapesTask(shapes_dataset().val_pairs, name)
            names, prompts = [COUNT_WORDS.get(c, c) for c in TASKS[name]], TEMPLATES[name]
        else:
            src, names = self.labelled_images(self.cfg.images, "images")
            prompts = self.templates
        feats, labels = self.image_features(src, self.cfg.samples)
        classes = class_embeddings(names, self.embed_texts, prompts)
        img = self.model.project_image(feats)
        preds = zero_shot_logits(img, classes).argmax(1)
        return {
            task: (preds == labels).float().mean().item(),
            f"{task}/chance": 1 / len(names),
            f"{task}/mean_per_class_recall": mean_per_class_recall(preds, labels, len(names)),
        }

    def retrieval(self, task: str, name: str) -> dict[str, float]:
        p = self.cfg.pairs
        manifest = p and p.endswith((".jsonl", ".csv", ".json"))
        src = (Manifest(p, allow_outside_root=self.cfg.allow_outside_root) if manifest else TarShards(p)) if p else None
        src = src or TarShards(shapes_dataset().val_pairs)
        n = min(self.cfg.samples, len(src))
        pixels, captions = [], []
        for i in range(n):
            rec = src[i]
            try:
                pixels.append(self.transform(decode_image(rec))["image"])
                captions.append(decode_text(rec))
            except ValueError as e:
                raise InputError(f"pair {rec.key!r} of {p or 'the shapes pairs'}: {e}") from None
        chunks = [torch.stack(pixels[s : s + 128]).to(self.device) for s in range(0, n, 128)]
        img = torch.cat([self.model.embed_image(self.model.encode_image(c)) for c in chunks])
        txt = torch.cat([self.embed_texts(captions[s : s + 256]) for s in range(0, n, 256)])
        return {f"retrieval/{k}": v for k, v in retrieval_recall(img, txt).items()}

    def linear_probe(self, task: str, name: str) -> dict[str, float]:
        if name:
            paths = shapes_dataset()
            train, test = ShapesTask(paths.train_pairs, name), ShapesTask(paths.val_pairs, name)
            x, y = self.image_features(train, 3000)
        else:
            train, train_names = self.labelled_images(self.cfg.train_images, "train_images")
            test, test_names = self.labelled_images(self.cfg.images, "images")
            if train_names != test_names:
                raise InputError(f"train classes {train_names} differ from evaluation classes {test_names}")
            x, y = self.image_features(train, len(train))
        classes = len(TASKS[name]) if name else len(train_names)
        probe = fit_linear_probe(x, y, seed=self.cfg.seed, num_classes=classes)  # the suite's probe (mmkit.eval.probe)
        xt, yt = self.image_features(test, self.cfg.samples)
        preds = probe.predict(xt)
        return {
            task: (preds == yt).float().mean().item(),
            f"{task}/C": probe.c,
            f"{task}/mean_per_class_recall": mean_per_class_recall(preds, yt, classes),
        }


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Load, run every task, print the table and write ``out``; returns the results."""
    torch.manual_seed(cfg.seed)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise InputError(
            "evaluate.py runs in one process (one results.json per out= folder), not under torchrun: to finetune "
            "one task on several GPUs, torchrun recipes/flava/finetune.py --config "
            "recipes/flava/configs/paper/<task>.yaml path=... init_from=CKPT"
        )
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise InputError("device=cuda, but no CUDA device is visible: use device=auto or device=cpu")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    set_sample_limit(cfg.max_sample_bytes)  # before any loader worker forks: they read with it
    if cfg.suite:
        return evaluate_suite(cfg, device)
    model, tokenizer = load_model(cfg, device)
    results = Evaluation(cfg, model, tokenizer).run()
    width = max(len(k) for k in results)
    print(f"checkpoint: {cfg.checkpoint or 'random init'}")
    for k, v in results.items():
        print(f"  {k:<{width}}  {v:.4f}")
    if cfg.out:
        Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.out).write_text(json.dumps({"checkpoint": cfg.checkpoint, **results}, indent=2))
    return results


def evaluate_suite(cfg: EvalConfig, device: torch.device) -> dict[str, Any]:
    """``suite=``: every task of the file, results in ``<out>/results.json`` and ``<out>/results.md``;
    ``kind: finetune`` tasks run the finetuning recipe, each in ``<out>/runs/<name>`` (loading the
    checkpoint themselves: the model is loaded here only for the other kinds)."""
    tasks = load_suite(cfg.suite, cfg.data_root, finetune_keys())
    weights = suite_weights(cfg)
    ctx = None
    if any(t.kind != "finetune" for t in tasks):
        model, tokenizer = load_model(cfg, device)
        transform, transform_id = eval_transform(model, cfg.checkpoint)
        cache = FeatureCache(cfg.cache or Path(cfg.out) / "features")
        ctx = SuiteContext(
            model,
            tokenizer,
            transform,
            transform_id,
            cache,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            max_bad_fraction=cfg.max_bad_fraction,
            progress=cfg.progress,
            seed=cfg.seed,
        )
    hold = RunDirLock.acquire(cfg.out)  # one suite run per out folder: a second stops naming the first
    try:
        results = run_suite(
            tasks,
            ctx,
            cfg.out,
            checkpoint=cfg.checkpoint,
            weights=weights,
            log=lambda m: print(m, flush=True),
            runners={"finetune": FinetuneRunner(cfg)},
        )
    finally:
        hold.release()
    print((Path(cfg.out) / "results.md").read_text())
    return results


def suite_weights(cfg: EvalConfig) -> str:
    """What a suite's results are keyed on: the checkpoint's bytes (:func:`mmkit.eval.suite.checkpoint_digest`),
    or, for the randomly initialised baseline, its config file and seed."""
    if cfg.checkpoint:
        return checkpoint_digest(cfg.checkpoint)
    config = Path(cfg.model_config).read_bytes() if cfg.model_config else b"tiny"
    return hashlib.sha256(b"random init\0" + config + f"\0seed={cfg.seed}".encode()).hexdigest()


def _finetune_recipe():
    """``recipes/flava/finetune.py`` as a module (it sits beside this file)."""
    name = "mmkit_recipe_finetune"
    if name not in sys.modules:  # registered first: its dataclasses resolve their annotations through it
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("finetune.py"))
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def finetune_keys() -> set[str]:
    """The keys a suite's ``kind: finetune`` entry may set: the finetuning recipe's, and the shorthands."""
    cfg = _finetune_recipe().FinetuneConfig
    return ({f.name for f in fields(cfg)} - FINETUNE_RESERVED) | set(FINETUNE_ALIASES)


class FinetuneRunner:
    """A suite's ``kind: finetune`` task: the task's shipped recipe (``configs/paper/<task>.yaml``) from the
    suite's checkpoint, with the entry's keys on top; its run directory is kept (and resumed if cut off)."""

    def __init__(self, cfg: EvalConfig) -> None:
        self.cfg, self.recipe = cfg, _finetune_recipe()

    def overrides(self, task) -> list[str]:
        cfg, run_dir = self.cfg, Path(self.cfg.out) / "runs" / check_name(task.name, "a suite task's name")
        out = [
            f"task={task.task}",
            f"path={task.path}",
            f"run_dir={run_dir}",
            f"seed={cfg.seed}",
            f"progress={str(cfg.progress).lower()}",
        ]
        out += [f"init_from={cfg.checkpoint}"] if cfg.checkpoint else []
        out += [f"tokenizer={cfg.tokenizer}"] if cfg.tokenizer else []
        out += [f"max_sample_bytes={cfg.max_sample_bytes}", f"allow_outside_root={str(cfg.allow_outside_root).lower()}"]
        for key, value in task.keys.items():
            key = FINETUNE_ALIASES.get(key, key)
            if key in REPLACES:  # a step count replaces the recipe's epochs or warm-up share
                out.append(f"{REPLACES[key]}=null")
            out += _dotted(key, value)
        return out

    def __call__(self, task, ctx) -> dict[str, Any]:
        config = PAPER_CONFIGS / f"{task.task.replace(':', '_')}.yaml"
        recipe = self.recipe.FinetuneRecipe(self.recipe.load_config(str(config), self.overrides(task)))
        run_training(recipe)
        results = json.loads((recipe.run_dir / "results.json").read_text())
        spec = finetune_task(task.task)
        sizes = {spec.select: len(recipe.val_ds), **{s: n for s, (_, n) in recipe.report_loaders.items()}}
        return {
            **results["metrics"],
            "samples": sum(sizes[s] for s in spec.report.values()),
            "train_samples": len(recipe.train_ds),
            "best_step": results["best_step"],
            "steps": recipe.cfg.optim.total_steps,
            **_finetune_skips(results),
            "run_dir": str(recipe.run_dir),
            **({"predictions": results["predictions"]} if results["predictions"] else {}),
        }


def _finetune_skips(results: dict[str, Any]) -> dict[str, Any]:
    """A finetuning run's skipped records as a suite row holds them: ``skipped`` (every split's) and, when
    there are any, ``skipped_examples`` (the first five, ``split: key: why``)."""
    named = [f"{split}: {r}" for split, rows in results.get("skipped_records", {}).items() for r in rows]
    return {"skipped": sum(results["skipped"].values()), **({"skipped_examples": named[:5]} if named else {})}


def _dotted(key: str, value: Any) -> list[str]:
    """``key=value`` overrides for a suite entry's value (a mapping becomes ``key.sub=value`` each)."""
    if isinstance(value, dict):
        return [o for k, v in value.items() for o in _dotted(f"{key}.{k}", v)]
    return [f"{key}={'null' if value is None else json.dumps(value) if not isinstance(value, str) else value}"]


def main(argv: list[str] | None = None) -> int:
    args = recipe_arg_parser(__doc__).parse_intermixed_args(argv)

    def run() -> int:
        evaluate(load_config(args.config, args.overrides))
        return 0

    return run_cli(run, debug_enabled(args))


if __name__ == "__main__":
    sys.exit(main())
