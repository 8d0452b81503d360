"""Finetune FLAVA on a classification or regression task (paper §4, supplement B).

    python recipes/flava/finetune.py --config recipes/flava/configs/finetune_shapes_color.yaml \
        checkpoint=runs/demo/final
    torchrun --standalone --nproc_per_node=2 recipes/flava/finetune.py --config ... key=value

Features and their config keys:

* model: ``checkpoint`` (an mmkit pretraining export ``<run>/final``, a transformers FLAVA
  directory, or empty for random initialisation — the load report names the new head weights),
  ``preset`` + ``model.*`` when there is no checkpoint; ``modality`` (``image`` CLS_I, ``text``
  CLS_T, ``multimodal`` CLS_M); ``problem_type`` (``single_label``, ``multi_label``,
  ``regression``); the paper's 2-layer head, ``head_hidden`` 1536.
* data: ``task`` = a built-in shapes task (``shapes:color``, ``shapes:count``, ``shapes:shape``,
  ``shapes:entailment``), ``folder`` (image classes in subfolders: ``train_path``/``val_path``),
  ``text`` (CSV/JSONL: ``text_column``, ``text_pair_column`` for GLUE-style sentence pairs,
  ``label_column``; float labels with ``problem_type=regression``, STS-B style) or ``pairs``
  (image + text manifest, CSV/JSONL: ``image_column``, ``text_column``, ``label_column`` for
  entailment or hateful-memes-style classes; VQA as classification with ``answers_column`` (the
  human answers per question), ``problem_type=multi_label`` and a fixed ``answer_vocab`` file, one
  answer per line, or the ``answer_vocab_size`` most frequent training answers). String labels
  become classes in sorted order, the same for both splits. ``image_size`` other than the
  checkpoint's resamples its position embeddings once (VQA used 480² from 224²).
* optimisation: AdamW (``lr``, ``weight_decay`` 0.01), ``warmup_steps`` then cosine, ``batch_size``
  per rank, ``steps``; DDP across ranks; ``precision`` = ``fp32`` | ``bf16`` (autocast).
* evaluation: ``metric`` (accuracy, f1, mcc, auroc, pearson, spearman, vqa_accuracy) on the validation split every
  ``eval_every`` steps; the best model is kept in ``<run_dir>/best``; ``results.json`` at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from mmkit.data import FLAVAImageTransform, ImageFolder, ImageTransformConfig, shapes_dataset
from mmkit.data.sources import read_table
from mmkit.data.tasks import (
    TASKS,
    ClassificationDataset,
    LabeledPairs,
    LabeledText,
    ShapesTask,
    collate_classification,
)
from mmkit.eval import accuracy, auroc, f1_score, matthews_corrcoef, pearson, spearman, vqa_soft_accuracy
from mmkit.models import FLAVAConfig, flava_model_for_classification
from mmkit.tokenizers import TextTokenizer, train_wordpiece
from mmkit.train import (
    CheckpointManager,
    MetricsLogger,
    adamw_param_groups,
    parallelize,
    rng_state,
    run_recipe,
    set_rng_state,
    setup_distributed,
    warmup_cosine_scheduler,
)
from mmkit.utils import config_to_dict
from mmkit.utils import load_config as load_recipe_config

METRICS = ("accuracy", "f1", "mcc", "auroc", "pearson", "spearman", "vqa_accuracy")


@dataclass
class FinetuneConfig:
    run_dir: str = "runs/finetune"
    seed: int = 0
    checkpoint: str | None = None
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)
    modality: str = "image"
    problem_type: str = "single_label"
    num_classes: int | None = None  # None: from the task
    head_hidden: int = 1536
    task: str = "shapes:color"
    train_path: str | None = None
    val_path: str | None = None
    text_column: str = "text"
    text_pair_column: str | None = None
    label_column: str = "label"
    image_column: str = "image"
    answers_column: str | None = None  # VQA: the human answers of each question
    answer_vocab: str | None = None  # VQA: file with one answer per line; None: most frequent in train
    answer_vocab_size: int = 3129
    tokenizer: str | None = None  # None: the checkpoint's (mmkit export) or trained on the shapes text
    image_size: int | None = None  # None: the model's
    max_length: int = 32
    batch_size: int = 32
    steps: int = 300
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 30
    eval_every: int = 100
    log_every: int = 20
    metric: str = "accuracy"
    num_workers: int = 0
    precision: str = "fp32"  # or "bf16": autocast for the forward passes (LayerNorm/softmax stay fp32)
    checkpoint_every: int = 500  # resumable DCP checkpoints under <run_dir>/checkpoints
    checkpoint_keep: int = 2
    resume: str = "auto"  # auto: continue from the latest complete checkpoint; none: start over


def load_config(path: str | None, overrides: list[str]) -> FinetuneConfig:
    """YAML file, then ``key=value`` overrides; unknown keys raise."""
    cfg = load_recipe_config(FinetuneConfig, path, overrides)
    if cfg.metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {cfg.metric!r}")
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {cfg.precision!r}")
    regression_metric = cfg.metric in ("pearson", "spearman")
    if regression_metric != (cfg.problem_type == "regression"):
        raise ValueError(
            f"metric {cfg.metric!r} does not fit problem_type {cfg.problem_type!r}: regression takes "
            "pearson or spearman, classification the others"
        )
    if (cfg.metric == "vqa_accuracy") != (cfg.answers_column is not None) or (
        cfg.answers_column is not None and cfg.problem_type != "multi_label"
    ):
        raise ValueError("VQA needs answers_column (soft targets), metric=vqa_accuracy and problem_type=multi_label")
    return cfg


def compute_metric(name: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    if name in ("pearson", "spearman"):
        return (pearson if name == "pearson" else spearman)(logits, labels)
    if name == "vqa_accuracy":
        return vqa_soft_accuracy(logits, labels)
    preds = logits.argmax(-1)
    if name == "accuracy":
        return accuracy(preds, labels)
    if name == "f1":
        return f1_score(preds, labels, average="binary" if logits.shape[-1] == 2 else "macro")
    if name == "mcc":
        return matthews_corrcoef(preds, labels)
    return auroc(logits.softmax(-1)[:, 1], labels)


class FinetuneRecipe:
    def __init__(self, cfg: FinetuneConfig) -> None:
        self.cfg = cfg
        self.run_dir = Path(cfg.run_dir)

    def setup(self) -> None:
        cfg = self.cfg
        self.info = setup_distributed()
        torch.manual_seed(cfg.seed)
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        self.tokenizer = self._tokenizer() if cfg.modality != "image" else None
        overrides = dict(cfg.model)
        if self.tokenizer is not None and not cfg.checkpoint:
            overrides["text.vocab_size"] = self.tokenizer.vocab_size
        if cfg.image_size:  # with a checkpoint: its position table is resampled once to this size
            overrides["image.image_size"] = cfg.image_size
        base = None if cfg.checkpoint else (FLAVAConfig.tiny() if cfg.preset == "tiny" else FLAVAConfig())
        train, val, classes = self._sources()
        num = cfg.num_classes or len(classes)
        model = flava_model_for_classification(
            num, cfg.modality, base, checkpoint=cfg.checkpoint, problem_type=cfg.problem_type,
            hidden_dim=cfg.head_hidden, **overrides,
        )  # fmt: skip
        if self.info.is_main and model.load_report is not None:
            (self.run_dir / "load_report.txt").write_text(str(model.load_report) + "\n")
        size = model.model.config.image.image_size
        transform = FLAVAImageTransform(ImageTransformConfig(image_size=size, codebook_image_size=0))
        pad = self.tokenizer.pad_token_id if self.tokenizer else 0
        collate = lambda s: collate_classification(s, pad)  # noqa: E731
        self.train_ds = ClassificationDataset(train, cfg.modality, transform, self.tokenizer)
        self.val_ds = ClassificationDataset(val, cfg.modality, transform, self.tokenizer)
        sampler = ResumableDistributedSampler(
            self.train_ds, self.info.world_size, self.info.rank, shuffle=True, seed=cfg.seed, drop_last=True
        )
        self.sampler = sampler
        self.train_loader = DataLoader(self.train_ds, cfg.batch_size, sampler=sampler, collate_fn=collate,
                                       num_workers=cfg.num_workers, drop_last=True)  # fmt: skip
        self.val_loader = DataLoader(self.val_ds, cfg.batch_size, collate_fn=collate, num_workers=cfg.num_workers)
        self.raw_model = model.to(self.info.device)
        self.model = parallelize(model, self.info, "ddp")
        self.optimizer = torch.optim.AdamW(adamw_param_groups(self.raw_model, cfg.weight_decay), lr=cfg.lr)
        self.scheduler = warmup_cosine_scheduler(self.optimizer, cfg.warmup_steps, cfg.steps)
        self.metrics = MetricsLogger(self.run_dir, enabled=self.info.is_main, tensorboard=False)
        self.ckpt = CheckpointManager(self.run_dir / "checkpoints", keep=cfg.checkpoint_keep)
        self.classifier_info = {"num_classes": num, "modality": cfg.modality, "problem_type": cfg.problem_type,
                                "hidden_dim": cfg.head_hidden, "classes": [str(c) for c in classes],
                                "metric": cfg.metric}  # fmt: skip

    def _tokenizer(self) -> TextTokenizer:
        cfg = self.cfg
        if cfg.tokenizer:
            return TextTokenizer.from_pretrained(cfg.tokenizer, max_length=cfg.max_length)
        if cfg.checkpoint and (Path(cfg.checkpoint) / "tokenizer").exists():
            return TextTokenizer.from_pretrained(Path(cfg.checkpoint) / "tokenizer", max_length=cfg.max_length)
        if cfg.checkpoint:  # the checkpoint's text embeddings only fit the tokenizer it was trained with
            raise ValueError(
                f"checkpoint {cfg.checkpoint} has no tokenizer/ folder: set `tokenizer` to the vocab.txt or "
                "tokenizer.json it was trained with"
            )
        # random initialisation: any vocabulary will do; learn one from the training text (saved in the run)
        if cfg.task.startswith("shapes:"):
            tokenizer = train_wordpiece(shapes_dataset().text, 1000, min_frequency=1, max_length=cfg.max_length)
        else:
            rows = read_table(cfg.train_path, required=(cfg.text_column,))
            columns = [c for c in (cfg.text_column, cfg.text_pair_column) if c]
            with tempfile.TemporaryDirectory() as tmp:
                corpus = Path(tmp) / "train.txt"
                corpus.write_text("\n".join(str(r[c]) for r in rows for c in columns), encoding="utf-8")
                tokenizer = train_wordpiece([corpus], 1000, min_frequency=1, max_length=cfg.max_length)
        if self.info.is_main:
            tokenizer.save(self.run_dir / "tokenizer")
        return tokenizer

    def _sources(self):
        cfg = self.cfg
        if cfg.task.startswith("shapes:"):
            name = cfg.task.split(":", 1)[1]
            if name not in TASKS:
                raise ValueError(f"unknown shapes task {name!r}; choose one of {sorted(TASKS)}")
            paths = shapes_dataset()
            return ShapesTask(paths.train_pairs, name), ShapesTask(paths.val_pairs, name, seed=1), TASKS[name]
        if not (cfg.train_path and cfg.val_path):
            raise ValueError(f"task {cfg.task!r} needs train_path and val_path")
        if cfg.task == "folder":
            train, val = ImageFolder(cfg.train_path, labels=True), ImageFolder(cfg.val_path, labels=True)
            if train.classes != val.classes:
                raise ValueError(f"train classes {train.classes} differ from val classes {val.classes}")
            return train, val, train.classes
        regression = cfg.problem_type == "regression"
        if cfg.task == "text":
            kw = dict(text_column=cfg.text_column, label_column=cfg.label_column, text_pair_column=cfg.text_pair_column,
                      regression=regression)  # fmt: skip
            train = LabeledText(cfg.train_path, **kw)
            val = LabeledText(cfg.val_path, labels=train.classes, **kw)
        elif cfg.task == "pairs":
            vocab = None
            if cfg.answer_vocab:
                vocab = [a for a in Path(cfg.answer_vocab).read_text(encoding="utf-8").splitlines() if a.strip()]
            kw = dict(image_column=cfg.image_column, text_column=cfg.text_column, label_column=cfg.label_column,
                      answers_column=cfg.answers_column, answer_vocab_size=cfg.answer_vocab_size)  # fmt: skip
            train = LabeledPairs(cfg.train_path, answer_vocab=vocab, **kw)
            val = LabeledPairs(cfg.val_path, labels=train.classes, answer_vocab=train.classes, **kw)
        else:
            raise ValueError(f"task must be 'shapes:<name>', 'folder', 'text' or 'pairs', got {cfg.task!r}")
        if regression:
            return train, val, [0]
        if train.classes is not None:
            return train, val, train.classes
        return train, val, list(range(max(int(r[-1]) for r in train._rows) + 1))  # integer class ids

    @torch.no_grad()
    def evaluate(self) -> float:
        model = self.raw_model
        model.eval()
        logits, labels = [], []
        for batch in self.val_loader:
            batch = {k: v.to(self.info.device) for k, v in batch.items()}
            y = batch.pop("labels")
            with self._autocast():
                logits.append(model(**batch).logits.float().cpu())
            labels.append(y.cpu())
        model.train()
        return compute_metric(self.cfg.metric, torch.cat(logits), torch.cat(labels))

    def train(self) -> dict[str, Any]:
        """Train for ``steps`` steps, evaluating every ``eval_every``; resumable from ``checkpoints/``."""
        cfg = self.cfg
        state = self._resume()
        step, history, best = state["step"], state["history"], state["best"]
        if state["start"] is None:
            state["start"] = self.evaluate()
            self.metrics.log(0, {cfg.metric: state["start"]}, split="eval")
        self.model.train()
        per_epoch = len(self.train_loader)
        if per_epoch == 0:
            raise ValueError(
                f"the training split has fewer samples ({len(self.train_ds)}) than one batch per rank "
                f"({cfg.batch_size} x {self.info.world_size} ranks): lower batch_size"
            )
        progress = tqdm(total=cfg.steps, initial=step, desc="finetune", disable=not self.info.is_main,
                        mininterval=1.0 if sys.stderr.isatty() else 30.0)  # fmt: skip
        while step < cfg.steps:
            epoch, skip = divmod(step, per_epoch)
            self.sampler.set_epoch(epoch)
            self.sampler.skip = skip * cfg.batch_size  # resume mid-epoch on the very next batch
            for batch in self.train_loader:
                batch = {k: v.to(self.info.device) for k, v in batch.items()}
                with self._autocast():
                    out = self.model(**batch)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in self.raw_model.parameters() if p.requires_grad], 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                step += 1
                progress.update(1)
                if step % cfg.log_every == 0:
                    self.metrics.log(step, {"loss": float(out.loss.detach()), "lr": self.scheduler.get_last_lr()[0]})
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    value = self.evaluate()
                    history.append((step, value))
                    self.metrics.log(step, {cfg.metric: value}, split="eval")
                    progress.set_postfix({cfg.metric: f"{value:.4f}"}, refresh=False)
                    if best is None or value > best[1]:
                        best = (step, value)
                        self._save_best()
                if step % cfg.checkpoint_every == 0 and step < cfg.steps:
                    self.ckpt.save(step, self.model, self.optimizer, {
                        "scheduler": self.scheduler.state_dict(), "rng": rng_state(),
                        "history": history, "best": best, "start": state["start"]})  # fmt: skip
                if os.environ.get("MMKIT_FAULT_KILL_AT_STEP") == str(step):  # fault injection for tests
                    os.kill(os.getpid(), signal.SIGKILL)
                if step >= cfg.steps:
                    break
        progress.close()
        results = {"metric": cfg.metric, "start": state["start"], "best_step": best[0], "best": best[1],
                   "final": history[-1][1], "history": history, "checkpoint": cfg.checkpoint}  # fmt: skip
        if self.info.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
            print(json.dumps({k: v for k, v in results.items() if k != "history"}), flush=True)
        return results

    def _autocast(self):
        enabled = self.cfg.precision == "bf16"
        return torch.autocast(self.info.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _resume(self) -> dict[str, Any]:
        """Restore the latest complete checkpoint (``resume=auto``) or start fresh."""
        fresh = {"step": 0, "history": [], "best": None, "start": None}
        if self.cfg.resume != "auto" or (path := self.ckpt.latest()) is None:
            return fresh
        extra = self.ckpt.load(path, self.model, self.optimizer)
        self.scheduler.load_state_dict(extra["scheduler"])
        set_rng_state(extra["rng"])
        if self.info.is_main:
            print(f"resumed from {path} (step {extra['step']})", flush=True)
        best = tuple(extra["best"]) if extra["best"] is not None else None
        return {"step": extra["step"], "history": [tuple(h) for h in extra["history"]], "best": best,
                "start": extra["start"]}  # fmt: skip

    def _save_best(self) -> None:
        """Export the current model to ``<run_dir>/best`` atomically (a crash leaves the previous best)."""
        if self.info.is_main:
            from safetensors.torch import save_file

            out, tmp = self.run_dir / "best", self.run_dir / "best.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            state = {k: v.detach().contiguous().cpu() for k, v in self.raw_model.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(self.raw_model.model.config.to_dict()))
            (tmp / "classifier.json").write_text(json.dumps(self.classifier_info, indent=2))
            if self.tokenizer is not None:
                self.tokenizer.save(tmp / "tokenizer")
            old = self.run_dir / "best.old"
            shutil.rmtree(old, ignore_errors=True)
            if out.exists():
                os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        if self.info.world_size > 1:
            dist.barrier()


class ResumableDistributedSampler(torch.utils.data.DistributedSampler):
    """:class:`~torch.utils.data.DistributedSampler` that can start an epoch ``skip`` samples in (per
    rank), so a resumed run sees exactly the batches the interrupted one had not reached yet."""

    skip: int = 0

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        self.skip = 0
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples - self.skip


def main(argv: list[str] | None = None) -> int:
    return run_recipe(FinetuneRecipe, load_config, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
