"""Labelled data for finetuning and evaluation: user formats and tasks built on the built-in dataset.

A labelled source returns :class:`~mmkit.data.sources.Record` objects with ``label`` set (and
``image`` / ``text`` as the task needs); :class:`ClassificationDataset` turns them into samples
and :func:`collate_classification` into batches for :class:`~mmkit.models.FLAVAForClassification`.

Built-in tasks (:class:`ShapesTask`), all read from the shapes shards, labels parsed from the
caption of the first group of objects:

* ``color`` (image, 6 classes), ``count`` (image, 3 classes), ``shape`` (image, 3 classes);
* ``entailment`` (image + text, 2 classes): the true caption (1) or the caption with its first
  colour word replaced by another colour (0), chosen per sample with a fixed seed.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmkit.data.builtin import COLORS, COUNT_WORDS, SHAPES
from mmkit.data.collators import pad_sequences
from mmkit.data.sources import Record, Source, TarShards, decode_image, decode_text

COLOR_NAMES = tuple(COLORS)
TASKS = {"color": COLOR_NAMES, "count": ("1", "2", "3"), "shape": SHAPES, "entailment": ("no", "yes")}


def parse_first_group(caption: str) -> dict[str, str]:
    """``"two small red circles ..."`` -> ``{"count": "2", "size": "small", "color": "red", "shape": "circle"}``."""
    words = caption.split()
    counts = {w: str(n) for n, w in COUNT_WORDS.items()}
    if len(words) < 4 or words[0] not in counts or words[2] not in COLORS:
        raise ValueError(f"not a shapes caption: {caption!r}")
    return {"count": counts[words[0]], "size": words[1], "color": words[2], "shape": words[3].rstrip("s")}


class ShapesTask(Source):
    """A classification task over the built-in shapes shards (see the module docs).

    Args:
        paths: shapes tar shards (``shapes_dataset().train_pairs`` or ``.val_pairs``).
        task: ``"color"``, ``"count"``, ``"shape"`` or ``"entailment"``.
        seed: for the entailment negatives.
    """

    def __init__(self, paths, task: str, seed: int = 0) -> None:
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        self.name, self.task, self.seed = f"shapes-{task}", task, seed
        self.pairs = TarShards(paths, name=self.name)
        self.classes = TASKS[task]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> Record:
        rec = self.pairs[i]
        caption = decode_text(rec)
        first = parse_first_group(caption)
        if self.task == "entailment":
            rng = random.Random(self.seed * 1_000_003 + i)
            if rng.random() < 0.5:
                other = rng.choice([c for c in COLOR_NAMES if c != first["color"]])
                words = caption.split()
                words[2] = other
                return Record(key=rec.key, image=rec.image, text=" ".join(words), label=0)
            return Record(key=rec.key, image=rec.image, text=caption, label=1)
        label = self.classes.index(first[self.task])
        return Record(key=rec.key, image=rec.image, text=caption, label=label)


class LabeledText(Source):
    """Text classification / regression / sentence pairs from CSV or JSONL.

    Args:
        path: ``.csv`` (header row) or ``.jsonl``.
        text_column, text_pair_column (optional, GLUE-style pairs), label_column.
        labels: class names in id order; None: labels are ints (classification) or floats (regression).
    """

    def __init__(
        self,
        path: str | Path,
        text_column: str = "text",
        label_column: str = "label",
        text_pair_column: str | None = None,
        labels: Sequence[str] | None = None,
        name: str = "text",
    ) -> None:
        self.name, self.path = name, Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"data file {self.path} does not exist")
        if self.path.suffix.lower() == ".csv":
            with open(self.path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        else:
            rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
        for col in filter(None, (text_column, label_column, text_pair_column)):
            if rows and col not in rows[0]:
                raise KeyError(f"{self.path} has no column {col!r} (columns: {', '.join(rows[0])})")
        index = {n: i for i, n in enumerate(labels)} if labels else None
        self._rows: list[tuple[str, str | None, Any]] = []
        for r in rows:
            raw = r[label_column]
            label = index[str(raw)] if index is not None else (float(raw) if "." in str(raw) else int(raw))
            self._rows.append((r[text_column], r.get(text_pair_column) if text_pair_column else None, label))
        self._check_not_empty(str(self.path))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Record:
        text, pair, label = self._rows[i]
        return Record(key=f"{self.path.name}:{i}", text=text, label=label, meta={"text_pair": pair})


class ClassificationDataset(Dataset):
    """Samples ``{"image"?, "input_ids"?, "token_type_ids"?, "label"}`` for a modality.

    Args:
        source: records with ``label``. modality: ``"image"``, ``"text"`` or ``"multimodal"``.
        image_transform: e.g. :class:`~mmkit.data.FLAVAImageTransform` (its ``"image"`` output is used).
        tokenizer: a :class:`~mmkit.tokenizers.TextTokenizer` (text and multimodal).
    """

    def __init__(self, source: Source, modality: str, image_transform=None, tokenizer=None) -> None:
        self.source, self.modality = source, modality
        self.image_transform, self.tokenizer = image_transform, tokenizer

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.source[i]
        out: dict[str, Any] = {"label": torch.tensor(rec.label)}
        if self.modality in ("image", "multimodal"):
            out["image"] = self.image_transform(decode_image(rec))["image"]
        if self.modality in ("text", "multimodal"):
            pair = rec.meta.get("text_pair")
            if pair:
                enc = self.tokenizer.tokenizer.encode(decode_text(rec), pair)
                out["input_ids"] = torch.tensor(enc.ids)
                out["token_type_ids"] = torch.tensor(enc.type_ids)
            else:
                out["input_ids"] = self.tokenizer.encode(decode_text(rec)).input_ids
        return out


def collate_classification(samples: Sequence[dict[str, Any]], pad_token_id: int = 0) -> dict[str, Tensor]:
    """Stack images, pad texts (``attention_mask`` 1 = token), stack labels."""
    batch: dict[str, Tensor] = {"labels": torch.stack([s["label"] for s in samples])}
    if "image" in samples[0]:
        batch["pixel_values"] = torch.stack([s["image"] for s in samples])
    if "input_ids" in samples[0]:
        batch["input_ids"], batch["attention_mask"] = pad_sequences([s["input_ids"] for s in samples], pad_token_id)
        if "token_type_ids" in samples[0]:
            batch["token_type_ids"], _ = pad_sequences([s["token_type_ids"] for s in samples], 0)
    return batch
