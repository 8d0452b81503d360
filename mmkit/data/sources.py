"""Data sources in the formats users already have, as indexed, random-access record lists.

Every source is built from files on local disk and indexed once at construction (tar
headers, manifest rows, directory listings, line offsets): a missing path or an empty
source is an error *then*, naming the path. ``source[i]`` returns a :class:`Record` of raw
bytes / text; decoding happens in the transforms, where a corrupt record is skipped and
counted instead of crashing the run.

Why an index instead of a sequential ``webdataset`` pipeline: exact resume. With an index,
the loader's position is one integer per source (restored by ``StatefulDataLoader``), the
order is a seeded permutation, and ranks / workers take deterministic disjoint slices of it.
The tar files are in WebDataset layout (``key.jpg|png|webp`` + ``key.txt|json``; the rules are in
:mod:`mmkit.data.formats`), read with the standard library's ``tarfile``; brace patterns are
expanded with ``braceexpand``.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmkit.data.formats import IMAGE_EXTENSIONS, TOKENIZER_META, TOKENS_EXT, image_member, split_member_name
from mmkit.data.formats import read_token_ids as read_token_ids  # its home before mmkit.data.formats

TEXT_EXTENSIONS = (".txt", ".json", ".cls")


@dataclass
class Record:
    """One raw sample. ``image`` is encoded bytes, ``text`` a caption / sentence, ``label`` a class id
    (a float for regression, a soft-score list for VQA-style targets)."""

    key: str
    image: bytes | None = None
    text: str | None = None
    label: int | float | list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def read_table(path: str | Path, required: tuple[str | None, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a ``.csv`` (header row) or ``.jsonl`` (one JSON object per line) file, as dicts.

    Args:
        path: the file. required: columns every row must have (``None`` entries are ignored).

    Raises:
        FileNotFoundError: no such file. ValueError: a line that is not JSON (named by number).
        KeyError: a required column is missing (the message lists the columns there are).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n} is not valid JSON: {e}") from e
    for n, row in enumerate(rows, 1):
        for col in required:
            if col is not None and col not in row:
                raise KeyError(f"{path} row {n} has no column {col!r} (columns: {', '.join(row)})")
    return rows


def expand_paths(patterns: str | Path | list[str | Path]) -> list[Path]:
    """Expand brace patterns (``pairs-{000000..000099}.tar``) and globs; every result must exist."""
    from braceexpand import braceexpand

    if isinstance(patterns, str | Path):
        patterns = [patterns]
    out: list[Path] = []
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            # glob.glob, not Path.glob: absolute patterns (/data/pairs-*.tar) must work too
            matches = sorted(map(Path, glob.glob(item))) if any(c in item for c in "*?[") else [Path(item)]
            if not matches:
                raise FileNotFoundError(f"no file matches {item!r}")
            out.extend(matches)
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise FileNotFoundError(f"missing data path(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return out


class Source:
    """Base class: ``name``, ``len(source)``, ``source[i] -> Record``."""

    name: str = "source"

    def __len__(self) -> int:
        raise NotImplementedError

    def __getitem__(self, i: int) -> Record:
        raise NotImplementedError

    def _check_not_empty(self, where: str) -> None:
        if len(self) == 0:
            raise ValueError(f"data source {self.name!r} is empty: nothing usable in {where}")


class _FileCache:
    """Open file handles, one set per process (DataLoader workers re-open theirs)."""

    def __init__(self) -> None:
        self._pid = -1
        self._files: dict[Path, Any] = {}

    def read(self, path: Path, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():
            self._pid, self._files = os.getpid(), {}
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        f.seek(offset)
        return f.read(size)

    def __getstate__(self) -> dict:
        return {"_pid": -1, "_files": {}}


class TarShards(Source):
    """Image-text pairs (or images) in WebDataset-layout tar shards.

    A sample is the group of members sharing a key (the file name up to its first dot, see
    :func:`~mmkit.data.formats.split_member_name`): ``key.jpg|jpeg|png|webp`` for the image and
    ``key.txt`` (the caption) or ``key.json`` (``caption_field`` of a JSON object). Samples whose
    image *or* caption member is missing are left out and counted in ``incomplete``.

    Shards written by ``python -m mmkit.tokenizers.cache`` also hold ``key.tokens.npy`` (the image's
    dVAE token ids, returned in ``record.meta["tokens_bytes"]``; decode them with
    :func:`~mmkit.data.formats.read_token_ids`) and a ``__tokenizer__.json`` that says which
    tokenizer made them; ``token_info`` is that record when every shard has the same one and every
    sample its ids, else None.

    Args:
        paths: shard paths, brace patterns or globs.
        caption_field: JSON field holding the caption.
        require_text: pairs (True) or images only (False).
        name: the source's name in reports.
    """

    def __init__(
        self,
        paths: str | Path | list[str | Path],
        caption_field: str = "caption",
        require_text: bool = True,
        name: str = "pairs",
    ) -> None:
        self.name = name
        self.paths = expand_paths(paths)
        self.caption_field = caption_field
        self.require_text = require_text
        self._index: list[tuple[int, str, tuple[int, int], tuple[int, int, str] | None, tuple[int, int] | None]] = []
        self.incomplete: list[str] = []
        metas: list[dict | None] = []
        for shard_id, path in enumerate(self.paths):
            meta = None
            try:
                with tarfile.open(path, "r:") as tar:
                    groups: dict[str, dict[str, tarfile.TarInfo]] = {}
                    for m in tar:
                        if not m.isfile():
                            continue
                        if m.name.rsplit("/", 1)[-1] == TOKENIZER_META:
                            meta = json.load(tar.extractfile(m))
                            continue
                        key, ext = split_member_name(m.name)
                        groups.setdefault(key, {})[ext] = m
            except tarfile.TarError as e:
                raise ValueError(f"{path} is not a readable tar shard: {e}") from e
            for key, members in groups.items():
                image = image_member(members)
                text = next(((members[e], e) for e in (".txt", ".json") if e in members), None)
                if image is None or (self.require_text and text is None):
                    self.incomplete.append(f"{path.name}:{key}")
                    continue
                text_loc = None if text is None else (text[0].offset_data, text[0].size, text[1])
                tokens = members.get(TOKENS_EXT)
                tokens_loc = None if tokens is None else (tokens.offset_data, tokens.size)
                self._index.append((shard_id, key, (image.offset_data, image.size), text_loc, tokens_loc))
            metas.append(meta)
        all_tokens = bool(self._index) and all(entry[4] is not None for entry in self._index)
        same = all(m is not None and m == metas[0] for m in metas)
        self.token_info: dict | None = metas[0] if (all_tokens and same) else None
        self._files = _FileCache()
        self._check_not_empty(", ".join(str(p) for p in self.paths[:3]))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Record:
        shard_id, key, (off, size), text_loc, tokens_loc = self._index[i]
        path = self.paths[shard_id]
        record = Record(key=f"{path.name}:{key}", image=self._files.read(path, off, size))
        if tokens_loc is not None:
            record.meta["tokens_bytes"] = self._files.read(path, *tokens_loc)
        if text_loc is not None:
            t_off, t_size, ext = text_loc
            raw = self._files.read(path, t_off, t_size)
            record.meta["text_bytes"] = raw
            record.meta["text_format"] = ext
            record.meta["caption_field"] = self.caption_field
        return record


class Manifest(Source):
    """Image-text pairs listed in a JSONL or CSV manifest.

    Args:
        path: ``.jsonl`` (one JSON object per line) or ``.csv`` (with a header row).
        image_column: column with the image path (relative paths resolve against ``root``,
            default the manifest's folder).
        caption_column: column with the caption.
    """

    def __init__(
        self,
        path: str | Path,
        image_column: str = "image",
        caption_column: str = "caption",
        root: str | Path | None = None,
        name: str = "pairs",
    ) -> None:
        self.name = name
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"manifest {self.path} does not exist")
        self.root = Path(root) if root is not None else self.path.parent
        rows = read_table(self.path, required=(image_column,))
        if rows and caption_column not in rows[0]:  # later rows may lack it: skipped as bad records
            raise KeyError(f"{self.path} has no column {caption_column!r} (columns: {', '.join(rows[0])})")
        self._rows = [(str(r[image_column]), r.get(caption_column)) for r in rows]
        self._check_not_empty(str(self.path))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Record:
        image_path, caption = self._rows[i]
        path = Path(image_path) if Path(image_path).is_absolute() else self.root / image_path
        try:
            data = path.read_bytes()
        except OSError as e:
            return Record(key=image_path, image=None, text=caption, meta={"error": f"cannot read image: {e}"})
        return Record(key=image_path, image=data, text=None if caption is None else str(caption))


class ImageFolder(Source):
    """Images under a folder (recursively). With ``labels=True`` the first-level subfolders are
    classes (sorted names -> ids 0..C-1, in ``classes``)."""

    def __init__(self, root: str | Path, labels: bool = False, name: str = "images") -> None:
        self.name = name
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image folder {self.root} does not exist")
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        self.classes: list[str] = []
        self._labels: list[int | None] = [None] * len(files)
        if labels:
            self.classes = sorted({p.relative_to(self.root).parts[0] for p in files if p.parent != self.root})
            ids = {c: i for i, c in enumerate(self.classes)}
            files = [p for p in files if p.parent != self.root]
            self._labels = [ids[p.relative_to(self.root).parts[0]] for p in files]
        self._files = files
        self._check_not_empty(str(self.root))

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, i: int) -> Record:
        path = self._files[i]
        return Record(key=str(path.relative_to(self.root)), image=path.read_bytes(), label=self._labels[i])


class TextLines(Source):
    """Text for MLM: plain-text files (one document or sentence per line) or JSONL (``text_field``).

    Blank lines are not samples. Lines are read as bytes, so a line that is not UTF-8 is
    reported by the transform instead of failing the whole file.
    """

    def __init__(self, paths: str | Path | list[str | Path], text_field: str = "text", name: str = "text") -> None:
        self.name = name
        self.paths = expand_paths(paths)
        self.text_field = text_field
        self._index: list[tuple[int, int, int]] = []
        for file_id, path in enumerate(self.paths):
            offset = 0
            with open(path, "rb") as f:
                for line in f:
                    if line.strip():
                        self._index.append((file_id, offset, len(line)))
                    offset += len(line)
        self._files = _FileCache()
        self._check_not_empty(", ".join(str(p) for p in self.paths[:3]))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Record:
        file_id, offset, size = self._index[i]
        path = self.paths[file_id]
        raw = self._files.read(path, offset, size)
        fmt = ".json" if path.suffix.lower() in (".jsonl", ".json") else ".txt"
        return Record(
            key=f"{path.name}:{offset}",
            meta={"text_bytes": raw, "text_format": fmt, "caption_field": self.text_field},
        )


def decode_text(record: Record) -> str:
    """The record's text: ``record.text``, or its raw bytes decoded as UTF-8 (``.txt``) or JSON.

    Raises:
        ValueError: not UTF-8, invalid JSON, a missing field, or empty after stripping.
    """
    if record.text is None and "text_bytes" in record.meta:
        raw: bytes = record.meta["text_bytes"]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"text is not UTF-8 ({e.reason} at byte {e.start})") from None
        if record.meta.get("text_format") == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"invalid JSON: {e}") from None
            field_name = record.meta.get("caption_field", "caption")
            if not isinstance(obj, dict) or field_name not in obj:
                raise ValueError(f"JSON has no {field_name!r} field")
            text = str(obj[field_name])
        record.text = text
    text = (record.text or "").strip()
    if not text:
        raise ValueError("empty text")
    return text


def decode_image(record: Record):
    """The record's image as an RGB ``PIL.Image`` (fully decoded, so truncation is caught here)."""
    from PIL import Image

    if record.image is None:
        raise ValueError(record.meta.get("error", "no image"))
    try:
        with Image.open(io.BytesIO(record.image)) as im:
            im.load()
            return im.convert("RGB")
    except Exception as e:  # PIL raises many types for bad data
        raise ValueError(f"cannot decode image ({type(e).__name__}: {e})") from None
