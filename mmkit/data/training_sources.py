"""A recipe's data sources: the streamed-or-indexed choice made once, and a start line for each.

A :class:`TrainingSource` resolves one source's files when it is made (so a missing shard or a URL
given to index mode fails before step 1), tells in one line what will be read (:meth:`describe`),
and builds its loader: :func:`~mmkit.data.streaming.make_stream_loader` when streamed,
:func:`~mmkit.data.loader.make_loader` over :class:`~mmkit.data.sources.TarShards` /
:class:`~mmkit.data.sources.TextLines` when indexed. :func:`heldout_source` reads held-out pairs from
a local path or any URL the training data may come from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from mmkit.data.loader import SampleDataset, make_loader
from mmkit.data.loader_options import LoaderOptions
from mmkit.data.shard_reading import iter_samples
from mmkit.data.sources import Record, Source, TarShards, TextLines
from mmkit.data.streaming import is_url, make_stream_loader, open_shard, read_token_info, resolve_shards
from mmkit.utils.errors import InputError

__all__ = ["HeldOutRecords", "TrainingSource", "heldout_source"]


def _where(patterns: Sequence[str]) -> str:
    shown = ", ".join(str(p) for p in patterns[:2])
    return shown + (f" (+{len(patterns) - 2} more)" if len(patterns) > 2 else "")


class TrainingSource:
    """One training source (``kind`` ``pair`` / ``image``: tar shards; ``text``: text files).

    Args:
        patterns: paths, brace patterns, globs; URLs (``s3://``, ``gs://``, ``http(s)://``) when streamed.
        kind: ``"pair"``, ``"image"`` or ``"text"``.
        name: the source's name in reports and checkpoints (``pairs``, ``images``, ``text``).
        streaming: read front to back (any size, local or remote) instead of indexing every header at start.
        storage_options: ``fsspec`` options of a remote filesystem.

    Raises:
        InputError: a URL in index mode (set ``data.streaming=true`` to stream it).
        FileNotFoundError: a pattern matches nothing.
    """

    def __init__(
        self,
        patterns: Sequence[str],
        kind: str,
        name: str,
        *,
        streaming: bool,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.patterns = [str(p) for p in patterns]
        self.kind, self.name, self.streaming = kind, name, streaming
        self.storage_options = storage_options or None
        self.shards = None
        self.source: Source | None = None
        if streaming:
            self.shards = resolve_shards(self.patterns, self.storage_options)
            return
        urls = [p for p in self.patterns if is_url(p)]
        if urls:
            raise InputError(
                f"data source {name!r}: {urls[0]} is a URL, and index mode (data.streaming=false) reads local "
                "files only: set data.streaming=true to stream it"
            )
        self.source = (
            TextLines(self.patterns, name=name)
            if kind == "text"
            else TarShards(self.patterns, require_text=kind == "pair", name=name)
        )

    @property
    def token_info(self) -> dict | None:
        """The tokenizer record of shards with cached image ids (streamed: judged by the first shard)."""
        if self.kind == "text":
            return None
        if self.shards is not None:
            return read_token_info(self.shards[0], self.storage_options)
        return getattr(self.source, "token_info", None)

    def cached_ids(self, random_crop: bool = False) -> dict | None:
        """The tokenizer record of this source's cached image ids (``python -m mmkit.data.token_cache``), or None.

        Raises:
            InputError: with ``random_crop``: the ids were made from a centre crop.
        """
        info = self.token_info
        if info is not None and random_crop:
            raise InputError(
                f"{self.name}: cached token ids were made from a centre crop; with data.random_crop=true the "
                "encoder image would show another crop than its targets. Set data.random_crop=false or "
                "data.cached_tokens=false (tokenize in the loop)"
            )
        return info

    @property
    def num_samples(self) -> int | None:
        """Samples, when known: indexed sources count them; streamed ones when a sizes file lists every shard."""
        if self.source is not None:
            return len(self.source)
        counts = [s.samples for s in self.shards]
        return sum(counts) if all(c is not None for c in counts) else None

    def describe(self) -> str:
        """``data pairs: 4 tar shards, 8000 samples, streamed from s3://bucket/pairs-{0000..0003}.tar``."""
        files = len(self.shards) if self.shards is not None else len(self.source.paths)
        unit = "text file" if self.kind == "text" else "tar shard"
        n = self.num_samples
        samples = f"{n} {'lines' if self.kind == 'text' else 'samples'}" if n is not None else "samples not listed"
        how = "streamed" if self.streaming else "indexed"
        return f"data {self.name}: {files} {unit}{'s' * (files != 1)}, {samples}, {how} from {_where(self.patterns)}"

    def loader(
        self,
        collator: Callable,
        options: LoaderOptions,
        *,
        tokenizer: Any = None,
        image_transform: Callable | None = None,
        image_tokens: bool = False,
    ):
        """A loader of this source's batches.

        Args:
            collator: a :mod:`mmkit.data.collators` collator (called with ``generator=``).
            options: the run's :class:`~mmkit.data.loader_options.LoaderOptions` (a streamed source reads
                remote shards with this source's own ``storage_options``).
            tokenizer: used for the ``pair`` / ``text`` kinds only.
            image_transform, image_tokens: as :class:`~mmkit.data.loader.SampleMaker`'s.
        """
        tok = tokenizer if self.kind in ("pair", "text") else None
        if self.shards is not None:
            options = dataclasses.replace(options, storage_options=self.storage_options)
            return make_stream_loader(
                self.shards,
                self.kind,
                collator,
                options,
                name=self.name,
                tokenizer=tok,
                image_transform=image_transform,
                image_tokens=image_tokens,
            )
        seed = options.seed
        dataset = SampleDataset(self.source, self.kind, image_transform, tok, seed=seed, image_tokens=image_tokens)
        return make_loader(dataset, collator, options)


class HeldOutRecords(Source):
    """The first ``limit`` samples of tar shards read front to back once and kept in memory (held-out
    pairs are small); samples a shard lacks parts of are kept as records with ``meta["error"]``, so an
    evaluation reports them as skipped, as it does for indexed shards.

    Attributes: ``paths``: the shard URLs read. Raises ``FileNotFoundError`` when a pattern matches nothing.
    """

    def __init__(
        self, patterns: Sequence[str], limit: int, storage_options: dict[str, Any] | None = None, name: str = "val"
    ) -> None:
        self.name = name
        shards = resolve_shards([str(p) for p in patterns], storage_options)
        self.paths = [s.url for s in shards]
        self.records: list[Record] = []
        for shard in shards:
            if len(self.records) >= limit:
                break
            with open_shard(shard.url, storage_options) as f:
                for _, record in iter_samples(f, shard.name):
                    self.records.append(record)
                    if len(self.records) >= limit:
                        break
        self._check_not_empty(_where(self.paths))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Record:
        return self.records[i]


def heldout_source(
    patterns: Sequence[str], limit: int, storage_options: dict[str, Any] | None = None, name: str = "val"
) -> Source:
    """Held-out pairs: local shards indexed (:class:`TarShards`), shards behind URLs read once up to
    ``limit`` samples (:class:`HeldOutRecords`). Either way ``source[i]`` is the ``i``-th sample in
    shard order."""
    if any(is_url(str(p)) for p in patterns):
        return HeldOutRecords(patterns, limit, storage_options, name)
    return TarShards(list(patterns), name=name)
