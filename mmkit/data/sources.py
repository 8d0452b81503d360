"""Data sources in the formats users already have, as indexed, random-access record lists.

Every source is built from files on local disk and indexed once at construction (tar
headers, manifest rows, directory listings, line offsets): a missing path or an empty
source is an error *then*, naming the path. ``source[i]`` returns a :class:`Record` of raw
bytes / text; decoding happens in the loader (:mod:`mmkit.data.decoding`, re-exported here), where a
corrupt record is skipped and counted instead of crashing the run.

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
import logging
import os
from pathlib import Path
from typing import Any

from mmkit.data.decoding import MAX_IMAGE_PIXELS, caption_problem, decode_image, decode_text, peek_jpeg
from mmkit.data.formats import (
    IMAGE_EXTENSIONS,
    TOKENS_EXT,
    image_member,
    read_local,
    sample_counts,
    sample_problem,
)
from mmkit.data.records import Record
from mmkit.data.tar_index import TEXT_EXTS, CompactIndex, scan_shard
from mmkit.utils.bounded import line_spans, over_limit, parse_json, read_sample, read_text_file, regular_file
from mmkit.utils.errors import DataKeyError, InputError, MissingError
from mmkit.utils.paths import inside_root

__all__ = [
    "MAX_IMAGE_PIXELS",
    "ImageFolder",
    "Manifest",
    "Record",
    "Source",
    "TarShards",
    "TextLines",
    "decode_image",
    "decode_text",
    "expand_paths",
    "peek_jpeg",
    "read_table",
]

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS = (".txt", ".json", ".cls")


def read_table(path: str | Path, required: tuple[str | None, ...] = ()) -> list[dict[str, Any]]:
    """Rows of a ``.csv`` (header row) or ``.jsonl`` (one JSON object per line) file, as dicts.

    The file must be UTF-8; a leading byte-order mark is allowed (so the first CSV column is not named
    ``"\\ufeff..."``). JSONL lines are separated by ``\\n`` only: JSON strings may hold other line
    separators (U+2028, ``\\x1c``...) unescaped.

    Args:
        path: the file. required: columns every row must have (``None`` entries are ignored).

    Raises:
        FileNotFoundError: no such file. ValueError: not a regular file, a line that is not a JSON object,
            or not UTF-8 (named by number). KeyError: a required column is missing (the message lists the
            columns there are).
    """
    path = Path(path)
    text = read_text_file(path, "data file")
    if path.suffix.lower() == ".csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text, newline="")))
        except csv.Error as e:  # a field over csv's size limit, a NUL byte
            raise InputError(f"{path} is not a readable CSV file: {e}") from None
    else:
        rows = [parse_json(line, f"{path}:{n}") for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n} is a JSON {type(row).__name__}, not an object of columns")
        for col in required:
            if col is not None and col not in row:
                raise DataKeyError(f"{path} row {n} has no column {col!r} (columns: {', '.join(row)})")
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
                raise MissingError(f"no file matches {item!r}")
            out.extend(matches)
    missing = [str(p) for p in out if not p.exists()]
    if missing:
        raise MissingError(f"missing data path(s): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
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
            raise InputError(f"data source {self.name!r} is empty: nothing usable in {where}")


class _FileCache:
    """Open file handles, one set per process (DataLoader workers re-open theirs)."""

    def __init__(self) -> None:
        self._pid = -1
        self._files: dict[Path, Any] = {}

    def read(self, path: Path, offset: int, size: int) -> bytes:
        if self._pid != os.getpid():  # a forked worker: its copies of the parent's handles are not its own
            self.close()
            self._pid = os.getpid()
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open(path, "rb")
        f.seek(offset)
        return f.read(size)

    def close(self) -> None:
        """Close every handle held (reading again reopens them)."""
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def __del__(self) -> None:
        """A source dropped with handles open closes them now (not the collector, with a ResourceWarning each)."""
        self.close()

    def __getstate__(self) -> dict:
        return {"_pid": -1, "_files": {}}


class TarShards(Source):
    """Image-text pairs (or images) in WebDataset-layout tar shards.

    A sample is a run of consecutive members sharing a key (the file name up to its first dot, see
    :func:`~mmkit.data.formats.split_member_name`), as when the shard is streamed:
    ``key.jpg|jpeg|png|webp`` for the image and ``key.txt`` (the caption) or ``key.json``
    (``caption_field`` of a JSON object). A sample whose image *or* caption member is missing
    (:func:`~mmkit.data.formats.sample_problem`) keeps its place and reads as a record with
    ``meta["error"]`` (a skipped record downstream, as streamed); its name is in ``incomplete``.

    Shards written by ``python -m mmkit.data.token_cache`` also hold ``key.tokens.npy`` (the image's
    dVAE token ids, returned in ``record.meta["tokens_bytes"]``; decode them with
    :func:`~mmkit.data.formats.read_token_ids`) and a ``__tokenizer__.json`` that says which
    tokenizer made them; ``token_info`` is that record when every shard has the same one and every
    sample its ids, else None.

    A truncated shard (cut in a member's data or header, or ending without the tar end-of-archive
    blocks, as an interrupted copy or download leaves it) is indexed up to the cut: the samples whose
    members are whole are used, and ``truncated`` lists ``(shard name, samples indexed before the cut)``
    with a warning in the log, so the loss is visible. Only when no shard has a usable sample is the
    source an error.

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
        self._index = CompactIndex()
        self.incomplete: list[str] = []
        self._errors: dict[int, str] = {}  # index -> why the sample there cannot be used
        self.truncated: list[tuple[str, int]] = []
        self.lost = 0  # samples of truncated shards that could not be indexed (counted as skipped records)
        metas: list[dict | None] = []
        for shard_id, path in enumerate(self.paths):
            groups, problems, meta, cut = scan_shard(path)
            indexed_before = len(self._index)
            for g, (key, members) in enumerate(groups):
                problem = problems.get(g) or sample_problem(members, self.require_text)
                if problem is not None:  # kept in its place: read, it is a skipped record, as when streamed
                    self.incomplete.append(f"{path.name}:{key}")
                    self._errors[len(self._index)] = problem
                    self._index.append(shard_id, key, None, None, None)
                    continue
                text = next(((members[e], e) for e in (".txt", ".json") if e in members), None)
                self._index.append(shard_id, key, image_member(members), text, members.get(TOKENS_EXT))
            if cut is not None:
                kept = len(self._index) - indexed_before
                self.truncated.append((path.name, kept))
                # how many were lost: from a sizes file beside the shard when there is one, else at least one
                known = sample_counts(str(path.parent), [str(path)], read_local).get(str(path))
                self.lost += max(1, known - kept) if known is not None else 1
                logger.warning(
                    "%s is truncated (%s): indexed the %d samples before the cut, the rest of the shard is lost; "
                    "copy or write it again",
                    path,
                    cut,
                    kept,
                )
            metas.append(meta)
        self._index.freeze()
        all_tokens = len(self._index) > len(self._errors) and self._index.all_have_tokens()
        same = all(m is not None and m == metas[0] for m in metas)
        self.token_info: dict | None = metas[0] if (all_tokens and same) else None
        self._files = _FileCache()
        where = ", ".join(str(p) for p in self.paths[:3])
        if self.truncated:
            where += f" (truncated: {', '.join(name for name, _ in self.truncated)})"
        if len(self._index) == len(self._errors):
            raise InputError(f"data source {self.name!r} is empty: nothing usable in {where}")

    def __len__(self) -> int:
        return len(self._index)

    def sample_key(self, i: int) -> str:
        """The key of sample ``i`` in its shard (the member names up to their first dot)."""
        return self._index.key(i)

    def shard_of(self, i: int) -> int:
        """The index in ``paths`` of the shard holding sample ``i``."""
        return int(self._index.shard[i])

    def __getitem__(self, i: int) -> Record:
        ix = self._index
        if not -len(ix) <= i < len(ix):
            raise IndexError(f"sample {i} of a source of {len(ix)}")
        i %= len(ix)
        path = self.paths[int(ix.shard[i])]
        if i in self._errors:
            return Record(key=f"{path.name}:{ix.key(i)}", meta={"error": self._errors[i]})
        record = Record(
            key=f"{path.name}:{ix.key(i)}", image=self._files.read(path, int(ix.image[i, 0]), int(ix.image[i, 1]))
        )
        if ix.tokens[i, 1] >= 0:
            record.meta["tokens_bytes"] = self._files.read(path, int(ix.tokens[i, 0]), int(ix.tokens[i, 1]))
        if ix.text_ext[i] >= 0:
            record.meta["text_bytes"] = self._files.read(path, int(ix.text[i, 0]), int(ix.text[i, 1]))
            record.meta["text_format"] = TEXT_EXTS[ix.text_ext[i]]
            record.meta["caption_field"] = self.caption_field
        return record


class Manifest(Source):
    """Image-text pairs listed in a JSONL or CSV manifest.

    Args:
        path: ``.jsonl`` (one JSON object per line) or ``.csv`` (with a header row).
        image_column: column with the image path, relative to ``root`` (default the manifest's folder).
            An absolute path, or one climbing out of ``root`` with ``..``, is a skipped record naming it
            unless ``allow_outside_root``; the image is read through :func:`~mmkit.utils.bounded.read_sample`
            (regular files only, at most ``max_sample_bytes``).
        caption_column: column with the caption. In a JSONL manifest it must hold a string: a null,
            a number, a list... is a bad record (:func:`decode_text` says which), never its ``str()``.
        allow_outside_root: read image paths outside ``root`` too.
    """

    def __init__(
        self,
        path: str | Path,
        image_column: str = "image",
        caption_column: str = "caption",
        root: str | Path | None = None,
        name: str = "pairs",
        allow_outside_root: bool = False,
    ) -> None:
        self.name = name
        self.path = Path(path)
        regular_file(self.path, "manifest")
        self.root = Path(root) if root is not None else self.path.parent
        self.allow_outside_root = allow_outside_root
        rows = read_table(self.path, required=(image_column,))
        if rows and caption_column not in rows[0]:  # later rows may lack it: skipped as bad records
            raise DataKeyError(f"{self.path} has no column {caption_column!r} (columns: {', '.join(rows[0])})")
        self.caption_column, self.image_column = caption_column, image_column
        csv_file = self.path.suffix.lower() == ".csv"  # a short CSV row has None for its missing cells
        self._rows = [(r[image_column], r.get(caption_column, _MISSING)) for r in rows]
        if csv_file:
            self._rows = [(image, _MISSING if caption is None else caption) for image, caption in self._rows]
        self._check_not_empty(str(self.path))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, i: int) -> Record:
        image_path, caption = self._rows[i]
        meta: dict[str, Any] = {}
        if caption is _MISSING:
            caption, meta["text_error"] = None, f"the row has no {self.caption_column!r} value"
        elif not isinstance(caption, str):
            caption, meta["text_error"] = None, caption_problem(self.caption_column, caption)
        if not isinstance(image_path, str):
            meta["error"] = f"{self.image_column!r} is not a path (got {type(image_path).__name__})"
            return Record(key=f"{self.path.name}:{i + 1}", image=None, text=caption, meta=meta)
        try:
            data = read_sample(inside_root(self.root, image_path, self.allow_outside_root))
        except OSError as e:
            meta["error"] = f"cannot read image: {e}"
            return Record(key=image_path, image=None, text=caption, meta=meta)
        return Record(key=image_path, image=data, text=caption, meta=meta)


def _image_files(root: Path) -> list[Path]:
    """The image files under ``root``, recursively and sorted, following symlinked folders (as torchvision's
    ``ImageFolder`` does; ``Path.rglob`` does not follow them before Python 3.13) but never into a folder
    that is already on the way down from ``root`` (a symlink loop)."""
    found: list[Path] = []
    odd: list[Path] = []
    chains = {os.fspath(root): frozenset({os.path.realpath(root)})}  # folder -> real paths on its way down
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        chain = chains.pop(dirpath)
        keep = []
        for d in dirnames:
            sub = os.path.join(dirpath, d)
            real = os.path.realpath(sub)
            if real in chain:
                logger.warning("not following %s: a symlink loop back to %s", sub, real)
                continue
            chains[sub] = chain | {real}
            keep.append(d)
        dirnames[:] = keep
        for f in filenames:
            p = Path(dirpath, f)
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                (found if p.is_file() else odd).append(p)
    if odd:  # a FIFO would block a reader forever, a device never ends: named, never read
        logger.warning(
            "skipped %d image name(s) that are not regular files (FIFOs, devices, sockets, folders or "
            "broken links): %s",
            len(odd),
            ", ".join(map(str, sorted(odd)[:5])),
        )
    return sorted(found)


class ImageFolder(Source):
    """Images under a folder (recursively, following symlinked folders). With ``labels=True`` the
    first-level subfolders (or symlinks to folders) are classes (sorted names -> ids 0..C-1, in ``classes``)."""

    def __init__(self, root: str | Path, labels: bool = False, name: str = "images") -> None:
        self.name = name
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingError(f"image folder {self.root} does not exist")
        files = _image_files(self.root)
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
        return Record(key=str(path.relative_to(self.root)), image=read_sample(path), label=self._labels[i])


class TextLines(Source):
    """Text for MLM: plain-text files (one document or sentence per line) or JSONL (``text_field``).

    Blank lines are not samples. Lines are read as bytes, so a line that is not UTF-8 is
    reported by the transform instead of failing the whole file; a line over the per-sample byte limit
    (``max_sample_bytes``) is a skipped record, found without holding it in memory.
    """

    def __init__(self, paths: str | Path | list[str | Path], text_field: str = "text", name: str = "text") -> None:
        self.name = name
        self.paths = expand_paths(paths)
        self.text_field = text_field
        self._index: list[tuple[int, int, int]] = []  # (file, offset, size); size -n: a line of n bytes, too long
        for file_id, path in enumerate(self.paths):
            with open(regular_file(path, "text file"), "rb") as f:
                for start, size, line in line_spans(f):
                    self._index.append((file_id, start, size if line is not None else -size))
        self._files = _FileCache()
        self._check_not_empty(", ".join(str(p) for p in self.paths[:3]))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> Record:
        file_id, offset, size = self._index[i]
        path = self.paths[file_id]
        if size < 0:
            return Record(key=f"{path.name}:{offset}", meta={"error": over_limit(f"line at byte {offset}", -size)})
        raw = self._files.read(path, offset, size)
        fmt = ".json" if path.suffix.lower() in (".jsonl", ".json") else ".txt"
        return Record(
            key=f"{path.name}:{offset}",
            meta={"text_bytes": raw, "text_format": fmt, "caption_field": self.text_field},
        )


_MISSING = object()  # a manifest row without the caption column
