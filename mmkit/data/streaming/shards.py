"""Which shards a stream reads: patterns expanded to :class:`Shard` s (URL, byte size, sample count,
version), and the fingerprint a resume compares so that it never continues over a changed shard set.

:func:`resolve_shards` expands brace patterns and globs (local, or ``s3://`` / ``gs://`` through
``fsspec``; ``http(s)://`` patterns are brace-expanded only) and records each shard's size in bytes
and, where a sizes file says so, its sample count (webdataset's ``sizes.json`` and ``_info.json``,
img2dataset's ``<shard>_stats.json``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from mmkit.data.formats import read_local, sample_counts
from mmkit.utils.errors import InputError, MissingError

REMOTE_PROTOCOLS = ("http", "https", "s3", "gs", "gcs")


@dataclass(frozen=True)
class Shard:
    """One tar shard: where it is, its size in bytes and, when a sizes file says, its sample count."""

    url: str
    nbytes: int | None = None
    samples: int | None = None
    version: str | None = None  # modification time (local) or ETag / last-modified (object stores)

    @property
    def name(self) -> str:
        return PurePosixPath(self.url.split("://", 1)[-1]).name


def protocol_of(url: str) -> str | None:
    head, sep, _ = url.partition("://")
    return head if sep and head in (*REMOTE_PROTOCOLS, "file") else None


def is_url(path: str) -> bool:
    """Whether ``path`` names a remote object (``s3://``, ``gs://``, ``http(s)://``, ...), not a local file."""
    return protocol_of(str(path)) not in (None, "file")


def filesystem(protocol: str, storage_options: dict[str, Any] | None):
    import fsspec

    try:
        return fsspec.filesystem(protocol, **(storage_options or {}))
    except ImportError as e:
        extra = {"s3": "s3", "gs": "gcs", "gcs": "gcs", "http": "http", "https": "http"}.get(protocol, protocol)
        raise ImportError(
            f"reading {protocol}:// shards needs an extra package: pip install 'mmkit[{extra}]' ({e})"
        ) from e


def resolve_shards(patterns: str | Sequence[str], storage_options: dict[str, Any] | None = None) -> list[Shard]:
    """Expand shard patterns into :class:`Shard` s (sorted within each glob), with byte sizes and sample counts.

    Args:
        patterns: paths or URLs; brace patterns (``pairs-{000000..000099}.tar``) everywhere, globs
            (``*``, ``?``, ``[...]``) on local disk, S3 and GCS.
        storage_options: ``fsspec`` options of the remote filesystem (e.g. ``{"endpoint_url": ...}``
            for an S3-compatible store; credentials come from the usual environment otherwise).

    Raises:
        FileNotFoundError: a pattern matches nothing, naming it.
    """
    from braceexpand import braceexpand

    if isinstance(patterns, str):
        patterns = [patterns]
    urls: list[str] = []
    for pattern in patterns:
        for item in braceexpand(str(pattern)):
            urls.extend(_expand_one(item, storage_options))
    if not urls:
        raise MissingError(f"no shards in {list(patterns)}")
    return _describe(urls, storage_options)


def _expand_one(item: str, storage_options: dict[str, Any] | None) -> list[str]:
    protocol = protocol_of(item)
    has_glob = any(c in item for c in "*?[")
    if protocol is None or protocol == "file":
        import glob

        path = item.removeprefix("file://")
        matches = sorted(glob.glob(path)) if has_glob else ([path] if os.path.exists(path) else [])
        if not matches:
            raise MissingError(f"no shard matches {item!r}")
        return matches
    if not has_glob:
        return [item]
    if protocol in ("http", "https"):
        raise InputError(f"{item!r}: HTTP has no listing to glob; write the shard names as a brace pattern")
    fs = filesystem(protocol, storage_options)
    matches = sorted(fs.glob(item))
    if not matches:
        raise MissingError(f"no shard matches {item!r}")
    return [m if "://" in m else f"{protocol}://{m}" for m in matches]


def _describe(urls: list[str], storage_options: dict[str, Any] | None) -> list[Shard]:
    """Byte sizes (one listing per directory, one HEAD where the listing has none) and sample counts."""
    sizes: dict[str, int | None] = {}
    versions: dict[str, str | None] = {}
    counts: dict[str, int] = {}
    by_dir: dict[str, list[str]] = {}
    for url in urls:
        by_dir.setdefault(url.rsplit("/", 1)[0] if "/" in url else ".", []).append(url)
    for directory, members in by_dir.items():
        protocol = protocol_of(members[0])
        if protocol is None:
            for url in members:
                if not os.path.isfile(url):
                    raise MissingError(f"shard {url} does not exist")
                st = os.stat(url)
                sizes[url], versions[url] = st.st_size, str(st.st_mtime_ns)
            counts.update(sample_counts(directory, members, read_local))
            continue
        fs = filesystem(protocol, storage_options)
        listing: dict[str, dict[str, Any]] = {}
        if protocol not in ("http", "https"):
            try:
                for entry in fs.ls(directory, detail=True):
                    name = entry["name"]
                    listing[name if "://" in name else f"{protocol}://{name}"] = entry
            except (FileNotFoundError, OSError):
                listing = {}
        for url in members:
            entry = listing.get(url)
            if entry is None or entry.get("size") is None:
                try:
                    entry = fs.info(url)
                except FileNotFoundError:
                    raise MissingError(f"shard {url} does not exist") from None
            sizes[url], versions[url] = entry.get("size"), _version(entry)
        counts.update(sample_counts(directory, members, lambda u, fs=fs: _remote_reader(fs, u)))
    return [Shard(u, sizes[u], counts.get(u), versions.get(u)) for u in urls]


def _version(entry: dict[str, Any]) -> str | None:
    for key in ("ETag", "etag", "LastModified", "last_modified", "mtime", "updated", "Last-Modified"):
        if entry.get(key) is not None:
            return str(entry[key]).strip('"')
    return None


def _remote_reader(fs, url: str) -> bytes | None:
    try:
        with fs.open(url, "rb") as f:
            return f.read(16 << 20)  # a sizes file: a few kilobytes (a longer one is cut and fails as JSON)
    except (FileNotFoundError, OSError):
        return None


def shards_fingerprint(shards: Sequence[Shard]) -> list[list[Any]]:
    """What a resume compares: each shard's URL, byte size and version (modification time or ETag), in order."""
    return [[s.url, s.nbytes, s.version] for s in shards]


def check_same_shards(saved: list[list[Any]], shards: Sequence[Shard], name: str) -> None:
    """Raise ``ValueError`` naming the difference when ``shards`` are not the ones ``saved`` describes."""
    now = shards_fingerprint(shards)
    if [list(x) for x in saved] == now:
        return
    old_urls, new_urls = [x[0] for x in saved], [x[0] for x in now]
    problems = []
    gone, added = [u for u in old_urls if u not in new_urls], [u for u in new_urls if u not in old_urls]
    if gone:
        problems.append(f"{len(gone)} shard(s) no longer there ({', '.join(gone[:3])})")
    if added:
        problems.append(f"{len(added)} new shard(s) ({', '.join(added[:3])})")
    old = {x[0]: list(x[1:]) for x in saved}
    changed = [x[0] for x in now if x[0] in old and old[x[0]] != list(x[1:])]
    if changed:
        problems.append(f"{len(changed)} shard(s) changed (size or modification time: {', '.join(changed[:3])})")
    if not problems:
        problems.append("the shard order changed")
    raise InputError(
        f"source {name!r}: the shards differ from the checkpoint's: {'; '.join(problems)}. Resume over the "
        "same shards, or start a new run (checkpoint.resume=none)"
    )
