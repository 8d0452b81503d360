"""CLIP_benchmark's WebDataset layout (LAION-AI/CLIP_benchmark, ``clip_benchmark/webdataset_builder.py``
writes it; its ``build_wds_dataset`` reads it), local or remote::

    <path>/classnames.txt                          one class name per line, in label order
    <path>/zeroshot_classification_templates.txt   one template per line, ``{c}`` for the class name
    <path>/dataset_type.txt                        optional: ``retrieval`` (else classification)
    <path>/<split>/nshards.txt                     optional: the number of shards N
    <path>/<split>/0.tar .. <N-1>.tar              samples: <key>.webp|png|jpg + <key>.cls (the label
                                                   as decimal text) or <key>.txt (captions, one per line)

The shards are read front to back through mmkit's streaming reader (``mmkit.data.streaming``: local
disk, HTTP(S), S3, GCS with ``storage_options``); a sample is a run of consecutive members sharing a
key. Without ``nshards.txt`` every ``*.tar`` of the split folder is read (local and S3/GCS listings).
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmkit.data.formats import image_member, split_member_name
from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample, clean_template
from mmkit.utils.bounded import read_text_file, regular_file
from mmkit.utils.errors import MissingError


def _join(root: str, *parts: str) -> str:
    return "/".join([root.rstrip("/"), *parts]) if "://" in root else str(Path(root, *parts))


#: the largest remote metadata file read (class names, templates: a few kilobytes)
METADATA_BYTES = 16 << 20


def _read_text(url: str, storage_options: dict | None) -> str | None:
    """A small metadata file's text, or None when it does not exist (a local one that is not a regular file
    or not UTF-8, or a remote one over :data:`METADATA_BYTES`, is one error naming it)."""
    if "://" not in url:
        p = Path(url)
        return read_text_file(p) if p.exists() else None
    import fsspec

    try:
        with fsspec.open(url, "rb", **(storage_options or {})) as f:
            data = f.read(METADATA_BYTES + 1)
    except FileNotFoundError:
        return None
    if len(data) > METADATA_BYTES:
        raise BenchmarkFormatError(url, f"is over {METADATA_BYTES:,} bytes: not a metadata file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BenchmarkFormatError(url, f"is not UTF-8 ({e.reason} at byte {e.start})") from None


class WdsBenchmark(BenchmarkSet):
    """One split of a CLIP_benchmark WebDataset folder (see the module docstring).

    Args:
        path: the dataset folder (local path or URL).
        split: the split folder's name.
        storage_options: ``fsspec`` options for a remote ``path``.
    """

    layout = "wds"
    validation_splits = ("val",)

    def __init__(self, path: str | Path, split: str = "test", storage_options: dict[str, Any] | None = None) -> None:
        from mmkit.data.streaming import resolve_shards

        super().__init__(path, split)
        root, self.storage_options = str(path), storage_options
        kind = (_read_text(_join(root, "dataset_type.txt"), storage_options) or "classification").strip().lower()
        if kind not in ("classification", "retrieval"):
            raise BenchmarkFormatError(
                _join(root, "dataset_type.txt"), f"type {kind!r} is not classification or retrieval"
            )
        self.kind = kind
        nshards = _read_text(_join(root, split, "nshards.txt"), storage_options)
        if nshards is not None:
            try:
                count = int(nshards.strip())
            except ValueError:
                raise BenchmarkFormatError(
                    _join(root, split, "nshards.txt"), f"not a number: {nshards.strip()!r}"
                ) from None
            pattern = _join(root, split, f"{{0..{count - 1}}}.tar")
        elif root.startswith(("http://", "https://")):
            raise MissingError(
                f"no {split!r} shards in {root}: {_join(root, split, 'nshards.txt')} is missing, and HTTP has no "
                "listing to find the *.tar files by"
            )
        else:
            pattern = _join(root, split, "*.tar")
        try:
            self.shards = resolve_shards([pattern], storage_options)
        except FileNotFoundError:
            raise MissingError(f"no {split!r} shards in {root}: expected {pattern}") from None
        if kind == "classification":
            names = _read_text(_join(root, "classnames.txt"), storage_options)
            self.classnames = [n.strip() for n in names.splitlines() if n.strip()] if names else None
            templates = _read_text(_join(root, "zeroshot_classification_templates.txt"), storage_options)
            if templates:
                try:
                    self.templates = [clean_template(t.strip()) for t in templates.splitlines() if t.strip()]
                except ValueError as e:
                    raise BenchmarkFormatError(_join(root, "zeroshot_classification_templates.txt"), str(e)) from None
        self._count: int | None = None

    def size(self) -> int | None:
        if self._count is None and all("://" not in s.url or s.url.startswith("file://") for s in self.shards):
            self._count = sum(_count_local(s.url.removeprefix("file://")) for s in self.shards)
        return self._count

    def __len__(self) -> int:
        n = self.size()
        if n is None:
            raise TypeError("the number of samples of remote shards is known only after reading them")
        return n

    def __iter__(self) -> Iterator[Sample]:
        for _, sample in self.shard(0, 1):
            yield sample

    def shard(self, worker: int, count: int) -> Iterator[tuple[tuple[int, int], Sample]]:
        """This worker's shards (every ``count``-th), as ``((shard, position), sample)``."""
        from mmkit.data.streaming import iter_samples, open_shard

        for i, s in enumerate(self.shards):
            if i % count != worker:
                continue
            with open_shard(s.url, self.storage_options) as f:
                for position, record in iter_samples(f, s.name, require_text=False):
                    yield (i, position), self._sample(record, s.url)

    def _sample(self, record, url: str) -> Sample:
        key, error = record.key, record.meta.get("error")
        if error:
            return Sample(key, None, error=error)
        extra = record.meta.get("extra", {})
        if self.kind == "retrieval":
            raw = record.meta.get("text_bytes")
            if raw is None:
                return Sample(key, None, error="no .txt captions member")
            captions = tuple(c.strip() for c in raw.decode("utf-8", errors="replace").splitlines() if c.strip())
            return Sample(key, record.image, captions=captions) if captions else Sample(key, None, error="no caption")
        if ".cls" not in extra:
            return Sample(key, None, error=f"no .cls label member in {url}")
        try:
            label = int(extra[".cls"].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise BenchmarkFormatError(url, f"{key}.cls is not a class number: {extra['.cls'][:20]!r}") from None
        return Sample(key, record.image, label=label)

    def files(self) -> list[str]:
        return [s.url for s in self.shards]

    def fingerprint(self) -> str:
        import hashlib
        import json

        shards = [[s.url, s.nbytes, s.version] for s in self.shards]
        blob = json.dumps([self.layout, self.split, self.kind, self.classnames, self.templates, shards])
        return hashlib.sha256(blob.encode()).hexdigest()


def _count_local(path: str) -> int:
    """Samples with an image in a local shard: runs of consecutive members sharing a key (headers only)."""
    count, key, members = 0, None, {}
    with tarfile.open(regular_file(path, "shard"), "r:*") as tar:
        for m in tar:
            if not m.isfile():
                continue
            k, ext = split_member_name(m.name)
            if k != key:
                count += key is not None and image_member(members) is not None
                key, members = k, {}
            members[ext] = True
    return count + (key is not None and image_member(members) is not None)
