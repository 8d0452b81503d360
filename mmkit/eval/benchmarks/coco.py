"""Image-caption sets for retrieval: COCO's caption annotations and Karpathy's split files.

* ``coco``: ``annotations`` (e.g. ``annotations/captions_val2017.json``, relative to ``path``) holds
  ``images[] = {id, file_name}`` and ``annotations[] = {image_id, caption}``; ``images`` is the image
  folder (e.g. ``val2017``). Every image with at least one caption is a sample, its captions in file
  order (COCO val2017: 5,000 images, 25,014 captions).
* ``karpathy``: Karpathy and Fei-Fei's split files (``dataset_coco.json``, ``dataset_flickr30k.json``,
  ``dataset_flickr8k.json``): ``images[] = {filename, split, sentences[] = {raw}}`` and, for COCO,
  ``filepath`` (``val2014`` / ``train2014``). The image is ``<path>/<filepath>/<filename>``, or
  ``<path>/<images>/<filename>`` when ``images`` is given (Flickr30K's file has no ``filepath``). The
  standard test splits: 5,000 COCO / 1,000 Flickr30K images, 5 captions each.

An image an annotation names but the folder lacks, one that is not a regular file or over
``max_sample_bytes``, and one whose name is absolute or climbs out of its folder with ``..`` (unless the
layout key ``allow_outside_root: true``) is a sample without an image (a counted, named skip
downstream); a file that is not JSON, or lacks a field, is a :class:`BenchmarkFormatError` naming the
file and the field.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample
from mmkit.utils.bounded import parse_json, read_sample, read_text_file
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.paths import OutsideRoot, inside_root


def _load_json(path: Path) -> Any:
    if not path.exists():
        raise MissingError(f"annotation file {path} does not exist")
    try:
        return parse_json(read_text_file(path, "annotation file"), "the file")
    except InputError as e:
        raise BenchmarkFormatError(path, str(e).removeprefix("the file is ")) from None


def _field(obj: Any, name: str, path: Path, where: str, kind: type | tuple[type, ...]) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise BenchmarkFormatError(path, f"{where} has no {name!r} field")
    value = obj[name]
    if not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkFormatError(path, f"{where}.{name} must be {names}, got {type(value).__name__}")
    return value


class _Captioned(BenchmarkSet):
    """A list of (relative image path, captions); images read when iterated."""

    def __init__(self, path: str | Path, split: str, allow_outside_root: bool = False) -> None:
        super().__init__(path, split)
        self.kind = "retrieval"
        self.entries: list[tuple[Path, tuple[str, ...]]] = []
        self.outside: dict[int, str] = {}  # entry -> why its image is not read (a path outside the root)
        self.allow_outside_root = allow_outside_root
        self.annotation_file: Path | None = None

    def add(self, folder: Path, name: str, captions: tuple[str, ...]) -> None:
        """An image named by the annotation file, relative to ``folder`` (the root it must stay inside)."""
        try:
            file = inside_root(folder, name, self.allow_outside_root)
        except OutsideRoot as e:
            self.outside[len(self.entries)], file = str(e), Path(folder, name)
        self.entries.append((file, captions))

    def __len__(self) -> int:
        return len(self.entries)

    def num_captions(self) -> int:
        return sum(len(c) for _, c in self.entries)

    def __iter__(self) -> Iterator[Sample]:
        for _, sample in self.shard(0, 1):
            yield sample

    def shard(self, worker: int, count: int) -> Iterator[tuple[int, Sample]]:
        """``(index, sample)`` of every ``count``-th image from ``worker`` on (only those files are read)."""
        for index in range(worker, len(self.entries), count):
            file, captions = self.entries[index]
            key = str(file.relative_to(self.path)) if file.is_relative_to(self.path) else str(file)
            try:
                if index in self.outside:
                    raise OutsideRoot(self.outside[index])
                data = read_sample(file)
            except OSError as e:
                yield index, Sample(key, None, captions=captions, error=f"cannot read {file}: {e.strerror or e}")
                continue
            yield index, Sample(key, data, captions=captions)

    def files(self) -> list[Path]:
        return [self.annotation_file, *(f for f, _ in self.entries)]

    def describe(self) -> str:
        return f"{super().describe()}, {self.num_captions():,} captions"


class CocoCaptions(_Captioned):
    """COCO caption annotations + an image folder (see the module docstring)."""

    layout = "coco"

    def __init__(
        self,
        path: str | Path,
        split: str = "val",
        annotations: str | None = None,
        images: str | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(path, split, allow_outside_root)
        root = Path(path)
        ann = root / (annotations or f"annotations/captions_{split}2017.json")
        folder = root / (images or f"{split}2017")
        data = _load_json(ann)
        self.annotation_file = ann
        listed = _field(data, "images", ann, "the file", list)
        anns = _field(data, "annotations", ann, "the file", list)
        names: dict[Any, str] = {}
        for i, im in enumerate(listed):
            names[_field(im, "id", ann, f"images[{i}]", (int, str))] = _field(im, "file_name", ann, f"images[{i}]", str)
        captions: dict[Any, list[str]] = {}
        for i, a in enumerate(anns):
            image_id = _field(a, "image_id", ann, f"annotations[{i}]", (int, str))
            if image_id not in names:
                raise BenchmarkFormatError(ann, f"annotations[{i}].image_id {image_id!r} is not among images[].id")
            captions.setdefault(image_id, []).append(_field(a, "caption", ann, f"annotations[{i}]", str).strip())
        order = [i for i in names if i in captions]  # images in file order, those with captions
        if not order:
            raise BenchmarkFormatError(ann, "no image has a caption")
        for i in order:
            self.add(folder, names[i], tuple(captions[i]))


class KarpathySplit(_Captioned):
    """One split of a Karpathy split file (see the module docstring)."""

    layout = "karpathy"

    def __init__(
        self,
        path: str | Path,
        split: str = "test",
        annotations: str = "dataset_coco.json",
        images: str | None = None,
        allow_outside_root: bool = False,
    ) -> None:
        super().__init__(path, split, allow_outside_root)
        root = Path(path)
        ann = root / annotations
        data = _load_json(ann)
        self.annotation_file = ann
        listed = _field(data, "images", ann, "the file", list)
        seen_splits = set()
        for i, im in enumerate(listed):
            where = f"images[{i}]"
            image_split = _field(im, "split", ann, where, str)
            seen_splits.add(image_split)
            if image_split != split:
                continue
            name = _field(im, "filename", ann, where, str)
            sentences = _field(im, "sentences", ann, where, list)
            texts = tuple(
                _field(s, "raw", ann, f"{where}.sentences[{j}]", str).strip() for j, s in enumerate(sentences)
            )
            if not texts:
                raise BenchmarkFormatError(ann, f"{where} ({name}) has no sentences")
            if images is not None:
                self.add(root / images, name, texts)
            else:  # COCO's file names its folder (val2014, train2014); Flickr30K's does not
                sub = _field(im, "filepath", ann, where, str) if "filepath" in im else ""
                self.add(root, str(Path(sub, name)), texts)
        if not self.entries:
            raise BenchmarkFormatError(
                ann, f"no image has split {split!r} (the file's splits: {', '.join(sorted(seen_splits)) or 'none'})"
            )
