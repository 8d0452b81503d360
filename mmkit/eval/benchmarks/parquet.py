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
from collections.abc import Iterator
from pathlib import Path

from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample
from mmkit.utils.bounded import over_limit, parse_json
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

    def __init__(
        self,
        path: str | Path,
        split: str = "test",
        image_column: str = "image",
        label_column: str | None = None,
        text_column: str | None = None,
    ) -> None:
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
            for c, want in ((image_column, "image"), (label_column, "label"), (text_column, "text")):
                problem = column_problem(meta.schema_arrow, c, want) if c else None
                if problem:
                    raise BenchmarkFormatError(f, problem)
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
                    too_large = over_limit(f"row {row - 1}'s image", len(data))
                    if too_large:
                        yield Sample(key, None, error=too_large)
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


def _is_image_type(t) -> bool:
    import pyarrow as pa

    binary = (pa.types.is_binary, pa.types.is_large_binary)
    if any(f(t) for f in binary):
        return True
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0 and any(f(t.field("bytes").type) for f in binary)


def _is_label_type(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t)


def _is_text_type(t) -> bool:
    import pyarrow as pa

    strings = (pa.types.is_string, pa.types.is_large_string)
    if any(f(t) for f in strings):
        return True
    listed = pa.types.is_list(t) or pa.types.is_large_list(t)
    return listed and any(f(t.value_type) for f in strings)


#: what each role of a column may hold, in words and as a test of its arrow type
_COLUMN_TYPES = {
    "image": ("binary (the encoded file) or the datasets Image struct {bytes, path}", _is_image_type),
    "label": ("integer class ids", _is_label_type),
    "text": ("a string or a list of strings", _is_text_type),
}


def column_problem(schema, column: str, role: str) -> str | None:
    """Why ``column`` of a parquet ``schema`` cannot serve as the ``role`` column (``"image"``, ``"label"``,
    ``"text"``): missing, or of another type (naming the type and what was expected); None when it can."""
    if column not in schema.names:
        return f"has no column {column!r} (columns: {', '.join(sorted(schema.names))})"
    want, test = _COLUMN_TYPES[role]
    found = schema.field(column).type
    if not test(found):
        return f"its {role} column {column!r} holds {found}, expected {want}"
    return None


def _class_names(metadata: dict | None, label_column: str | None, path: Path) -> list[str] | None:
    """``ClassLabel`` names from the ``huggingface`` schema metadata, if the file records them."""
    if not label_column or not metadata or b"huggingface" not in metadata:
        return None
    try:
        features = parse_json(metadata[b"huggingface"], "metadata").get("info", {}).get("features", {})
    except (InputError, AttributeError):
        raise BenchmarkFormatError(path, "its 'huggingface' schema metadata is not JSON") from None
    feature = features.get(label_column) if isinstance(features, dict) else None
    names = feature.get("names") if isinstance(feature, dict) else None
    if names is not None and not isinstance(names, list):
        raise BenchmarkFormatError(path, f"its ClassLabel names of {label_column!r} are not a list")
    return [str(n).replace("_", " ") for n in names] if names else None
