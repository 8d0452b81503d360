"""The on-disk formats of the tar shards: one home for each rule, shared by readers and writers.

* **WebDataset layout.** A member ``<dir>/<key>.<ext>`` belongs to sample ``<dir>/<key>``: the
  key ends at the first dot of the file name, and everything after it (lower-cased, with its dot)
  is the member's extension, so ``abc.tokens.npy`` is the ``.tokens.npy`` member of ``abc``
  (:func:`split_member_name`). A sample's image is its member with the first extension of
  :data:`IMAGE_EXTENSIONS` present (:func:`image_member`).
* **Token cache.** ``python -m mmkit.data.token_cache`` adds to each sample a ``<key>.tokens.npy``
  member (the ``(h, w)`` token grid of its image as a ``.npy`` array, int16 when the ids fit, else
  int32; :func:`token_ids_to_bytes` / :func:`read_token_ids`) and puts first in the shard a
  ``__tokenizer__.json`` member (:data:`TOKENIZER_META`) recording which tokenizer, input size,
  grid, vocabulary and crop made them (:func:`token_cache_meta`). :class:`~mmkit.data.TarShards`
  reads both; the CLI writes them.

They live here, beside their reader and their writer (:mod:`mmkit.data.token_cache`, which runs the
image tokenizer of ``mmkit.tokenizers``): the tokenizers need nothing of ``mmkit.data``.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any, TypeVar

import torch

from mmkit.utils.bounded import parse_json, read_sample

T = TypeVar("T")

#: image member extensions, in order of preference when a sample has several
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

#: extension of a sample's cached token ids
TOKENS_EXT = ".tokens.npy"
#: name of the member that says which tokenizer made a shard's token ids (the shard's first member)
TOKENIZER_META = "__tokenizer__.json"
#: the crop cached ids are made from (the encoder image must show the same one)
TOKENS_CROP = "center"


def split_member_name(name: str) -> tuple[str, str]:
    """A tar member's sample key and extension: ``"d/abc.Tokens.npy" -> ("d/abc", ".tokens.npy")``.

    The key keeps the member's folder and ends at the first dot of its file name; the extension is
    the rest of the file name, lower-cased, with its leading dot (``""`` when there is no dot).
    """
    base = name.rsplit("/", 1)[-1]
    stem, dot, ext = base.partition(".")
    return name[: len(name) - len(base)] + stem, dot + ext.lower()


def image_member(members: Mapping[str, T]) -> T | None:
    """A sample's image among its members by extension (``{".jpg": member, ...}``), or None."""
    return next((members[e] for e in IMAGE_EXTENSIONS if e in members), None)


def sample_problem(exts: Iterable[str], require_text: bool) -> str | None:
    """Why a sample with members of these extensions cannot be used (no image; with ``require_text``
    no caption), or None. The one rule of both tar readers (indexed and streamed)."""
    exts = set(exts)
    if image_member({e: e for e in exts}) is None:
        return f"no image member (has {', '.join(sorted(exts)) or 'nothing'})"
    if require_text and not exts & {".txt", ".json"}:
        return "no caption member (.txt or .json)"
    return None


def token_cache_meta(fingerprint: str, image_size: int, grid: int, vocab_size: int) -> dict[str, Any]:
    """The ``__tokenizer__.json`` record of cached ids: the tokenizer's fingerprint, its input side,
    the ``grid x grid`` token grid, its vocabulary size and the crop."""
    return {
        "fingerprint": fingerprint,
        "image_size": image_size,
        "grid": [grid, grid],
        "vocab_size": vocab_size,
        "crop": TOKENS_CROP,
    }


def token_ids_to_bytes(ids: torch.Tensor) -> bytes:
    """An ``(h, w)`` token grid -> ``<key>.tokens.npy`` bytes (int16 when every id fits, else int32)."""
    import numpy as np

    dtype = np.int16 if int(ids.max()) < 2**15 else np.int32
    buf = io.BytesIO()
    np.save(buf, ids.cpu().numpy().astype(dtype), allow_pickle=False)
    return buf.getvalue()


def read_token_ids(data: bytes) -> torch.Tensor:
    """``<key>.tokens.npy`` bytes -> ``(h * w,)`` int64 ids, row-major (the ViT's patch order)."""
    import numpy as np

    return torch.from_numpy(np.load(io.BytesIO(data), allow_pickle=False).astype(np.int64)).flatten()


def sample_counts(directory: str, urls: list[str], read: Callable[[str], bytes | None]) -> dict[str, int]:
    """Sample counts from the sizes files writers leave beside their shards, where there are any:
    webdataset's ``sizes.json`` (``{shard name: n}``) or ``_info.json`` (``{"shardlist": [{"url",
    "nsamples"}]}``), or img2dataset's ``<shard stem>_stats.json`` (``{"successes": n}``). An entry that is
    not a count is ignored; a file that is not JSON is an error naming it."""
    out: dict[str, int] = {}
    names = {PurePosixPath(u.split("://", 1)[-1]).name: u for u in urls}
    sizes = _json_file(read, f"{directory}/sizes.json")
    if isinstance(sizes, dict):
        out.update({names[name]: n for name, n in sizes.items() if name in names and _count(n)})
    info = _json_file(read, f"{directory}/_info.json") if len(out) < len(urls) else None
    listed = info.get("shardlist") if isinstance(info, dict) else None
    for entry in listed if isinstance(listed, list) else []:
        name = PurePosixPath(str(entry.get("url", ""))).name if isinstance(entry, dict) else None
        if name in names and _count(entry.get("nsamples")):
            out[names[name]] = entry["nsamples"]
    if len(out) < len(urls):
        for name, url in names.items():
            if url in out:
                continue
            stats = _json_file(read, f"{directory}/{name.split('.')[0]}_stats.json")
            if stats is None:
                break  # img2dataset writes one per shard: if the first is absent, none are there
            if isinstance(stats, dict) and _count(stats.get("successes")):
                out[url] = stats["successes"]
    return out


def _count(n: Any) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n >= 0


def _json_file(read: Callable[[str], bytes | None], path: str) -> Any:
    """A sizes file's JSON, or None when there is none (see :func:`sample_counts`)."""
    data = read(path)
    return parse_json(data, f"{path} (a shard sizes file: fix or remove it)") if data else None


def read_local(path: str) -> bytes | None:
    """A local file's bytes, or None when it cannot be read (a sizes file that is not there)."""
    try:
        return read_sample(path, limit=16 << 20)  # a regular file of at most 16 MiB
    except OSError:
        return None
