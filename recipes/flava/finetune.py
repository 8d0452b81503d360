"""Finetune FLAVA on a classification or regression task (paper §4, supplement B).

    python recipes/flava/finetune.py --config recipes/flava/configs/finetune_shapes_color.yaml \
        init_from=runs/demo/final
    torchrun --standalone --nproc_per_node=2 recipes/flava/finetune.py --config ... key=value

Features and their config keys:

* model: ``init_from`` (an mmkit pretraining export ``<run>/final``, a transformers FLAVA
  directory, or empty for random initialisation — the load report names the new head weights),
  ``preset`` + ``model.*`` when there is none (``model.image.init_from`` / ``model.text.init_from``
  start that encoder from a CLIP or SigLIP checkpoint's tower, named in ``load_report.txt``);
  ``modality`` (``image`` CLS_I, ``text`` CLS_T,
  ``multimodal`` CLS_M); ``problem_type`` (``single_label``, ``multi_label``, ``regression``); the
  paper's 2-layer head, ``head_hidden`` 1536.
* named benchmarks: ``task`` = ``glue:<cola|sst2|mrpc|qqp|stsb|mnli|qnli|rte>``, ``vqav2``,
  ``snli_ve`` or ``hateful_memes`` with ``path`` = the dataset's folder as released (``glue_data/`` or
  the hub's parquet, VQA v2's JSON files with ``images`` = the COCO root, SNLI-VE's JSONL, Hateful
  Memes' JSONL): the task sets the encoder, problem type and metrics, selects the best step on its
  selection split and reports all its metrics there (MNLI: ``accuracy_matched`` and
  ``accuracy_mismatched``; ``mmkit.eval.finetune_tasks``). Shipped recipes: ``configs/paper/<task>.yaml``
  (``epochs`` and ``warmup_fraction`` become step counts on the training split). ``predict=[test-dev]``
  (VQA v2: ``test-dev``, ``test``) writes the best step's answers for the challenge server to
  ``<run_dir>/predictions/vqav2_<split>.json``; VQA v2 always writes val's there too
  (``vqav2_val.json``), and its ``vqa_accuracy`` is the official evaluation's on those answer strings
  against the released human answers. Single-label tasks also report ``mean_per_class_recall``.
* data: ``task`` = a built-in shapes task (``shapes:color``, ``shapes:count``, ``shapes:shape``,
  ``shapes:entailment``), ``folder`` (image classes in subfolders: ``train_path``/``val_path``),
  ``text`` (CSV/JSONL: ``text_column``, ``text_pair_column`` for GLUE-style sentence pairs,
  ``label_column``; float labels with ``problem_type=regression``, STS-B style) or ``pairs``
  (image + text manifest, CSV/JSONL: ``image_column``, ``text_column``, ``label_column`` for
  entailment or hateful-memes-style classes; VQA as classification with ``answers_column`` (the
  human answers per question), ``problem_type=multi_label`` and a fixed ``answer_vocab`` file, one
  answer per line, or the ``answer_vocab_size`` most frequent training answers). String labels
  become classes in sorted order, the same for both splits. ``image_size`` other than the
  checkpoint's resamples its position embeddings once (VQA used 480² from 224²). Read through
  ``mmkit.data``'s loaders: ``batch_size`` per rank, ``num_workers``, unreadable records skipped,
  counted and bounded by ``max_bad_fraction`` (``results.json``: ``skipped`` per split as the log counts
  them, ``skipped_records`` the first five named); the position is checkpointed (exact resume). Every
  image is read through ``mmkit.utils.bounded``: regular files only, at most ``max_sample_bytes``
  (64 MiB); a path an annotation or manifest names stays inside its dataset folder unless
  ``allow_outside_root``.
* runtime (``mmkit.train``, shared with pretraining): ``optim.*`` (AdamW, warmup then cosine,
  ``optim.total_steps``, ``optim.grad_accum``, clipping), ``precision`` = ``fp32`` | ``bf16`` |
  ``fp16``, ``distributed`` = ``ddp`` | ``fsdp`` | ``none``, ``checkpoint.every/keep/resume``,
  non-finite steps skipped and bounded by ``max_nonfinite``, SIGTERM saves and exits.
* evaluation: ``metric`` (accuracy, f1, matthews or mcc, auroc, pearson, spearman, vqa_accuracy) on
  the validation split every ``eval_every`` steps; the best model is exported to ``<run_dir>/best``
  (a gathered full state dict under FSDP2); ``results.json`` at the end (``metrics``: the reported
  metrics at the best step).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mmkit.data import (
    TASKS,
    ClassificationCollator,
    ClassificationDataset,
    DataQualityError,
    ImageFolder,
    ImageTransform,
    ImageTransformConfig,
    LabeledPairs,
    LabeledText,
    LoaderOptions,
    MixedBatches,
    ShapesTask,
    make_loader,
    read_table,
    shapes_dataset,
)
from mmkit.eval import (
    FINETUNE_TASKS,
    accuracy,
    auroc,
    f1_score,
    find_tokenizer,
    finetune_task,
    matthews_corrcoef,
    mean_per_class_recall,
    open_task_split,
    pearson,
    spearman,
    vqa_soft_accuracy,
)
from mmkit.models import FLAVAConfig, flava_model_for_classification, init_towers, resolve_tower_configs
from mmkit.tokenizers import TextTokenizer, train_wordpiece
from mmkit.train import (
    PRECISIONS,
    CheckpointConfig,
    LogConfig,
    MetricsLogger,
    OptimConfig,
    PerfConfig,
    PerfMeter,
    TrainingRecipe,
    autocast,
    full_state_dict,
    loop_options,
    parallelize,
    prepare_training,
    run_recipe,
    start_run,
    train_loop,
    unwrap,
)
from mmkit.utils import (
    MAX_SAMPLE_BYTES,
    InputError,
    at_least,
    check_config_json,
    choice,
    config_to_dict,
    fraction,
    positive,
    resolve_checkpoint,
    set_sample_limit,
)
from mmkit.utils import load_config as load_recipe_config

METRICS = ("accuracy", "f1", "matthews", "mcc", "auroc", "pearson", "spearman", "vqa_accuracy")  # mcc = matthews


@dataclass
class FinetuneConfig:
    run_dir: str = "runs/finetune"
    seed: int = 0
    init_from: str | None = None  # pretraining export, transformers directory or hub name; None: random init
    preset: str = choice("tiny", "full")
    model: dict[str, Any] = field(default_factory=dict)
    modality: str = choice("image", "text", "multimodal")
    problem_type: str = choice("single_label", "multi_label", "regression")
    num_classes: int | None = at_least(1, None)  # None: from the task
    head_hidden: int = at_least(1, 1536)
    task: str = "shapes:color"
    path: str | None = None  # a named benchmark task (glue:*, vqav2, snli_ve, hateful_memes): its folder
    images: str | None = None  # vqav2 / snli_ve: the image folder, when not under path
    train_path: str | None = None
    val_path: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    image_column: str = "image"
    answers_column: str | None = None  # VQA: the human answers of each question
    answer_vocab: str | None = None  # VQA: file with one answer per line; None: most frequent in train
    answer_vocab_size: int = at_least(1, 3129)
    tokenizer: str | None = None  # None: the checkpoint's (mmkit export) or trained on the training text
    image_size: int | None = at_least(1, None)  # None: the model's
    max_length: int = at_least(1, 32)
    batch_size: int = at_least(1, 32)  # per rank
    predict: list[str] = field(default_factory=list)  # named task: unlabelled splits to write results files for
    epochs: float | None = positive(None)  # set: optim.total_steps = epochs over the training split
    warmup_fraction: float | None = fraction(None)  # set: optim.warmup_steps = this share of the steps
    num_workers: int = at_least(0, 0)
    max_bad_fraction: float = fraction(0.01)
    max_sample_bytes: int = at_least(1, MAX_SAMPLE_BYTES)  # the largest image file read; larger: named skips
    allow_outside_root: bool = False  # read image paths that are absolute or climb out of their dataset folder
    optim: OptimConfig = field(
        default_factory=lambda: OptimConfig(lr=1e-4, weight_decay=0.01, warmup_steps=30, total_steps=300)
    )
    checkpoint: CheckpointConfig = field(default_factory=lambda: CheckpointConfig(every=500, keep=2))
    distributed: str = choice("ddp", "fsdp", "none")
    precision: str = choice(*PRECISIONS)
    eval_every: int = at_least(1, 100)
    log_every: int = at_least(1, 20)
    metric: str = choice(*METRICS)
    max_nonfinite: int = at_least(1, 5)
    progress: bool = True
    log: LogConfig = field(default_factory=LogConfig)  # Weights & Biases (log.wandb) beside metrics.jsonl
    perf: PerfConfig = field(default_factory=PerfConfig)  # the device peak perf/mfu is measured against


#: What a named benchmark task decides itself: its files' columns (and its encoder, problem type, metric).
NAMED_TASK_OWNS = (
    "train_path",
    "val_path",
    "text_column",
    "text_pair_column",
    "label_column",
    "image_column",
    "answers_column",
    "answer_vocab",
)


FROZEN = (
    "seed",
    "init_from",
    "preset",
    "model",
    "modality",
    "problem_type",
    "num_classes",
    "head_hidden",
    "task",
    "path",
    "images",
    "predict",
    "epochs",
    "warmup_fraction",
    *NAMED_TASK_OWNS,
    "answer_vocab_size",
    "tokenizer",
    "image_size",
    "max_length",
    "batch_size",
    "num_workers",
    "optim.grad_accum",
    "metric",
)


def load_config(path: str | None, overrides: list[str]) -> FinetuneConfig:
    """YAML file, then ``key=value`` overrides; unknown keys and bad values raise, naming them."""
    cfg = load_recipe_config(FinetuneConfig, path, overrides)
    if cfg.task in FINETUNE_TASKS:
        return _named_task_config(cfg)
    if cfg.predict:
        raise InputError(
            f"predict= is for a named task's unlabelled splits (e.g. task=vqav2 predict=[test-dev]), "
            f"not task={cfg.task}"
        )
    if ":" in cfg.task and not cfg.task.startswith("shapes:"):
        raise InputError(
            f"unknown task {cfg.task!r}: choose shapes:<name>, folder, text, pairs or one of "
            f"{', '.join(FINETUNE_TASKS)}"
        )
    if (cfg.metric in ("pearson", "spearman")) != (cfg.problem_type == "regression"):
        raise InputError(
            f"metric {cfg.metric!r} does not fit problem_type {cfg.problem_type!r}: regression takes "
            "pearson or spearman, classification the others"
        )
    if (cfg.metric == "vqa_accuracy") != (cfg.answers_column is not None) or (
        cfg.answers_column is not None and cfg.problem_type != "multi_label"
    ):
        raise InputError("VQA needs answers_column (soft targets), metric=vqa_accuracy and problem_type=multi_label")
    return cfg


def _named_task_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """A named benchmark brings its encoder, problem type and metrics (``metric``: one of them, by default
    the first); a key it decides itself, set to something else, is an error rather than ignored."""
    task, default = finetune_task(cfg.task), FinetuneConfig()
    if not cfg.path:
        raise InputError(f"task {cfg.task} reads its released files: set path= to the dataset's folder")
    own = {"modality": task.modality, "problem_type": task.problem_type}
    clash = [k for k in NAMED_TASK_OWNS if getattr(cfg, k) != getattr(default, k)]
    clash += [
        f"{k}={getattr(cfg, k)} (it is {v})" for k, v in own.items() if getattr(cfg, k) not in (v, getattr(default, k))
    ]
    if cfg.metric not in (*task.metrics, default.metric):
        clash.append(f"metric={cfg.metric} (it reports {', '.join(task.metrics)})")
    unknown = [s for s in cfg.predict if s not in task.predicts]
    if unknown:
        clash.append(f"predict={','.join(unknown)} (it writes results for {', '.join(task.predicts) or 'no split'})")
    if clash:
        raise InputError(
            f"task {cfg.task} reads its own files and sets its encoder and metrics: remove {', '.join(clash)}"
        )
    cfg.modality, cfg.problem_type = task.modality, task.problem_type
    cfg.metric = cfg.metric if cfg.metric != default.metric and cfg.metric in task.metrics else task.metrics[0]
    return cfg


def compute_metric(name: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Metric ``name`` of ``(N, C)`` logits (``(N,)`` for regression) against ``(N,)`` labels (``(N, C)`` soft
    scores for ``vqa_accuracy``: the soft score of the argmax, the pairs task's; VQA v2's official accuracy
    needs the answer strings, :meth:`FinetuneRecipe._score`)."""
    if name in ("pearson", "spearman"):
        return (pearson if name == "pearson" else spearman)(logits, labels)
    if name == "vqa_accuracy":
        return vqa_soft_accuracy(logits, labels)
    preds = logits.argmax(-1)
    if name == "accuracy":
        return accuracy(preds, labels)
    if name == "mean_per_class_recall":
        return mean_per_class_recall(preds, labels, num_classes=logits.shape[-1])
    if name == "f1":
        return f1_score(preds, labels, average="binary" if logits.shape[-1] == 2 else "macro")
    if name in ("matthews", "mcc"):
        return matthews_corrcoef(preds, labels)
    return auroc(logits.softmax(-1)[:, 1], labels)


@dataclass
class Progress:
    """Validation history, best ``(step, value)`` and the value before training (checkpointed)."""

    history: list = field(default_factory=list)
    best: list | None = None
    start: float | None = None
    reported: dict[str, float] = field(default_factory=dict)  # the task's reported metrics at the best step
    predictions: dict[str, list[int]] = field(default_factory=dict)  # ``predict`` splits: class id per row, best step
    skipped: dict[str, list[str]] = field(default_factory=dict)  # evaluated splits: "key: why" of unreadable records

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [list(h) for h in self.history],
            "best": self.best,
            "start": self.start,
            "reported": dict(self.reported),
            "predictions": dict(self.predictions),
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(h) for h in state["history"]]
        self.best, self.start, self.reported = state["best"], state["start"], dict(state.get("reported", {}))
        self.predictions = dict(state.get("predictions", {}))
        self.skipped = dict(state.get("skipped", {}))


class FinetuneRecipe(TrainingRecipe):
    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.progress = Progress()

    def setup(self) -> None:
        cfg = self.cfg
        set_sample_limit(cfg.max_sample_bytes)  # before the loader workers fork: they read with it
        self.init_path = resolve_checkpoint(cfg.init_from) if cfg.init_from else None  # a path, or a hub name
        check_config_json(self.init_path)  # a value of the wrong type is one line, before any model code reads it
        self.ctx = ctx = start_run(cfg, cfg.run_dir, cfg.seed)
        self.run_dir = ctx.run_dir
        self.report_sources: dict[str, Any] = {}  # named task: report and predict splits other than val
        self.reader_skips: dict[str, list[str]] = {}  # named task: the rows its reader left out, by split
        self.skips_named: set[str] = set()  # evaluation splits whose unreadable records were printed
        self.val_name = finetune_task(cfg.task).select if cfg.task in FINETUNE_TASKS else "validation"
        train, val, classes = self._sources()
        self.tokenizer = self._tokenizer(train) if cfg.modality != "image" else None
        self.raw_model = self._model(cfg.num_classes or len(classes)).to(ctx.device)
        positions = self.raw_model.model.config.text.max_positions
        if self.tokenizer is not None and cfg.max_length > positions:
            raise InputError(
                f"max_length {cfg.max_length} exceeds the text encoder's {positions} positions: "
                f"set max_length={positions} or less"
            )
        self._setup_data(train, val)
        self._derive_schedule()
        self.model = parallelize(self.raw_model, ctx.info, cfg.distributed)
        self.step, self.state = prepare_training(
            ctx,
            self.model,
            self.raw_model,
            optim=cfg.optim,
            precision=cfg.precision,
            checkpoint=cfg.checkpoint,
            components={"data": self.stream, "progress": self.progress},
            frozen=FROZEN,
            perf=PerfMeter(ctx.device, cfg.precision, cfg.perf, self.raw_model.model.config.image.patch_size),
        )
        self.state.resume()
        self.metrics = ctx.closing(
            MetricsLogger(self.run_dir, enabled=ctx.is_main, tensorboard=False, log=cfg.log, config=config_to_dict(cfg))
        )
        self.classifier_info = {
            "num_classes": cfg.num_classes or len(classes),
            "modality": cfg.modality,
            "problem_type": cfg.problem_type,
            "hidden_dim": cfg.head_hidden,
            "classes": [str(c) for c in classes],
            "metric": cfg.metric,
        }

    def _model(self, num_classes: int):
        cfg = self.cfg
        overrides = dict(cfg.model)
        if self.tokenizer is not None and not cfg.init_from:
            overrides["text.vocab_size"] = self.tokenizer.vocab_size
        if cfg.image_size:  # with a checkpoint: its position table is resampled once to this size
            overrides["image.image_size"] = cfg.image_size
        base = None if cfg.init_from else (FLAVAConfig.tiny() if cfg.preset == "tiny" else FLAVAConfig())
        if base is not None:  # model.image.init_from / model.text.init_from: CLIP/SigLIP towers
            base, overrides = resolve_tower_configs(base.replace(**overrides)), {}
            if base.text.init_from and self.tokenizer is not None and base.text.vocab_size != self.tokenizer.vocab_size:
                raise InputError(
                    f"the text tower of {base.text.init_from} has {base.text.vocab_size} ids but the tokenizer has "
                    f"{self.tokenizer.vocab_size}: set tokenizer= to the tokenizer the tower was trained with"
                )
        torch.manual_seed(cfg.seed)  # the same new head on every rank
        model = flava_model_for_classification(
            num_classes,
            cfg.modality,
            base,
            checkpoint=self.init_path,
            problem_type=cfg.problem_type,
            hidden_dim=cfg.head_hidden,
            **overrides,
        )
        reports = [str(r) for r in init_towers(model.model)] if base is not None else []
        if self.ctx.is_main and (model.load_report is not None or reports):
            text = "\n".join([str(model.load_report)] * (model.load_report is not None) + reports)
            (self.run_dir / "load_report.txt").write_text(text + "\n")
            if reports:
                print("\n".join(reports), flush=True)
        return model

    def _setup_data(self, train, val) -> None:
        cfg, info = self.cfg, self.ctx.info
        size = self.raw_model.model.config.image.image_size
        transform = ImageTransform(ImageTransformConfig(image_size=size, codebook_image_size=0))
        collate = ClassificationCollator(self.tokenizer.pad_token_id if self.tokenizer else 0)
        self.train_ds = ClassificationDataset(train, cfg.modality, transform, self.tokenizer)
        self.val_ds = ClassificationDataset(val, cfg.modality, transform, self.tokenizer)
        if len(self.train_ds) < cfg.batch_size * info.world_size:
            raise InputError(
                f"the training split has fewer samples ({len(self.train_ds)}) than one batch per rank "
                f"({cfg.batch_size} x {info.world_size} ranks): lower batch_size"
            )
        options = LoaderOptions.from_config(cfg, info, cfg.seed)
        loader = make_loader(self.train_ds, collate, options)
        self.stream = self.ctx.closing(
            MixedBatches({"train": (loader, 1.0)}, seed=cfg.seed, max_bad_fraction=cfg.max_bad_fraction)
        )
        once = dict(shuffle=False, repeat=False, drop_last=False)  # every rank scores the whole split
        self.val_loader = make_loader(self.val_ds, collate, options.unsharded(), **once)
        self.report_loaders = {}
        for split, source in self.report_sources.items():
            ds = ClassificationDataset(source, cfg.modality, transform, self.tokenizer)
            loader = make_loader(ds, collate, options.unsharded(), **once)
            self.report_loaders[split] = (loader, len(ds))

    def _derive_schedule(self) -> None:
        """``epochs`` / ``warmup_fraction`` set: the step counts they mean on this training split."""
        cfg, world = self.cfg, self.ctx.info.world_size
        if cfg.epochs:
            per_step = cfg.batch_size * world * cfg.optim.grad_accum
            cfg.optim.total_steps = max(1, math.ceil(cfg.epochs * len(self.train_ds) / per_step))
        if cfg.warmup_fraction is not None:
            cfg.optim.warmup_steps = int(cfg.warmup_fraction * cfg.optim.total_steps)

    def _tokenizer(self, train) -> TextTokenizer:
        cfg = self.cfg
        if cfg.tokenizer:
            return TextTokenizer.from_pretrained(cfg.tokenizer, max_length=cfg.max_length)
        found = find_tokenizer(str(self.init_path)) if self.init_path else None  # tokenizer/, else beside config
        if found is not None:
            return TextTokenizer.from_pretrained(found, max_length=cfg.max_length)
        if cfg.init_from:  # the checkpoint's text embeddings only fit the tokenizer it was trained with
            raise InputError(
                f"init_from {cfg.init_from} has no tokenizer/ folder nor vocab.txt/tokenizer.json: set `tokenizer` to "
                "the vocab.txt or "
                "tokenizer.json it was trained with"
            )
        # random initialisation: any vocabulary will do; learn one from the training text (saved in the run)
        if cfg.task.startswith("shapes:"):
            tokenizer = train_wordpiece(shapes_dataset().text, 1000, min_frequency=1, max_length=cfg.max_length)
        else:
            if cfg.task in FINETUNE_TASKS:
                texts = train.texts()
            else:
                rows = read_table(cfg.train_path, required=(cfg.text_column,))
                texts = [str(r[c]) for r in rows for c in (cfg.text_column, cfg.text_pair_column) if c]
            with tempfile.TemporaryDirectory() as tmp:
                corpus = Path(tmp) / "train.txt"
                corpus.write_text("\n".join(texts), encoding="utf-8")
                tokenizer = train_wordpiece([corpus], 1000, min_frequency=1, max_length=cfg.max_length)
        if self.ctx.is_main:
            tokenizer.save(self.run_dir / "tokenizer")
        return tokenizer

    def _sources(self):
        cfg = self.cfg
        if cfg.task in FINETUNE_TASKS:
            return self._named_sources()
        if cfg.task.startswith("shapes:"):
            name = cfg.task.split(":", 1)[1]
            if name not in TASKS:
                raise InputError(f"unknown shapes task {name!r}; choose one of {sorted(TASKS)}")
            paths = shapes_dataset()
            return ShapesTask(paths.train_pairs, name), ShapesTask(paths.val_pairs, name, seed=1), TASKS[name]
        if not (cfg.train_path and cfg.val_path):
            raise InputError(f"task {cfg.task!r} needs train_path and val_path")
        if cfg.task == "folder":
            train, val = ImageFolder(cfg.train_path, labels=True), ImageFolder(cfg.val_path, labels=True)
            if train.classes != val.classes:
                raise InputError(f"train classes {train.classes} differ from val classes {val.classes}")
            return train, val, train.classes
        train, val = self._labeled_sources()
        if cfg.problem_type == "regression":
            return train, val, [0]
        if train.classes is not None:
            return train, val, train.classes
        return train, val, list(range(max(int(y) for y in train.labels) + 1))  # integer class ids

    def _named_sources(self):
        """A named benchmark's training, selection and report splits, read from ``path`` (one read each)."""
        cfg, task = self.cfg, finetune_task(self.cfg.task)
        keys = {k: getattr(cfg, k) for k in task.keys}
        opened: dict[str, Any] = {}

        def split(name: str, classes: Any = None):
            if name not in opened:
                opened[name] = open_task_split(
                    task, cfg.path, name, max_bad_fraction=cfg.max_bad_fraction, classes=classes, **keys
                )
            return opened[name]

        train = split(task.train)
        val = split(task.select, train.classes)
        wanted = [*(s for s in task.report.values() if s != task.select), *cfg.predict]
        self.report_sources = {s: split(s, train.classes) for s in wanted}
        self.reader_skips = {name: list(rows.skipped) for name, rows in opened.items() if rows.skipped}
        for name, rows in opened.items():
            if rows.skipped and self.ctx.is_main:
                shown = "; ".join(rows.skipped[:3]) + ("; ..." if len(rows.skipped) > 3 else "")
                print(f"{cfg.task} {name}: {len(rows.skipped)} record(s) skipped: {shown}", flush=True)
        return train, val, list(train.classes) if train.classes else [0]

    def _labeled_sources(self):
        cfg, regression = self.cfg, self.cfg.problem_type == "regression"
        if cfg.task == "text":
            kw = dict(
                text_column=cfg.text_column,
                label_column=cfg.label_column,
                text_pair_column=cfg.text_pair_column,
                regression=regression,
            )
            train = LabeledText(cfg.train_path, **kw)
            return train, LabeledText(cfg.val_path, labels=train.classes, **kw)
        if cfg.task != "pairs":
            raise InputError(f"task must be 'shapes:<name>', 'folder', 'text' or 'pairs', got {cfg.task!r}")
        vocab = None
        if cfg.answer_vocab:
            vocab = [a for a in Path(cfg.answer_vocab).read_text(encoding="utf-8").splitlines() if a.strip()]
        kw = dict(
            image_column=cfg.image_column,
            text_column=cfg.text_column,
            label_column=cfg.label_column,
            answers_column=cfg.answers_column,
        )
        train = LabeledPairs(
            cfg.train_path, answer_vocab=vocab or cfg.answer_vocab_size, allow_outside_root=cfg.allow_outside_root, **kw
        )
        return train, LabeledPairs(
            cfg.val_path,
            labels=train.classes,
            answer_vocab=train.classes,
            allow_outside_root=cfg.allow_outside_root,
            **kw,
        )

    def _predict(self, split: str) -> tuple[torch.Tensor, torch.Tensor, list]:
        """Logits, labels and the :class:`~mmkit.data.Skipped` records (``#<index>`` keys) left out, over
        the whole of ``split`` (the validation split or a report / predict split)."""
        if split == self.val_name:
            return self._outputs(self.val_loader, len(self.val_ds), split)
        return self._outputs(*self.report_loaders[split], split)

    def _source(self, split: str) -> Any:
        """The rows of ``split`` (a named task's :class:`~mmkit.data.LabeledRows`)."""
        return self.val_ds.source if split == self.val_name else self.report_sources[split]

    def _answered(self, split: str) -> bool:
        """Whether ``split``'s answers are written as a results file (VQA v2: val and the ``predict`` splits)."""
        task = FINETUNE_TASKS.get(self.cfg.task)
        if task is None or task.results_file is None:
            return False
        return split in task.report.values() or split in self.cfg.predict

    @torch.no_grad()
    def _outputs(self, loader, size: int, split: str) -> tuple[torch.Tensor, torch.Tensor, list]:
        """:meth:`_predict` from ``loader`` (every rank runs it: FSDP2 needs them all); unreadable records
        are skipped, bounded by ``max_bad_fraction``."""
        model = unwrap(self.model)
        model.eval()
        logits, labels, skipped = [], [], []
        for batch, bad in loader:
            skipped += bad
            if batch is None:
                continue
            batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
            labels.append(batch.pop("labels").cpu())
            with autocast(self.cfg.precision, self.ctx.device):
                logits.append(model(**batch).logits.float().cpu())
        model.train()
        named = "; ".join(f"{s.key}: {s.reason}" for s in skipped[:3]) + ("; ..." if len(skipped) > 3 else "")
        if not logits or len(skipped) / size > self.cfg.max_bad_fraction:
            raise DataQualityError(
                f"{len(skipped)} of the {size} {split} records could not be read (max_bad_fraction "
                f"{self.cfg.max_bad_fraction:.1%}), e.g. {named}: fix the files or raise max_bad_fraction"
            )
        self.progress.skipped[split] = [f"{s.key}: {s.reason}" for s in skipped]  # the same records every time
        if skipped and split not in self.skips_named and self.ctx.is_main:  # named once per split
            self.skips_named.add(split)
            how = "answered with class 0" if self._answered(split) else "scored without them"
            print(f"{split}: {len(skipped)} of {size} records skipped, {how}: {named}", flush=True)
        return torch.cat(logits), torch.cat(labels), skipped

    def _score(self, name: str, outputs: tuple, split: str) -> float:
        """Metric ``name`` of ``split``'s outputs (:func:`compute_metric`), but VQA v2's ``vqa_accuracy`` is the
        official evaluation's: the predicted answer strings against each question's released human answers."""
        source = self._source(split) if name == "vqa_accuracy" else None
        if getattr(source, "human_answers", None) is not None:
            return source.official_accuracy(self._row_ids(outputs, split))
        return compute_metric(name, *outputs[:2])

    def evaluate(self) -> float:
        """The selection metric on the whole validation split."""
        return self._score(self.cfg.metric, self._predict(self.val_name), self.val_name)

    def _report(self, val: tuple, value: float) -> dict[str, float]:
        """A named task's reported metrics (its report splits, all its metrics and those it also reports) at
        this step; else the metric. The answers of the splits written as results files are kept."""
        if self.cfg.task not in FINETUNE_TASKS:
            return {self.cfg.metric: value}
        task, out = finetune_task(self.cfg.task), {}
        for suffix, split in task.report.items():
            outputs = val if split == task.select else self._predict(split)
            for m in (*task.metrics, *task.also_reports):
                out[m if not suffix else f"{m}_{suffix}"] = self._score(m, outputs, split)
            if self._answered(split):  # VQA v2's val: the answers scored, in the challenge's format at the end
                self.progress.predictions[split] = self._row_ids(outputs, split)
        for split in self.cfg.predict:  # the server's splits: this step's answers, kept until the run ends
            self.progress.predictions[split] = self._row_ids(self._predict(split), split)
        return out

    def _row_ids(self, outputs: tuple, split: str) -> list[int]:
        """The predicted class of every row of ``split``, in order; a row that cannot be read (within
        ``max_bad_fraction``, named) gets class 0 — the most frequent answer of a VQA vocabulary."""
        logits, _, skipped = outputs
        gone = {int(s.key.lstrip("#")) for s in skipped}
        ids, read = [0] * len(self._source(split)), iter(logits.argmax(-1).tolist())
        for i in range(len(ids)):
            if i not in gone:
                ids[i] = next(read)
        return ids

    def train(self) -> dict[str, Any]:
        """Train for ``optim.total_steps`` steps, evaluating every ``eval_every``; resumable."""
        cfg, p = self.cfg, self.progress
        if p.start is None:
            p.start = self.evaluate()
            self.metrics.log(0, {cfg.metric: p.start}, split="eval")
        device = self.ctx.device
        next_batch = lambda: {k: v.to(device) for k, v in next(self.stream).items()}  # noqa: E731
        done = train_loop(
            self.ctx,
            self.state,
            lambda step: self.step(next_batch, _forward, step),
            loop_options(cfg, f"finetune {cfg.task}"),
            on_log=self._log,
            on_eval=self._on_eval,
        )
        if not done:
            return {}
        if not p.history or p.history[-1][0] != self.state.step:
            self._on_eval(self.state.step)
        skipped, named = self._skipped()
        results = {
            "task": cfg.task,
            "metric": cfg.metric,
            "start": p.start,
            "best_step": p.best[0],
            "best": p.best[1],
            "final": p.history[-1][1],
            "metrics": p.reported,
            "skipped": skipped,
            "skipped_records": named,
            "history": p.history,
            "init_from": cfg.init_from,
            "predictions": self._write_predictions(),
        }
        if self.ctx.is_main and any(skipped.values()):
            print(
                "records skipped: "
                + "; ".join(f"{split} {n} (e.g. {', '.join(named[split][:2])})" for split, n in skipped.items() if n),
                flush=True,
            )
        if self.ctx.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
            print(json.dumps({k: v for k, v in results.items() if k != "history"}), flush=True)
        return results

    def _skipped(self) -> tuple[dict[str, int], dict[str, list[str]]]:
        """Every split's skipped records, as the log counts them: ``({split: count}, {split: the first five
        "key: why"})`` — rows the reader left out, records unreadable at the last evaluation of an evaluated
        split, and records the training loader skipped (each time it met one)."""
        train_split = finetune_task(self.cfg.task).train if self.cfg.task in FINETUNE_TASKS else "train"
        named = {split: list(rows) for split, rows in self.reader_skips.items()}
        for split, rows in self.progress.skipped.items():
            named[split] = named.get(split, []) + rows
        counts = {split: len(rows) for split, rows in named.items()}
        loader = self.stream.stats()["train"]
        counts[train_split] = counts.get(train_split, 0) + loader["skipped"]
        named[train_split] = named.get(train_split, []) + loader["examples"]
        return counts, {split: rows[:5] for split, rows in named.items() if rows}

    def _write_predictions(self) -> dict[str, str]:
        """VQA v2's val and ``predict`` splits: the best step's answers as the challenge server (and the
        official evaluation) reads them, ``<run_dir>/predictions/<task>_<split>.json``; returns ``{split: path}``."""
        written = {}
        for split, ids in self.progress.predictions.items():  # empty unless the task writes results files
            task = finetune_task(self.cfg.task)
            path = self.run_dir / "predictions" / f"{task.name}_{split}.json"
            if self.ctx.is_main:
                path.parent.mkdir(exist_ok=True)
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(task.results_file(self._source(split), ids)))
                os.replace(tmp, path)
            written[split] = str(path)
        return written

    def _log(self, step: int, record: dict[str, float], outcome) -> None:
        perf = {k: v for k, v in record.items() if k.startswith("perf/")}
        self.metrics.log(step, {"loss": record["loss/total"], "lr": self.step.scheduler.get_last_lr()[0], **perf})

    def _on_eval(self, step: int) -> None:
        p = self.progress
        val = self._predict(self.val_name)
        value = self._score(self.cfg.metric, val, self.val_name)
        p.history.append((step, value))
        self.metrics.log(step, {self.cfg.metric: value}, split="eval")
        if p.best is None or value > p.best[1]:
            p.best, p.reported = [step, value], self._report(val, value)
            self._save_best()

    def _save_best(self) -> None:
        """Export the current model to ``<run_dir>/best`` atomically (a crash leaves the previous best);
        under FSDP2 the full state dict is gathered first."""
        from safetensors.torch import save_file

        full = full_state_dict(self.model)
        if self.ctx.is_main:
            out, tmp, old = self.run_dir / "best", self.run_dir / "best.tmp", self.run_dir / "best.old"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file(full, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(self.raw_model.model.config.to_dict()))
            (tmp / "classifier.json").write_text(json.dumps(self.classifier_info, indent=2))
            if self.tokenizer is not None:
                self.tokenizer.save(tmp / "tokenizer")
            shutil.rmtree(old, ignore_errors=True)
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        self.ctx.comm.barrier()


def _forward(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = model(**batch)
    return out.loss, {}


def main(argv: list[str] | None = None) -> int:
    return run_recipe(FinetuneRecipe, load_config, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
