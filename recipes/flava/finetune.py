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
  ``shapes:entailment``) or ``folder`` (image classes in subfolders: ``train_path``/``val_path``)
  or ``text`` (CSV/JSONL: ``text_column``, ``text_pair_column``, ``label_column``); ``image_size``
  other than the pretraining size interpolates the position embeddings (VQA used 480²).
* optimisation: AdamW (``lr``, ``weight_decay`` 0.01), ``warmup_steps`` then cosine, ``batch_size``
  per rank, ``steps``; DDP across ranks.
* evaluation: ``metric`` (accuracy, f1, mcc, auroc, pearson, spearman) on the validation split every
  ``eval_every`` steps; the best model is kept in ``<run_dir>/best``; ``results.json`` at the end.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import yaml
from torch.utils.data import DataLoader

from mmkit.data import FLAVAImageTransform, ImageFolder, ImageTransformConfig, shapes_dataset
from mmkit.data.tasks import TASKS, ClassificationDataset, LabeledText, ShapesTask, collate_classification
from mmkit.eval import accuracy, auroc, f1_score, matthews_corrcoef, pearson, spearman
from mmkit.models import FLAVAConfig, flava_model_for_classification
from mmkit.tokenizers import TextTokenizer, train_wordpiece
from mmkit.train import (
    MetricsLogger,
    adamw_param_groups,
    parallelize,
    setup_distributed,
    teardown_distributed,
    warmup_cosine_scheduler,
)
from mmkit.utils import config_to_dict
from mmkit.utils import load_config as load_recipe_config

METRICS = ("accuracy", "f1", "mcc", "auroc", "pearson", "spearman")


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
    tokenizer: str | None = None  # None: the checkpoint's (mmkit export) or trained on the shapes text
    image_size: int | None = None  # None: the model's
    max_length: int = 32
    batch_size: int = 32
    steps: int = 300
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 30
    eval_every: int = 100
    metric: str = "accuracy"
    num_workers: int = 0


def load_config(path: str | None, overrides: list[str]) -> FinetuneConfig:
    """YAML file, then ``key=value`` overrides; unknown keys raise."""
    cfg = load_recipe_config(FinetuneConfig, path, overrides)
    if cfg.metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {cfg.metric!r}")
    return cfg


def compute_metric(name: str, logits: torch.Tensor, labels: torch.Tensor) -> float:
    if name in ("pearson", "spearman"):
        return (pearson if name == "pearson" else spearman)(logits, labels)
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
        base = None if cfg.checkpoint else (FLAVAConfig.tiny() if cfg.preset == "tiny" else FLAVAConfig())
        train, val, classes = self._sources()
        num = cfg.num_classes or len(classes)
        model = flava_model_for_classification(
            num, cfg.modality, base, checkpoint=cfg.checkpoint, problem_type=cfg.problem_type,
            hidden_dim=cfg.head_hidden, **overrides,
        )  # fmt: skip
        if self.info.is_main and model.load_report is not None:
            (self.run_dir / "load_report.txt").write_text(str(model.load_report) + "\n")
        mcfg = model.model.config
        size = cfg.image_size or mcfg.image.image_size
        transform = FLAVAImageTransform(ImageTransformConfig(image_size=size, codebook_image_size=0))
        pad = self.tokenizer.pad_token_id if self.tokenizer else 0
        collate = lambda s: collate_classification(s, pad)  # noqa: E731
        self.train_ds = ClassificationDataset(train, cfg.modality, transform, self.tokenizer)
        self.val_ds = ClassificationDataset(val, cfg.modality, transform, self.tokenizer)
        sampler = torch.utils.data.DistributedSampler(
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

    def _tokenizer(self) -> TextTokenizer:
        cfg = self.cfg
        if cfg.tokenizer:
            return TextTokenizer.from_pretrained(cfg.tokenizer, max_length=cfg.max_length)
        if cfg.checkpoint and (Path(cfg.checkpoint) / "tokenizer").exists():
            return TextTokenizer.from_pretrained(Path(cfg.checkpoint) / "tokenizer", max_length=cfg.max_length)
        if cfg.task.startswith("shapes:"):
            return train_wordpiece(shapes_dataset().text, 1000, min_frequency=1, max_length=cfg.max_length)
        raise ValueError("text tasks need `tokenizer` (or a checkpoint exported with its tokenizer)")

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
        if cfg.task == "text":
            kw = dict(text_column=cfg.text_column, label_column=cfg.label_column, text_pair_column=cfg.text_pair_column)
            train, val = LabeledText(cfg.train_path, **kw), LabeledText(cfg.val_path, **kw)
            labels = sorted({r[2] for r in train._rows}) if cfg.problem_type != "regression" else [0]
            return train, val, labels
        raise ValueError(f"task must be 'shapes:<name>', 'folder' or 'text', got {cfg.task!r}")

    @torch.no_grad()
    def evaluate(self) -> float:
        model = self.raw_model
        model.eval()
        logits, labels = [], []
        for batch in self.val_loader:
            batch = {k: v.to(self.info.device) for k, v in batch.items()}
            y = batch.pop("labels")
            logits.append(model(**batch).logits.float().cpu())
            labels.append(y.cpu())
        model.train()
        return compute_metric(self.cfg.metric, torch.cat(logits), torch.cat(labels))

    def train(self) -> dict[str, Any]:
        cfg = self.cfg
        step, epoch, best = 0, 0, None
        history = []
        start = self.evaluate()
        self.metrics.log(0, {cfg.metric: start}, split="eval")
        self.model.train()
        while step < cfg.steps:
            self.sampler.set_epoch(epoch)
            for batch in self.train_loader:
                batch = {k: v.to(self.info.device) for k, v in batch.items()}
                out = self.model(**batch)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_([p for p in self.raw_model.parameters() if p.requires_grad], 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.scheduler.step()
                step += 1
                if step % 20 == 0:
                    self.metrics.log(step, {"loss": float(out.loss.detach()), "lr": self.scheduler.get_last_lr()[0]})
                if step % cfg.eval_every == 0 or step == cfg.steps:
                    value = self.evaluate()
                    history.append((step, value))
                    self.metrics.log(step, {cfg.metric: value}, split="eval")
                    if best is None or value > best[1]:
                        best = (step, value)
                        self._save_best()
                if step >= cfg.steps:
                    break
            epoch += 1
        results = {"metric": cfg.metric, "start": start, "best_step": best[0], "best": best[1],
                   "final": history[-1][1], "history": history, "checkpoint": cfg.checkpoint}  # fmt: skip
        if self.info.is_main:
            (self.run_dir / "results.json").write_text(json.dumps(results, indent=2))
            print(json.dumps({k: v for k, v in results.items() if k != "history"}), flush=True)
        return results

    def _save_best(self) -> None:
        if self.info.is_main:
            from safetensors.torch import save_file

            out = self.run_dir / "best"
            out.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().contiguous().cpu() for k, v in self.raw_model.state_dict().items()}
            save_file(state, str(out / "model.safetensors"))
            (out / "config.json").write_text(json.dumps(self.raw_model.model.config.to_dict()))
        if self.info.world_size > 1:
            dist.barrier()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args(argv)
    recipe = FinetuneRecipe(load_config(args.config, args.overrides))
    try:
        recipe.setup()
        recipe.train()
    finally:
        teardown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
