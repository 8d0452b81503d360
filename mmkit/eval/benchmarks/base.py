"""What every benchmark reader gives: :class:`Sample` s of one split, its class names and templates, a
fingerprint for the feature cache, and one error type for a malformed annotation file.

A reader never loads its set into memory: it lists or indexes the files once and reads each sample
when it is iterated. Images stay encoded (or, for sets shipped as pixel arrays, one small array per
sample) until the feature extractor decodes them; a sample whose image is missing carries the reason
instead, and the extractor counts and names it as a skip.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from mmkit.utils.bounded import read_text_file
from mmkit.utils.errors import InputError


class BenchmarkFormatError(InputError):
    """A benchmark file that cannot be read as its layout: the message names the file and the field."""

    def __init__(self, file: str | Path, problem: str) -> None:
        super().__init__(f"{file}: {problem}")
        self.file = str(file)


@dataclass
class Sample:
    """One evaluation sample.

    Attributes:
        key: unique within its set (a relative path, a tar key, a row or record number).
        image: encoded image bytes, or a decoded ``PIL.Image`` (sets shipped as pixel arrays), or None
            when the image could not be read (``error`` says why).
        label: class index (classification sets).
        captions: the image's captions (retrieval sets; several per image for COCO and Flickr30K).
        error: why the image is missing (a file an annotation names that does not exist, say).
    """

    key: str
    image: Any = None
    label: int | None = None
    captions: tuple[str, ...] | None = None
    error: str | None = None


class BenchmarkSet:
    """One split of one benchmark, as its files ship. Subclasses set :attr:`layout` and implement
    :meth:`__iter__`, :meth:`__len__` and :meth:`files`.

    Attributes:
        path: the dataset's root (file, folder or URL) as given.
        split: the split read (``train``, ``test``, ``val``, ...).
        kind: ``"classification"`` or ``"retrieval"``.
        classnames: class names in label order (classification), or None when the set has none.
        templates: zero-shot prompt templates the set ships (with ``{}``), or None.
    """

    layout: ClassVar[str] = ""
    #: the names a validation split goes by in this layout, tried in order when a linear probe looks for
    #: the dataset's own validation split (none: the layout ships no validation split)
    validation_splits: ClassVar[tuple[str, ...]] = ()

    def __init__(self, path: str | Path, split: str) -> None:
        self.path, self.split = str(path), split
        self.kind = "classification"
        self.classnames: list[str] | None = None
        self.templates: list[str] | None = None

    def __len__(self) -> int:
        raise NotImplementedError

    def size(self) -> int | None:
        """The number of samples when it is known without reading them (None: remote shards, say)."""
        return len(self)

    def __iter__(self) -> Iterator[Sample]:
        raise NotImplementedError

    def files(self) -> Sequence[str | Path]:
        """The files this split is read from (what :meth:`fingerprint` describes)."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """A digest of what would be read: the layout, split, class names and every file's name, size and
        modification time, so a cache keyed by it misses when the data changes."""
        entries = []
        for f in self.files():
            try:
                st = os.stat(f)
                entries.append([str(f), st.st_size, st.st_mtime_ns])
            except OSError:  # a remote file: its name (and the reader's own version info, if any)
                entries.append([str(f)])
        blob = json.dumps([self.layout, self.split, self.classnames, entries], sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def describe(self) -> str:
        n = self.size()
        what = f"{len(self.classnames)} classes" if self.classnames else self.kind
        return f"{self.layout} {self.path} [{self.split}]: {'?' if n is None else f'{n:,}'} samples, {what}"


def read_lines(path: str | Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (a byte-order mark is dropped); a file that is not
    UTF-8, or not a regular file, is one error naming it."""
    text = read_text_file(path)
    return [line.strip() for line in text.splitlines() if line.strip()]


def clean_template(template: str) -> str:
    """A prompt template in mmkit's form: CLIP_benchmark's ``{c}`` becomes ``{}``; exactly one must remain."""
    out = template.replace("{c}", "{}")
    if out.count("{}") != 1:
        raise InputError(f"a template needs exactly one {{}} (or {{c}}) for the class name: {template!r}")
    return out
