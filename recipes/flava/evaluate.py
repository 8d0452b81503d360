"""Evaluate a FLAVA checkpoint without finetuning: zero-shot classification, retrieval, linear probe.

    python recipes/flava/evaluate.py --checkpoint runs/demo/final --out runs/demo/eval.json
    python recipes/flava/evaluate.py --checkpoint runs/demo/final --tasks retrieval,linear_probe:count

On the built-in shapes data:
* ``zero_shot:<color|count|shape>``: class prompts through the text encoder (a CLIP-style template
  ensemble), images through the image encoder, cosine similarity; accuracy.
* ``retrieval``: image->text and text->image R@1/5/10 over the held-out pairs.
* ``linear_probe:<color|count|shape>``: logistic regression on frozen image CLS features (after
  the final LayerNorm), L2 strength swept on a validation split carved from the training pairs.
Results go to a JSON file and a readable table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from mmkit.data import FLAVAImageTransform, ImageTransformConfig, pad_sequences, shapes_dataset
from mmkit.data.tasks import TASKS, ClassificationDataset, ShapesTask, collate_classification
from mmkit.eval import class_embeddings, linear_probe, retrieval_recall, zero_shot_logits
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
    ds = ClassificationDataset(source, "image", transform)
    feats, labels = [], []
    for s in range(0, min(n, len(ds)), batch):
        b = collate_classification([ds[i] for i in range(s, min(n, len(ds), s + batch))])
        feats.append(model.model.encode_image(b["pixel_values"]).last_hidden_state[:, 0])
        labels.append(b["labels"])
    return torch.cat(feats), torch.cat(labels)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="pretraining export dir (with tokenizer/) or transformers dir; "
                                             "omit for a randomly initialised tiny model")  # fmt: skip
    parser.add_argument("--tokenizer", help="tokenizer dir/file (default: <checkpoint>/tokenizer)")
    parser.add_argument("--tasks", default="zero_shot:color,retrieval,linear_probe:count")
    parser.add_argument("--samples", type=int, default=1000, help="held-out images per task")
    parser.add_argument("--out", help="write results as JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    base = None if args.checkpoint else FLAVAConfig.tiny()
    model = flava_model_for_classification(2, "image", base, checkpoint=args.checkpoint, hidden_dim=8).eval()
    tok_path = args.tokenizer or (Path(args.checkpoint) / "tokenizer" if args.checkpoint else None)
    tokenizer = TextTokenizer.from_pretrained(tok_path) if tok_path and Path(tok_path).exists() else None
    cfg = model.model.config
    transform = FLAVAImageTransform(ImageTransformConfig(cfg.image.image_size, 0))
    paths = shapes_dataset()
    flava = model.model

    def embed_texts(texts: list[str]) -> torch.Tensor:
        if tokenizer is None:
            raise ValueError("text tasks need a tokenizer: pass --tokenizer or a checkpoint exported with one")
        ids, mask = pad_sequences([tokenizer.encode(t).input_ids for t in texts], tokenizer.pad_token_id)
        return flava.embed_text(flava.encode_text(ids, mask))

    results: dict[str, float] = {}
    with torch.no_grad():
        for task in args.tasks.split(","):
            kind, _, name = task.partition(":")
            if kind == "zero_shot":
                src = ShapesTask(paths.val_pairs, name)
                feats, labels = image_features(model, src, args.samples, transform)
                names = [COUNT_WORDS.get(c, c) for c in TASKS[name]]
                classes = class_embeddings(names, embed_texts, TEMPLATES[name])
                img = torch.nn.functional.normalize(flava.image_projection(feats), dim=-1)
                results[task] = (zero_shot_logits(img, classes).argmax(1) == labels).float().mean().item()
                results[f"{task}/chance"] = 1 / len(names)
            elif kind == "retrieval":
                src = ShapesTask(paths.val_pairs, "color")
                feats, _ = image_features(model, src, args.samples, transform)
                img = torch.nn.functional.normalize(flava.image_projection(feats), dim=-1)
                captions = [src[i].text for i in range(len(feats))]
                txt = torch.cat([embed_texts(captions[s : s + 256]) for s in range(0, len(captions), 256)])
                results.update({f"retrieval/{k}": v for k, v in retrieval_recall(img, txt).items()})
            elif kind == "linear_probe":
                train = ShapesTask(paths.train_pairs, name)
                x, y = image_features(model, train, 3000, transform)
                probe = linear_probe(x[:2000], y[:2000], x[2000:], y[2000:])
                xt, yt = image_features(model, ShapesTask(paths.val_pairs, name), args.samples, transform)
                w, b = probe["weight"], probe["bias"]
                test_acc = ((((xt - probe["mean"]) / probe["std"]) @ w.T + b).argmax(1) == yt).float().mean().item()
                results[task] = test_acc
                results[f"{task}/weight_decay"] = probe["weight_decay"]
            else:
                raise ValueError(f"unknown task {task!r}: use zero_shot:<name>, retrieval or linear_probe:<name>")
    width = max(len(k) for k in results)
    print(f"checkpoint: {args.checkpoint or 'random init (tiny)'}")
    for k, v in results.items():
        print(f"  {k:<{width}}  {v:.4f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"checkpoint": args.checkpoint, **results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
