"""Opening one shard as a binary file (local, HTTP(S), S3, GCS) and reading the token-cache record a
cached shard starts with; reading its samples is :mod:`mmkit.data.shard_reading`'s job."""

from __future__ import annotations

import os
import tarfile
from typing import Any

from mmkit.data.formats import TOKENIZER_META
from mmkit.data.streaming.shards import Shard, filesystem, protocol_of
from mmkit.data.tar_index import META_BYTES
from mmkit.utils.bounded import kind_of, parse_json, read_member
from mmkit.utils.errors import InputError


def open_shard(url: str, storage_options: dict[str, Any] | None = None):
    """A binary file object on the shard: local files directly (regular files only), remote ones through
    ``fsspec`` (HTTP as a stream, object stores with read-ahead)."""
    protocol = protocol_of(url)
    if protocol is None or protocol == "file":
        path = url.removeprefix("file://")
        f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
        kind = kind_of(os.fstat(f.fileno()).st_mode)
        if kind is not None:  # a FIFO would block the reader forever, a device never ends
            f.close()
            raise InputError(f"shard {path} is {kind}, not a file")
        return f
    fs = filesystem(protocol, storage_options)
    if protocol in ("http", "https"):
        return fs.open(url, "rb", block_size=0)  # a plain stream: no range requests needed
    return fs.open(url, "rb", block_size=8 << 20, cache_type="readahead")


def read_token_info(shard: Shard, storage_options: dict[str, Any] | None = None) -> dict | None:
    """The ``__tokenizer__.json`` record a token-cached shard starts with, or None."""
    with open_shard(shard.url, storage_options) as f, tarfile.open(fileobj=f, mode="r|*") as tar:
        first = next(iter(tar), None)
        if first is not None and first.name.rsplit("/", 1)[-1] == TOKENIZER_META:
            return parse_json(read_member(tar, first, META_BYTES), f"{shard.url}: {first.name}")
    return None
