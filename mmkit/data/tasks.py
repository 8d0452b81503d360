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

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from mmkit.data.builtin import COLORS, COUNT_WORDS, SHAPES
from mmkit.data.collators import pad_sequences
from mmkit.data.loader import Skipped
from mmkit.data.sources import Record, Source, TarShards, decode_image, decode_text, read_table
from mmkit.data.vqa_answers import build_answer_vocab, vqa_soft_scores
from mmkit.utils.bounded import UnreadableSample, read_sample
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.paths import inside_root

COLOR_NAMES = tuple(COLORS)
TASKS = {"color": COLOR_NAMES, "count": ("1", "2", "3"), "shape": SHAPES, "entailment": ("no", "yes")}


def parse_first_group(caption: str) -> dict[str, str]:
    """``"two small red circles ..."`` -> ``{"count": "2", "size": "small", "color": "red", "shape": "circle"}``."""
    words = caption.split()
    counts = {w: str(n) for n, w in COUNT_WORDS.items()}
    if len(words) < 4 or words[0] not in counts or words[2] not in COLORS:
        raise InputError(f"not a shapes caption: {caption!r}")
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
            raise InputError(f"task must be one of {sorted(TASKS)}, got {task!r}")
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


def parse_labels(
    raw: Sequence[Any], labels: Sequence[str] | None = None, regression: bool = False, where: str = "data"
) -> tuple[list[Any], tuple[str, ...] | None]:
    """Turn a label column into targets.

    Args:
        raw: the column's values. labels: class names in id order (e.g. the training split's, for
            the validation split); None: ints stay class ids, other values become classes in sorted order.
        regression: parse floats instead. where: names the data in errors.

    Returns:
        ``(targets, classes)``; ``classes`` is None for integer ids and regression.
    """
    if regression:
        try:
            return [float(r) for r in raw], None
        except (TypeError, ValueError) as e:
            raise InputError(f"{where}: regression labels must be numbers ({e})") from None
    if labels is None:
        try:
            return [int(str(r)) for r in raw], None
        except ValueError:
            labels = tuple(sorted({str(r) for r in raw}))
    index = {str(name): i for i, name in enumerate(labels)}
    unknown = sorted({str(r) for r in raw} - set(index))
    if unknown:
        raise InputError(f"{where}: labels {unknown[:5]} are not among the classes {list(labels)[:20]}")
    return [index[str(r)] for r in raw], tuple(str(c) for c in labels)


class _Rows(Source):
    """A source over rows held in memory (``self._rows``), each row's target last."""

    _rows: list[tuple]

    def __len__(self) -> int:
        return len(self._rows)

    @property
    def labels(self) -> list[Any]:
        """Every row's target, in order (no record or image is read)."""
        return [row[-1] for row in self._rows]


class LabeledText(_Rows):
    """Text classification / regression / sentence pairs from CSV or JSONL.

    Args:
        path: ``.csv`` (header row) or ``.jsonl``.
        text_column, text_pair_column (optional, GLUE-style pairs), label_column.
        labels: class names in id order (pass the training split's ``classes`` to the validation
            split); None: integer labels are class ids, other labels become sorted classes.
        regression: float targets (STS-B style).

    Attributes: ``classes`` (class names, or None for integer ids and regression).
    """

    def __init__(
        self,
        path: str | Path,
        text_column: str = "text",
        label_column: str = "label",
        text_pair_column: str | None = None,
        labels: Sequence[str] | None = None,
        regression: bool = False,
        name: str = "text",
    ) -> None:
        self.name, self.path = name, Path(path)
        rows = read_table(self.path, required=(text_column, label_column, text_pair_column))
        targets, self.classes = parse_labels([r[label_column] for r in rows], labels, regression, str(self.path))
        self._rows = [
            (str(r[text_column]), str(r[text_pair_column]) if text_pair_column else None, y)
            for r, y in zip(rows, targets, strict=True)
        ]
        self._check_not_empty(str(self.path))

    def __getitem__(self, i: int) -> Record:
        text, pair, label = self._rows[i]
        return Record(key=f"{self.path.name}:{i}", text=text, label=label, meta={"text_pair": pair})


class LabeledPairs(_Rows):
    """Image + text + label from a JSONL/CSV manifest: multimodal classification (entailment,
    hateful-memes-style binary) or VQA as classification over a fixed answer vocabulary.

    Args:
        path: the manifest; image paths resolve against ``root`` (default: the manifest's folder).
        image_column, text_column: the image path and the text (caption, hypothesis or question).
        label_column: the class (as in :class:`LabeledText`); ignored when ``answers_column`` is set.
        labels: class names in id order, or None (see :func:`parse_labels`).
        answers_column: VQA mode: a list of human answers (or an ``{answer: score}`` dict) per row;
            the target is a soft-score vector over ``answer_vocab`` (:func:`vqa_soft_scores`).
        answer_vocab: the answer classes, or how many of the most frequent answers here become the classes
            (None or empty: 3,129, the usual VQA v2 vocabulary size).
        allow_outside_root: read image paths outside ``root`` too (absolute, or climbing out with ``..``);
            otherwise such a row is a skipped record naming it. Images are read through
            :func:`~mmkit.utils.bounded.read_sample` (regular files, at most ``max_sample_bytes``).

    Attributes: ``classes`` (class names / answers, or None for integer ids).
    """

    def __init__(
        self,
        path: str | Path,
        image_column: str = "image",
        text_column: str = "text",
        label_column: str = "label",
        labels: Sequence[str] | None = None,
        answers_column: str | None = None,
        answer_vocab: Sequence[str] | int | None = 3129,
        root: str | Path | None = None,
        name: str = "labeled-pairs",
        allow_outside_root: bool = False,
    ) -> None:
        self.name, self.path = name, Path(path)
        self.root = Path(root) if root is not None else self.path.parent
        self.allow_outside_root = allow_outside_root
        label_col = answers_column or label_column
        rows = read_table(self.path, required=(image_column, text_column, label_col))
        if answers_column:
            if isinstance(answer_vocab, int) or not answer_vocab:
                size = answer_vocab if isinstance(answer_vocab, int) else 3129
                self.classes = build_answer_vocab((r[answers_column] for r in rows), size)
            else:
                self.classes = tuple(answer_vocab)
            targets = [vqa_soft_scores(r[answers_column], self.classes) for r in rows]
            self.unanswerable = sum(1 for t in targets if not any(t))  # no answer in the vocabulary
        else:
            targets, self.classes = parse_labels([r[label_column] for r in rows], labels, where=str(self.path))
        self._rows = [(str(r[image_column]), str(r[text_column]), y) for r, y in zip(rows, targets, strict=True)]
        self._check_not_empty(str(self.path))

    def __getitem__(self, i: int) -> Record:
        image_path, text, label = self._rows[i]
        try:
            data = read_sample(inside_root(self.root, image_path, self.allow_outside_root))
        except UnreadableSample as e:
            raise UnreadableSample(f"{self.path} row {i + 1}: {e}") from None
        except OSError as e:
            raise MissingError(f"{self.path} row {i + 1}: cannot read image {image_path}: {e}") from None
        return Record(key=image_path, image=data, text=text, label=label)


class LabeledRows(_Rows):
    """Labelled samples already read from a benchmark's own files (GLUE, VQA v2, SNLI-VE, Hateful Memes:
    :mod:`mmkit.eval.finetune_tasks`); images stay on disk until a sample is read.

    Args:
        rows: ``(key, text, text_pair, image_path, label)`` per sample; ``text_pair`` and ``image_path``
            may be None. A label is a class id, a float (regression) or ``{class id: soft score}`` (VQA:
            a record's label is then the dense list over ``classes``).
        classes: class names in id order (None for regression).
        name: names the source in skip reports.
        skipped: ``"where: why"`` for each record the reader left out (counted against ``max_bad_fraction``
            by whoever reads it).

    Reading a sample whose image file is missing raises :class:`~mmkit.utils.MissingError` naming it, one
    that is not a regular file or over ``max_sample_bytes`` :class:`~mmkit.utils.bounded.UnreadableSample`
    (the loaders turn either into a counted, named skip).
    """

    def __init__(
        self,
        rows: Sequence[tuple[str, str | None, str | None, str | None, Any]],
        classes: Sequence[str] | None,
        name: str,
        skipped: Sequence[str] = (),
    ) -> None:
        self._rows, self.name = list(rows), name
        self.classes = tuple(classes) if classes is not None else None
        self.skipped = list(skipped)
        if not self._rows:
            why = f" ({len(self.skipped)} skipped, e.g. {self.skipped[0]})" if self.skipped else ""
            raise InputError(f"{name}: no usable record{why}")

    @property
    def keys(self) -> list[str]:
        """Every row's key, in order (e.g. VQA's ``q<question_id>``)."""
        return [row[0] for row in self._rows]

    @property
    def image_paths(self) -> list[str | None]:
        """Every row's image file (None for a text row), in order (no image is read)."""
        return [row[3] for row in self._rows]

    def texts(self) -> list[str]:
        """Every text and text pair, in order (e.g. to learn a vocabulary from)."""
        return [t for row in self._rows for t in row[1:3] if t]

    def __getitem__(self, i: int) -> Record:
        key, text, pair, image_path, label = self._rows[i]
        data = None
        if image_path is not None:
            try:
                data = read_sample(image_path)
            except UnreadableSample as e:
                raise UnreadableSample(f"{self.name} {key}: {e}") from None
            except OSError as e:
                raise MissingError(f"{self.name} {key}: cannot read image {image_path}: {e.strerror or e}") from None
        if isinstance(label, dict):
            dense = [0.0] * len(self.classes or ())
            for c, v in label.items():
                dense[c] = v
            label = dense
        return Record(key=key, image=data, text=text, label=label, meta={"text_pair": pair})


class ClassificationDataset(Dataset):
    """Samples ``{"image"?, "input_ids"?, "token_type_ids"?, "label"}`` for a modality.

    Args:
        source: records with ``label``. modality: ``"image"``, ``"text"`` or ``"multimodal"``.
        image_transform: e.g. :class:`~mmkit.data.ImageTransform` (its ``"image"`` output is used).
        tokenizer: a :class:`~mmkit.tokenizers.TextTokenizer` (text and multimodal).
    """

    def __init__(self, source: Source, modality: str, image_transform=None, tokenizer=None) -> None:
        self.source, self.modality = source, modality
        self.image_transform, self.tokenizer = image_transform, tokenizer

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: int | tuple[int, int, int]) -> dict[str, Any] | Skipped:
        """A sample; indexed by ``i`` (raises on an unreadable record) or by the ``(epoch, batch, i)``
        triples of :func:`~mmkit.data.make_loader` (an unreadable record becomes a :class:`Skipped`)."""
        if isinstance(item, tuple):
            epoch, batch, i = item
            try:
                return {**self[i], "__batch__": (epoch, batch)}
            except (ValueError, OSError) as e:
                return Skipped(getattr(self.source, "name", "data"), f"#{i}", str(e))
        rec = self.source[item]
        label = rec.label
        out: dict[str, Any] = {"label": torch.tensor(label, dtype=torch.float32 if isinstance(label, list) else None)}
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


class ClassificationCollator:
    """:func:`collate_classification` in the collator form :func:`~mmkit.data.make_loader` calls
    (``collator(samples, generator=...)``; classification batches use no randomness)."""

    def __init__(self, pad_token_id: int = 0) -> None:
        self.pad_token_id = pad_token_id

    def __call__(
        self, samples: Sequence[dict[str, Any]], generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        return collate_classification(samples, self.pad_token_id)


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
