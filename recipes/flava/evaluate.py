"""Evaluate a FLAVA checkpoint without finetuning: zero-shot classification, retrieval, linear probe.

    python recipes/flava/evaluate.py --checkpoint runs/demo/final --out runs/demo/eval.json
    python recipes/flava/evaluate.py --checkpoint runs/demo/final --tasks retrieval,linear_probe:count

On your own data:

    python recipes/flava/evaluate.py --checkpoint CKPT --tasks zero_shot --images val/ [--templates t.txt]
    python recipes/flava/evaluate.py --checkpoint CKPT --tasks retrieval --pairs pairs.jsonl
    python recipes/flava/evaluate.py --checkpoint CKPT --tasks linear_probe --train-images train/ --images val/

* ``zero_shot``: class prompts through the text encoder (a CLIP-style template ensemble: the
  default list, or ``--templates`` with one ``{}`` template per line), images through the image
  encoder, cosine similarity; accuracy. Classes are the subfolders of ``--images`` (``_`` read as a
  space), or a built-in task: ``zero_shot:<color|count|shape>``.
* ``retrieval``: image->text and text->image R@1/5/10 over ``--pairs`` (a JSONL/CSV manifest with
  ``image`` and ``caption`` columns, or WebDataset tar shards), default the built-in held-out pairs.
* ``linear_probe``: logistic regression on frozen image CLS features (after the final LayerNorm),
  L2 strength swept on a validation split carved from ``--train-images`` (class subfolders),
  accuracy on ``--images``; or a built-in task ``linear_probe:<color|count|shape>``.
Results go to a JSON file (``--out``) and a readable table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
from mmkit.data.sources import decode_image, decode_text
from mmkit.data.tasks import TASKS, ClassificationDataset, ShapesTask, collate_classification
from mmkit.eval import DEFAULT_TEMPLATES, class_embeddings, linear_probe, retrieval_recall, zero_shot_logits
from mmkit.models import FLAVAConfig, flava_model_for_classification
from mmkit.tokenizers import TextTokenizer

TEMPLATES = {
    "color": ("a picture of something {}.", "{} shapes", "{}"),
    "count": ("{} shapes", "a picture of {} objects.", "{}"),
    "shape": ("a picture of a {}.", "{}s", "{}"),
}
COUNT_WORDS = {"1": "one", "2": "two", "3": "three"}


@torch.no_grad()
def image_features(model, source, n: int, transform, batch: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen image CLS features ``(n, D)`` (after the final LayerNorm) and labels ``(n,)``, on the model's device."""
    device = next(model.parameters()).device
    ds = ClassificationDataset(source, "image", transform)
    feats, labels = [], []
    for s in tqdm(range(0, min(n, len(ds)), batch), desc="image features", leave=False, disable=None):
        b = collate_classification([ds[i] for i in range(s, min(n, len(ds), s + batch))])
        feats.append(model.model.encode_image(b["pixel_values"].to(device)).last_hidden_state[:, 0].float())
        labels.append(b["labels"].to(device))
    return torch.cat(feats), torch.cat(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="pretraining export dir (with tokenizer/) or transformers dir; "
                                             "omit for a randomly initialised tiny model")  # fmt: skip
    parser.add_argument("--config", help="without --checkpoint: config.json of the randomly initialised model "
                                         "(default: the tiny preset)")  # fmt: skip
    parser.add_argument("--tokenizer", help="tokenizer dir/file (default: <checkpoint>/tokenizer)")
    parser.add_argument("--tasks", default="zero_shot:color,retrieval,linear_probe:count",
                        help="comma-separated: zero_shot[:<task>], retrieval, linear_probe[:<task>]")  # fmt: skip
    parser.add_argument("--images", help="evaluation images in class subfolders (zero_shot, linear_probe)")
    parser.add_argument("--train-images", help="training images in class subfolders (linear_probe)")
    parser.add_argument("--pairs", help="image-caption pairs for retrieval: .jsonl/.csv manifest or tar shards")
    parser.add_argument("--templates", help="zero-shot prompt templates, one per line with {} for the class")
    parser.add_argument("--samples", type=int, default=1000, help="evaluation images per task (at most)")
    parser.add_argument("--out", help="write results as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    if args.checkpoint and args.config:
        raise ValueError("--config is for a randomly initialised model; a checkpoint brings its own")
    base = None
    if not args.checkpoint:
        base = FLAVAConfig.from_dict(json.loads(Path(args.config).read_text())) if args.config else FLAVAConfig.tiny()
    model = flava_model_for_classification(2, "image", base, checkpoint=args.checkpoint, hidden_dim=8).eval()
    device = torch.device(args.device)
    model = model.to(device)
    tok_path = args.tokenizer or (Path(args.checkpoint) / "tokenizer" if args.checkpoint else None)
    tokenizer = TextTokenizer.from_pretrained(tok_path) if tok_path and Path(tok_path).exists() else None
    cfg = model.model.config
    transform = FLAVAImageTransform(ImageTransformConfig(cfg.image.image_size, 0))
    flava = model.model
    templates = DEFAULT_TEMPLATES
    if args.templates:
        templates = [t for t in Path(args.templates).read_text(encoding="utf-8").splitlines() if t.strip()]

    def embed_texts(texts: list[str]) -> torch.Tensor:
        if tokenizer is None:
            raise ValueError("text tasks need a tokenizer: pass --tokenizer or a checkpoint exported with one")
        ids, mask = pad_sequences([tokenizer.encode(t).input_ids for t in texts], tokenizer.pad_token_id)
        return flava.embed_text(flava.encode_text(ids.to(device), mask.to(device))).float()

    def labelled_images(path: str | None, flag: str) -> tuple[ImageFolder, list[str]]:
        if not path:
            raise ValueError(f"this task needs {flag} (a folder with one subfolder of images per class)")
        folder = ImageFolder(path, labels=True)
        return folder, [c.replace("_", " ") for c in folder.classes]

    results: dict[str, float] = {}
    with torch.no_grad():
        for task in args.tasks.split(","):
            kind, _, name = task.partition(":")
            if name and name not in TEMPLATES:
                raise ValueError(f"unknown built-in task {name!r} in {task!r}; choose one of {sorted(TEMPLATES)}")
            if kind == "zero_shot":
                if name:
                    src = ShapesTask(shapes_dataset().val_pairs, name)
                    names, prompts = [COUNT_WORDS.get(c, c) for c in TASKS[name]], TEMPLATES[name]
                else:
                    src, names = labelled_images(args.images, "--images")
                    prompts = templates
                feats, labels = image_features(model, src, args.samples, transform)
                classes = class_embeddings(names, embed_texts, prompts)
                img = torch.nn.functional.normalize(flava.image_projection(feats), dim=-1)
                results[task] = (zero_shot_logits(img, classes).argmax(1) == labels).float().mean().item()
                results[f"{task}/chance"] = 1 / len(names)
            elif kind == "retrieval":
                if args.pairs:
                    p = args.pairs
                    src = Manifest(p) if p.endswith((".jsonl", ".csv", ".json")) else TarShards(p)
                else:
                    src = TarShards(shapes_dataset().val_pairs)
                n = min(args.samples, len(src))
                pixels, captions = [], []
                for i in range(n):
                    rec = src[i]
                    try:
                        pixels.append(transform(decode_image(rec))["image"])
                        captions.append(decode_text(rec))
                    except ValueError as e:
                        raise ValueError(f"pair {rec.key!r} of {args.pairs or 'the shapes pairs'}: {e}") from None
                chunks = [torch.stack(pixels[s : s + 128]).to(device) for s in range(0, n, 128)]
                feats = torch.cat([flava.encode_image(c).last_hidden_state[:, 0] for c in chunks])
                img = torch.nn.functional.normalize(flava.image_projection(feats), dim=-1)
                txt = torch.cat([embed_texts(captions[s : s + 256]) for s in range(0, n, 256)])
                results.update({f"retrieval/{k}": v for k, v in retrieval_recall(img, txt).items()})
            elif kind == "linear_probe":
                if name:
                    paths = shapes_dataset()
                    train, test = ShapesTask(paths.train_pairs, name), ShapesTask(paths.val_pairs, name)
                    x, y = image_features(model, train, 3000, transform)
                else:
                    train, train_names = labelled_images(args.train_images, "--train-images")
                    test, test_names = labelled_images(args.images, "--images")
                    if train_names != test_names:
                        raise ValueError(f"train classes {train_names} differ from evaluation classes {test_names}")
                    x, y = image_features(model, train, len(train), transform)
                cut = int(len(x) * 2 / 3)
                order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).to(x.device)
                x, y = x[order], y[order]
                probe = linear_probe(x[:cut], y[:cut], x[cut:], y[cut:])
                xt, yt = image_features(model, test, args.samples, transform)
                w, b = probe["weight"], probe["bias"]
                test_acc = ((((xt - probe["mean"]) / probe["std"]) @ w.T + b).argmax(1) == yt).float().mean().item()
                results[task] = test_acc
                results[f"{task}/weight_decay"] = probe["weight_decay"]
            else:
                raise ValueError(f"unknown task {task!r}: use zero_shot[:<name>], retrieval or linear_probe[:<name>]")
    width = max(len(k) for k in results)
    print(f"checkpoint: {args.checkpoint or 'random init (tiny)'}")
    for k, v in results.items():
        print(f"  {k:<{width}}  {v:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
