"""Parquet files as the Hugging Face hub stores datasets, read with pyarrow one row group at a time.

``path`` is a file, a glob, or a folder; a folder holds the split's files as the hub lays them out:
``data/<split>-00000-of-00004.parquet`` (a repository's own files), ``<split>/0000.parquet`` (the
hub's ``refs/convert/parquet`` branch) or ``<split>-*.parquet``. Columns:

* ``image_column`` (default ``image``): the ``datasets.Image`` feature's struct ``{bytes, path}``
  (the encoded file; a row whose ``bytes`` are null is a sample without an image, skipped and named),
  or plain binary;
* ``label_column`` (classification): integer class ids; the class names come from the
  ``datasets.ClassLabel`` feature recorded in the file's ``huggingface`` schema metadata
  (``info.features.<label_column>.names``) when present;
* ``text_column`` (retrieval): a string, or a list of strings (several captions per image).
"""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample
from mmkit.utils.errors import InputError, MissingError


def _split_files(path: str, split: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        for pattern in (f"data/{split}-*.parquet", f"{split}/*.parquet", f"{split}-*.parquet", f"*/{split}/*.parquet"):
            found = sorted(p.glob(pattern))
            if found:
                return found
        raise MissingError(
            f"no {split!r} parquet files under {p} (looked for data/{split}-*.parquet, {split}/*.parquet, "
            f"{split}-*.parquet): set path to the files themselves"
        )
    found = sorted(Path(f) for f in glob.glob(path))
    if not found:
        raise MissingError(f"no parquet files match {path}")
    return found


class ParquetSet(BenchmarkSet):
    """Rows of Hugging Face-style parquet files (see the module docstring)."""

    layout = "parquet"
    validation_splits = ("validation", "valid", "val")

    def __init__(self, path: str | Path, split: str = "test", image_column: str = "image",
                 label_column: str | None = None, text_column: str | None = None) -> None:  # fmt: skip
        import pyarrow.parquet as pq

        super().__init__(path, split)
        if (label_column is None) == (text_column is None):
            raise InputError("a parquet task needs label_column (classification) or text_column (retrieval), not both")
        self.kind = "classification" if label_column else "retrieval"
        self.image_column, self.label_column, self.text_column = image_column, label_column, text_column
        self.paths = _split_files(str(path), split)
        self.rows = 0
        names = None
        for f in self.paths:
            try:
                meta = pq.ParquetFile(f)
            except Exception as e:  # pyarrow raises ArrowInvalid and friends for a file that is not parquet
                raise BenchmarkFormatError(f, f"not a parquet file ({type(e).__name__}: {e})") from None
            columns = set(meta.schema_arrow.names)
            for c in (image_column, label_column or text_column):
                if c not in columns:
                    raise BenchmarkFormatError(f, f"has no column {c!r} (columns: {', '.join(sorted(columns))})")
            self.rows += meta.metadata.num_rows
            names = names or _class_names(meta.schema_arrow.metadata, label_column, f)
        self.classnames = names

    def __len__(self) -> int:
        return self.rows

    def __iter__(self) -> Iterator[Sample]:
        import pyarrow.parquet as pq

        columns = [self.image_column, self.label_column or self.text_column]
        for f in self.paths:
            pf = pq.ParquetFile(f)
            row = 0
            for group in range(pf.num_row_groups):
                table = pf.read_row_group(group, columns=columns).to_pydict()
                for image, target in zip(table[columns[0]], table[columns[1]], strict=True):
                    key = f"{f.name}:{row}"
                    row += 1
                    data = image.get("bytes") if isinstance(image, dict) else image
                    if data is None:
                        where = image.get("path") if isinstance(image, dict) else None
                        yield Sample(key, None, error=f"row {row - 1} has no image bytes (path {where!r})")
                        continue
                    if self.label_column:
                        if not isinstance(target, int):
                            raise BenchmarkFormatError(
                                f, f"row {row - 1}: {self.label_column} is {target!r}, not a class id"
                            )
                        yield Sample(key, data, label=target)
                    else:
                        captions = (target,) if isinstance(target, str) else tuple(target or ())
                        if not captions or not all(isinstance(c, str) for c in captions):
                            raise BenchmarkFormatError(f, f"row {row - 1}: {self.text_column} holds no caption string")
                        yield Sample(key, data, captions=captions)

    def files(self) -> list[Path]:
        return self.paths


def _class_names(metadata: dict | None, label_column: str | None, path: Path) -> list[str] | None:
    """``ClassLabel`` names from the ``huggingface`` schema metadata, if the file records them."""
    if not label_column or not metadata or b"huggingface" not in metadata:
        return None
    try:
        features = json.loads(metadata[b"huggingface"]).get("info", {}).get("features", {})
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        raise BenchmarkFormatError(path, "its 'huggingface' schema metadata is not JSON") from None
    names = features.get(label_column, {}).get("names") if isinstance(features, dict) else None
    return [str(n).replace("_", " ") for n in names] if names else None
