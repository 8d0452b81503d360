"""Evaluate a FLAVA, CLIP or SigLIP checkpoint without finetuning: zero-shot classification,
retrieval, linear probe.

    python recipes/flava/evaluate.py checkpoint=runs/demo/final out=runs/demo/eval.json
    python recipes/flava/evaluate.py checkpoint=runs/demo/final tasks=retrieval,linear_probe:count
    python recipes/flava/evaluate.py --config eval.yaml            # the same keys in a YAML file

On your own data:

    python recipes/flava/evaluate.py checkpoint=CKPT tasks=zero_shot images=val/ [templates=t.txt]
    python recipes/flava/evaluate.py checkpoint=CKPT tasks=retrieval pairs=pairs.jsonl
    python recipes/flava/evaluate.py checkpoint=CKPT tasks=linear_probe train_images=train/ images=val/

``checkpoint`` is anything :func:`mmkit.models.load_flava_model` reads: a pretraining export
(``<run>/final``), a finetune export (``<run>/best``, its encoders) or a transformers FLAVA directory;
or anything :func:`mmkit.models.load_dual_encoder` reads: a CLIP/SigLIP export of
``recipes/clip/pretrain.py`` or a transformers ``CLIPModel`` / ``SiglipModel`` directory. The
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
  L2 strength swept on a validation split carved from ``train_images`` (class subfolders),
  accuracy on ``images``; or a built-in task ``linear_probe:<color|count|shape>``.

Results go to a JSON file (``out``) and a readable table. A bad key or value, a missing file or a
checkpoint that does not fit prints one ``error:`` line (``--debug`` for the traceback).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from mmkit.data import (
    FLAVAImageTransform,
    ImageFolder,
    ImageTransformConfig,
    Manifest,
    TarShards,
    pad_sequences,
    shapes_dataset,
)
from mmkit.data.sources import Source, decode_image, decode_text
from mmkit.data.tasks import TASKS, ClassificationDataset, ShapesTask, collate_classification
from mmkit.data.transforms import CLIP_MEAN, CLIP_STD
from mmkit.eval import DEFAULT_TEMPLATES, class_embeddings, linear_probe, retrieval_recall, zero_shot_logits
from mmkit.models import DualEncoderModel, FLAVAConfig, FLAVAModel, flava_model, load_dual_encoder, load_flava_model
from mmkit.models.clip_hf import is_dual_encoder_checkpoint
from mmkit.tokenizers import TextTokenizer
from mmkit.train import recipe_arg_parser, run_cli
from mmkit.train.cli import debug_enabled
from mmkit.utils import at_least, choice
from mmkit.utils import load_config as load_recipe_config

TEMPLATES = {
    "color": ("a picture of something {}.", "{} shapes", "{}"),
    "count": ("{} shapes", "a picture of {} objects.", "{}"),
    "shape": ("a picture of a {}.", "{}s", "{}"),
}
COUNT_WORDS = {"1": "one", "2": "two", "3": "three"}
KINDS = ("zero_shot", "retrieval", "linear_probe")


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
    out: str | None = None  # results as JSON
    device: str = choice("auto", "cpu", "cuda")
    seed: int = 0


def load_config(path: str | None, overrides: list[str]) -> EvalConfig:
    """YAML file, then ``key=value`` overrides; unknown keys, bad values and unknown tasks raise."""
    cfg = load_recipe_config(EvalConfig, path, overrides, dict_fields=())
    if cfg.checkpoint and cfg.model_config:
        raise ValueError("model_config is for a randomly initialised model; a checkpoint brings its own")
    for task in cfg.tasks.split(","):
        kind, _, name = task.partition(":")
        if kind not in KINDS:
            raise ValueError(
                f"unknown task {task!r} in tasks: use zero_shot[:<name>], retrieval or linear_probe[:<name>]"
            )
        if name and (kind == "retrieval" or name not in TEMPLATES):
            raise ValueError(f"unknown built-in task {name!r} in {task!r}; choose one of {sorted(TEMPLATES)}")
    return cfg


def load_model(cfg: EvalConfig, device: torch.device) -> tuple[FLAVAModel | DualEncoderModel, TextTokenizer | None]:
    """The encoders (strictly loaded, eval mode) and the tokenizer their text embeddings were trained with."""
    if cfg.checkpoint and is_dual_encoder_checkpoint(cfg.checkpoint):
        model = load_dual_encoder(cfg.checkpoint, device=device)
        print(f"loaded {type(model.config).__name__.removesuffix('Config')} from {cfg.checkpoint}", flush=True)
    elif cfg.checkpoint:
        model = load_flava_model(cfg.checkpoint, device=device)
        print(model.load_report, flush=True)
    else:
        config = FLAVAConfig.tiny()
        if cfg.model_config:
            config = FLAVAConfig.from_dict(json.loads(Path(cfg.model_config).read_text()))
        model = flava_model(config).to(device).eval()
    found = find_tokenizer(cfg)
    length = min(77, model.config.text.max_positions)
    return model, TextTokenizer.from_pretrained(found, max_length=length) if found else None


def find_tokenizer(cfg: EvalConfig) -> Path | None:
    """``tokenizer``, else ``<checkpoint>/tokenizer`` (mmkit exports), else the checkpoint directory
    itself (transformers directories keep ``vocab.txt`` / ``tokenizer.json`` beside the weights)."""
    if cfg.tokenizer:
        if not Path(cfg.tokenizer).exists():
            raise FileNotFoundError(f"tokenizer {cfg.tokenizer} does not exist")
        return Path(cfg.tokenizer)
    if not cfg.checkpoint:
        return None
    ckpt = Path(cfg.checkpoint)
    return next(
        (d for d in (ckpt / "tokenizer", ckpt) if (d / "tokenizer.json").exists() or (d / "vocab.txt").exists()), None
    )


def normalisation(checkpoint: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The image mean/std a transformers directory's ``preprocessor_config.json`` gives (SigLIP uses
    0.5/0.5), else CLIP's, which FLAVA and mmkit's recipes use."""
    pre = Path(checkpoint) / "preprocessor_config.json" if checkpoint else None
    if pre is not None and pre.is_file():
        data = json.loads(pre.read_text())
        if "image_mean" in data and "image_std" in data:
            return tuple(data["image_mean"]), tuple(data["image_std"])
    return CLIP_MEAN, CLIP_STD


class Evaluation:
    """The three task kinds on one model; each returns its metrics as a flat dict."""

    def __init__(self, cfg: EvalConfig, model: FLAVAModel | DualEncoderModel, tokenizer: TextTokenizer | None) -> None:
        self.cfg, self.model, self.tokenizer = cfg, model, tokenizer
        self.device = next(model.parameters()).device
        mean, std = normalisation(cfg.checkpoint)
        self.transform = FLAVAImageTransform(ImageTransformConfig(model.config.image.image_size, 0, mean=mean, std=std))
        self.templates = DEFAULT_TEMPLATES
        if cfg.templates:
            self.templates = [t for t in Path(cfg.templates).read_text(encoding="utf-8").splitlines() if t.strip()]

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
            raise ValueError("text tasks need a tokenizer: set tokenizer= or use a checkpoint exported with one")
        tok, text_cfg = self.tokenizer, self.model.config.text
        pad_to = text_cfg.max_positions if text_cfg.pooler == "last" else None  # SigLIP: the trained length
        ids, mask = pad_sequences([tok.encode(t).input_ids for t in texts], tok.pad_token_id, pad_to)
        return self.model.embed_text(self.model.encode_text(ids.to(self.device), mask.to(self.device))).float()

    def labelled_images(self, path: str | None, key: str) -> tuple[ImageFolder, list[str]]:
        if not path:
            raise ValueError(f"this task needs {key}= (a folder with one subfolder of images per class)")
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
        accuracy = (zero_shot_logits(img, classes).argmax(1) == labels).float().mean().item()
        return {task: accuracy, f"{task}/chance": 1 / len(names)}

    def retrieval(self, task: str, name: str) -> dict[str, float]:
        p = self.cfg.pairs
        src = (Manifest(p) if p.endswith((".jsonl", ".csv", ".json")) else TarShards(p)) if p else None
        src = src or TarShards(shapes_dataset().val_pairs)
        n = min(self.cfg.samples, len(src))
        pixels, captions = [], []
        for i in range(n):
            rec = src[i]
            try:
                pixels.append(self.transform(decode_image(rec))["image"])
                captions.append(decode_text(rec))
            except ValueError as e:
                raise ValueError(f"pair {rec.key!r} of {p or 'the shapes pairs'}: {e}") from None
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
                raise ValueError(f"train classes {train_names} differ from evaluation classes {test_names}")
            x, y = self.image_features(train, len(train))
        cut = int(len(x) * 2 / 3)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.cfg.seed)).to(x.device)
        x, y = x[order], y[order]
        probe = linear_probe(x[:cut], y[:cut], x[cut:], y[cut:])
        xt, yt = self.image_features(test, self.cfg.samples)
        logits = ((xt - probe["mean"]) / probe["std"]) @ probe["weight"].T + probe["bias"]
        return {task: (logits.argmax(1) == yt).float().mean().item(), f"{task}/weight_decay": probe["weight_decay"]}


def evaluate(cfg: EvalConfig) -> dict[str, Any]:
    """Load, run every task, print the table and write ``out``; returns the results."""
    torch.manual_seed(cfg.seed)
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device=cuda, but no CUDA device is visible: use device=auto or device=cpu")
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
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


def main(argv: list[str] | None = None) -> int:
    args = recipe_arg_parser(__doc__).parse_intermixed_args(argv)

    def run() -> int:
        evaluate(load_config(args.config, args.overrides))
        return 0

    return run_cli(run, debug_enabled(args))


if __name__ == "__main__":
    sys.exit(main())
