"""Streaming WebDataset shards from local disk, HTTP(S), S3 or GCS: flat memory, exact and elastic resume.

Index mode (:class:`~mmkit.data.sources.TarShards`) reads every tar header at start and keeps a
Python tuple per sample in every process: minutes and gigabytes at the scale of CC12M or PMD. Here
start-up costs one listing per shard directory and memory is one shuffle window per data worker,
whatever the number of samples.

How it reads
    * :func:`resolve_shards` expands brace patterns and globs (local, or ``s3://`` / ``gs://``
      through ``fsspec``; ``http(s)://`` patterns are brace-expanded only) and records each shard's
      size in bytes and, where a sizes file says so, its sample count (webdataset's ``sizes.json``
      and ``_info.json``, img2dataset's ``<shard>_stats.json``).
    * The reading unit is a :class:`Piece`: the samples of one shard at positions ``q >= start``
      with ``q % stride == phase``, minus ``skip``. A sample's position is its ordinal in the shard
      (the n-th group of members sharing a key), so a piece names its samples without reading them.
    * Every epoch the pieces are permuted with ``seed + epoch`` and dealt to the *slots* (one slot
      per data worker of every rank: ``rank * workers + worker``). With fewer shards than slots,
      each shard is split into ``stride`` interleaved pieces so that every slot has work.
    * A slot reads up to ``interleave`` of its pieces at once, one sample from each in turn
      (:class:`Interleave`), into a window of ``buffer_size`` samples, permutes the window with a
      generator seeded by ``(seed, slot, epoch, window)`` and yields it; batches are made in the
      worker (:class:`~mmkit.data.loader.CollateWithSkips`). An epoch's first window has a random
      size (between half the buffer and all of it), so window boundaries move from epoch to epoch:
      with fixed boundaries the same groups of samples would meet in every epoch, and a small set
      trained for many epochs sees the same in-batch negatives again and again (the demo's held-out
      R@1 fell from 0.35 to 0.19 with a 1000-sample buffer).

Resume
    Each batch carries its slot's state after it (a few integers and the window's *spans*: which
    positions of which piece it holds), and :class:`StreamingLoader` keeps the latest per slot.
    *Exact*: the same ranks and workers re-read the current window from its first position,
    permute it with the same seed and skip what was already yielded, so the run sees the batches
    the uninterrupted run would have seen. *Elastic*: :func:`plan_elastic` turns the states of all
    old slots into the work that is left of every epoch any slot had begun (each slot's remaining
    pieces, the yielded part of its window added to ``skip``; whole shares of slots that had not
    reached that epoch) and deals it to the new slots, splitting pieces by stride where there are
    fewer pieces than slots. No sample of those epochs is read twice and none is left out;
    later epochs are dealt to the new slots from scratch. The shard list (URLs, byte sizes) is part
    of the state: a resume over a changed shard set is an error naming the difference.

Why not ``StatefulDataLoader`` here (index mode uses it): its worker snapshots can only be loaded
into the same number of workers, and their layout is internal; a state that travels with each
batch can be redistributed. The workers are a plain ``torch.utils.data.DataLoader``'s, and the
worker that resumes a slot is chosen so that batches come out in the saved round-robin order.
"""

from __future__ import annotations

import logging
import math
import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmkit.data.formats import (
    TOKENIZER_META,
    read_local,
    sample_counts,
)
from mmkit.data.seeding import mix_seed
from mmkit.data.shard_reading import iter_lines, iter_samples
from mmkit.data.sources import Record, Source
from mmkit.data.tar_index import META_BYTES
from mmkit.utils.bounded import kind_of, parse_json, read_member
from mmkit.utils.errors import InputError, MissingError

logger = logging.getLogger(__name__)

REMOTE_PROTOCOLS = ("http", "https", "s3", "gs", "gcs")
FORMATS = ("tar", "lines")  # WebDataset tar shards; text files (one sample per non-blank line)


# ------------------------------------------------------------------------------------------
# Shards
# ------------------------------------------------------------------------------------------
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


def _protocol(url: str) -> str | None:
    head, sep, _ = url.partition("://")
    return head if sep and head in (*REMOTE_PROTOCOLS, "file") else None


def is_url(path: str) -> bool:
    """Whether ``path`` names a remote object (``s3://``, ``gs://``, ``http(s)://``, ...), not a local file."""
    return _protocol(str(path)) not in (None, "file")


def _filesystem(protocol: str, storage_options: dict[str, Any] | None):
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
    protocol = _protocol(item)
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
    fs = _filesystem(protocol, storage_options)
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
        protocol = _protocol(members[0])
        if protocol is None:
            for url in members:
                if not os.path.isfile(url):
                    raise MissingError(f"shard {url} does not exist")
                st = os.stat(url)
                sizes[url], versions[url] = st.st_size, str(st.st_mtime_ns)
            counts.update(sample_counts(directory, members, read_local))
            continue
        fs = _filesystem(protocol, storage_options)
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


# ------------------------------------------------------------------------------------------
# Opening one shard (reading it: mmkit.data.shard_reading)
# ------------------------------------------------------------------------------------------
def open_shard(url: str, storage_options: dict[str, Any] | None = None):
    """A binary file object on the shard: local files directly (regular files only), remote ones through
    ``fsspec`` (HTTP as a stream, object stores with read-ahead)."""
    protocol = _protocol(url)
    if protocol is None or protocol == "file":
        path = url.removeprefix("file://")
        f = os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
        kind = kind_of(os.fstat(f.fileno()).st_mode)
        if kind is not None:  # a FIFO would block the reader forever, a device never ends
            f.close()
            raise InputError(f"shard {path} is {kind}, not a file")
        return f
    fs = _filesystem(protocol, storage_options)
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


# ------------------------------------------------------------------------------------------
# Pieces, epochs and plans
# ------------------------------------------------------------------------------------------
@dataclass
class Piece:
    """The samples of shard ``shard`` at positions ``q >= start`` with ``q % stride == phase``, except ``skip``."""

    shard: int
    start: int = 0
    stride: int = 1
    phase: int = 0
    skip: list[int] = field(default_factory=list)

    def holds(self, q: int) -> bool:
        return q >= self.start and q % self.stride == self.phase and q not in self._skip_set

    @property
    def _skip_set(self) -> frozenset[int]:
        cached = self.__dict__.get("_skips")
        if cached is None or len(cached) != len(self.skip):
            cached = self.__dict__["_skips"] = frozenset(self.skip)
        return cached

    def positions(self, first: int, last: int) -> list[int]:
        """The positions this piece holds in ``[first, last]`` (no reading: shards have no holes)."""
        q = first + (self.phase - first) % self.stride
        return [p for p in range(q, last + 1, self.stride) if self.holds(p)]

    def split(self, parts: int) -> list[Piece]:
        """``parts`` pieces that together hold exactly this one's samples."""
        return [
            Piece(self.shard, self.start, self.stride * parts, self.phase + self.stride * i,
                  [q for q in self.skip if q % (self.stride * parts) == self.phase + self.stride * i])
            for i in range(parts)
        ]  # fmt: skip

    def to_list(self) -> list[Any]:
        return [self.shard, self.start, self.stride, self.phase, list(self.skip)]

    @classmethod
    def from_list(cls, x: Sequence[Any]) -> Piece:
        return cls(int(x[0]), int(x[1]), int(x[2]), int(x[3]), [int(q) for q in x[4]])


def epoch_shares(num_shards: int, num_slots: int, seed: int, epoch: int) -> list[list[Piece]]:
    """Each slot's pieces for a fresh epoch: the shards (split by stride when fewer than the slots)
    in a permutation seeded by ``seed + epoch``, dealt round-robin."""
    stride = max(1, math.ceil(num_slots / num_shards))
    units = [Piece(s, 0, stride, j) for s in range(num_shards) for j in range(stride)]
    order = torch.randperm(len(units), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
    return [[units[i] for i in order[slot::num_slots]] for slot in range(num_slots)]


@dataclass
class SlotState:
    """Where one slot is. ``queue``: ``[epoch, pieces]`` still to read, in order, the first one
    from the current window's first position; after it, fresh epochs from ``next_epoch``.
    ``spans``: the current window as ``[index into queue[0]'s pieces, first, last]``; ``yielded``:
    how many of its samples have been handed out; ``window``: its number (seeds its permutation);
    ``batches``: batches made (seeds their randomness)."""

    slot: int
    num_slots: int
    next_epoch: int = 0
    queue: list[list[Any]] = field(default_factory=list)
    spans: list[list[int]] = field(default_factory=list)
    yielded: int = 0
    window: int = 0
    batches: int = 0
    interleave: int = 1  # pieces read at once (see Interleave): needed to replay a window's order

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "queue": [[e, [p.to_list() for p in ps]] for e, ps in self.queue]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlotState:
        state = cls(**{**d, "queue": []})
        state.queue = [[int(e), [Piece.from_list(p) for p in ps]] for e, ps in d["queue"]]
        return state


def _window_positions(state: SlotState) -> list[tuple[int, int]]:
    """``(shard, position)`` of every sample in the slot's current window, in reading order: the
    interleaving is replayed on the positions the spans name, without reading anything."""
    if not state.queue:
        return []
    pieces = state.queue[0][1]
    spans = {i: (first, last) for i, first, last in state.spans}
    ids = {id(p): i for i, p in enumerate(pieces)}

    def positions(piece: Piece) -> Iterator[tuple[int, None]]:
        i = ids[id(piece)]
        return iter([(q, None) for q in piece.positions(*spans[i])] if i in spans else [])

    n = sum(len(pieces[i].positions(first, last)) for i, (first, last) in spans.items())
    return [(piece.shard, q) for piece, q, _ in _take(Interleave(list(pieces), state.interleave, positions), n)]


def window_permutation(seed: int, state: SlotState, epoch: int, n: int) -> list[int]:
    g = torch.Generator().manual_seed(mix_seed(seed, state.slot, state.num_slots, epoch, state.window))
    return torch.randperm(n, generator=g).tolist()


def remaining_work(states: Sequence[SlotState], num_shards: int, seed: int) -> tuple[dict[int, list[Piece]], int]:
    """What is left to read of every epoch any slot has begun: ``({epoch: pieces}, first fresh epoch)``.

    A slot contributes, for an epoch in its queue, its pieces from the window start with the part of
    the window it already handed out added to ``skip``; for a fresh epoch it had not begun, its
    whole share; nothing for an epoch it finished.
    """
    num_slots = states[0].num_slots
    if sorted(s.slot for s in states) != list(range(num_slots)):
        raise InputError(f"elastic resume needs the state of every one of the {num_slots} old slots")
    fresh = max(s.next_epoch for s in states)
    first = min([s.next_epoch for s in states] + [e for s in states for e, _ in s.queue])
    left: dict[int, list[Piece]] = {}
    for s in sorted(states, key=lambda s: s.slot):
        queued = {e: ps for e, ps in s.queue}
        for epoch in range(first, fresh):
            if epoch in queued:
                pieces = [Piece.from_list(p.to_list()) for p in queued[epoch]]
                if s.queue and epoch == s.queue[0][0] and s.yielded:
                    positions = _window_positions(s)
                    perm = window_permutation(seed, s, epoch, len(positions))
                    done = {positions[i] for i in perm[: s.yielded]}
                    for p in pieces:
                        p.skip = sorted({*p.skip, *(q for sh, q in done if sh == p.shard and p.holds(q))})
                left.setdefault(epoch, []).extend(pieces)
            elif epoch >= s.next_epoch:  # a fresh epoch this slot had not started
                left.setdefault(epoch, []).extend(epoch_shares(num_shards, num_slots, seed, epoch)[s.slot])
    return {e: ps for e, ps in left.items() if ps}, fresh


def plan_elastic(states: Sequence[SlotState], num_shards: int, seed: int, num_slots: int) -> list[SlotState]:
    """New slot states for ``num_slots`` slots that read exactly what the old ``states`` left."""
    left, fresh = remaining_work(states, num_shards, seed)
    new = [SlotState(slot=i, num_slots=num_slots, next_epoch=fresh) for i in range(num_slots)]
    for epoch in sorted(left):
        pieces = left[epoch]
        if len(pieces) < num_slots:
            parts = math.ceil(num_slots / len(pieces))
            pieces = [q for p in pieces for q in p.split(parts)]
        for i, state in enumerate(new):
            mine = pieces[i::num_slots]
            if mine:
                state.queue.append([epoch, mine])
    return new


# ------------------------------------------------------------------------------------------
# Reading a slot
# ------------------------------------------------------------------------------------------
def _first_held(piece: Piece, q: int) -> int:
    q += (piece.phase - q) % piece.stride
    while q in piece._skip_set:
        q += piece.stride
    return q


@dataclass
class ReadOptions:
    """How slots read their shards: the caption's JSON field, whether a sample needs a caption, the
    ``fsspec`` options, the format (``tar`` shards or text ``lines``) and how many pieces are read at once."""

    caption_field: str = "caption"
    require_text: bool = True
    storage_options: dict[str, Any] | None = None
    fmt: str = "tar"
    interleave: int = 4

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise InputError(f"fmt must be one of {FORMATS}, got {self.fmt!r}")
        if self.interleave < 1:
            raise InputError(f"interleave must be >= 1, got {self.interleave}")


class SlotReader:
    """A slot's endless sample stream: its queued pieces, then fresh epochs, through shuffle windows.

    ``state`` is updated before each sample is yielded, so after any sample it describes exactly
    what has been handed out; started from a saved state it re-reads the current window and goes
    on after the last sample handed out.
    """

    def __init__(
        self, shards: Sequence[Shard], state: SlotState, seed: int, buffer_size: int, options: ReadOptions | None = None
    ) -> None:
        self.shards, self.state, self.seed, self.buffer_size = shards, state, seed, buffer_size
        self.options = options or ReadOptions()
        state.interleave = self.options.interleave

    def _samples(self, piece: Piece) -> Iterator[tuple[int, Record]]:
        """``(position, record)`` of one piece's samples, in file order (the file closes when done)."""
        shard, o = self.shards[piece.shard], self.options
        with open_shard(shard.url, o.storage_options) as f:
            if o.fmt == "lines":
                samples = iter_lines(f, shard.name, o.caption_field, piece.holds)
            else:
                samples = iter_samples(f, shard.name, o.caption_field, o.require_text, piece.holds)
            for q, record in samples:
                if record.meta.get("truncated"):
                    q = _first_held(piece, q)  # the loss is reported at a position this piece holds
                    held = len(piece.positions(q, shard.samples - 1)) if shard.samples else 1
                    record.meta["lost"] = max(1, held)
                    yield q, record
                    return
                yield q, record

    def first_window(self, epoch: int) -> int:
        """The size of an epoch's first window: random in the upper half of ``[1, buffer_size]`` (seeded),
        so the window boundaries, and with them which samples can share a batch, move from epoch to
        epoch; a buffer at least twice a slot's share of an epoch still shuffles that share whole."""
        g = torch.Generator().manual_seed(mix_seed(self.seed, self.state.slot, self.state.num_slots, epoch, 17))
        return self.buffer_size - int(torch.randint((self.buffer_size + 1) // 2, (1,), generator=g))

    def __iter__(self) -> Iterator[tuple[int, int, int, Record]]:
        """``(epoch, shard index, position, record)`` forever."""
        st = self.state
        resume = _window_length(st) if st.spans else None  # a saved window is re-read at its own length
        skip_first = st.yielded
        while True:
            if not st.queue:
                epoch = st.next_epoch
                st.queue.append([epoch, epoch_shares(len(self.shards), st.num_slots, self.seed, epoch)[st.slot]])
                st.next_epoch = epoch + 1
                st.spans, st.yielded, resume = [], 0, self.first_window(epoch)
            epoch, pieces = st.queue[0]
            reader = Interleave(pieces, self.options.interleave, self._samples)
            size = resume or self.buffer_size
            while True:
                start = reader.pieces_now()  # the window's first position in every piece
                index = {id(piece): i for i, piece in enumerate(reader.order())}
                window = [(index[id(piece)], q, r) for piece, q, r in _take(reader, size)]
                if not window:
                    break
                st.queue[0][1] = pieces = start
                st.spans = _spans(window)
                perm = window_permutation(self.seed, st, epoch, len(window))
                for k in range(skip_first, len(window)):
                    st.yielded = k + 1
                    i, q, record = window[perm[k]]
                    yield epoch, pieces[i].shard, q, record
                skip_first, size = 0, self.buffer_size
                st.spans, st.yielded, st.window = [], 0, st.window + 1
            st.queue.pop(0)
            st.spans, st.yielded, resume = [], 0, None


class Interleave:
    """Samples from up to ``width`` pieces at a time, one from each in turn; a finished piece is replaced,
    in its place in the turn, by the next unopened one. Reading several shards at once mixes them
    within a shuffle window, and which shards meet changes with each epoch's permutation.

    :meth:`pieces_now` is the rest of the work as a piece list that, read by a new ``Interleave``,
    gives the same samples in the same order: the open pieces from their next position, starting
    with the one whose turn it is, then the unopened ones.
    """

    def __init__(self, pieces: list[Piece], width: int, read: Callable[[Piece], Iterator[tuple[int, Record]]]):
        self.width, self.read = max(1, width), read
        self.unopened = list(pieces)
        self.open: list[list[Any]] = []  # [piece, iterator or None (not started), last position read]
        self.turn = 0
        while len(self.open) < self.width and self.unopened:
            self.open.append([self.unopened.pop(0), None, None])

    def order(self) -> list[Piece]:
        """The pieces in :meth:`pieces_now` order (the objects this reader yields)."""
        rotated = self.open[self.turn :] + self.open[: self.turn]
        return [entry[0] for entry in rotated] + self.unopened

    def pieces_now(self) -> list[Piece]:
        rotated = self.open[self.turn :] + self.open[: self.turn]
        out = []
        for piece, _, last in rotated:
            if last is None:
                out.append(piece)
            else:
                out.append(Piece(piece.shard, last + 1, piece.stride, piece.phase, [q for q in piece.skip if q > last]))
        for i, entry in enumerate(rotated):  # the rest of the work is now described by these copies
            entry[0] = out[i]
        self.open = rotated
        self.turn = 0
        return out + list(self.unopened)

    def __iter__(self) -> Iterator[tuple[Piece, int, Record]]:
        return self

    def __next__(self) -> tuple[Piece, int, Record]:
        while self.open:
            entry = self.open[self.turn]
            if entry[1] is None:
                entry[1] = iter(self.read(entry[0]))
            item = next(entry[1], None)
            if item is None:  # this piece is done: the next unopened one takes its turn
                if self.unopened:
                    self.open[self.turn] = [self.unopened.pop(0), None, None]
                else:
                    self.open.pop(self.turn)
                    self.turn = self.turn % len(self.open) if self.open else 0
                continue
            entry[2] = item[0]
            self.turn = (self.turn + 1) % len(self.open)
            return entry[0], item[0], item[1]
        raise StopIteration


def _window_length(state: SlotState) -> int:
    return len(_window_positions(state))


def _take(it: Iterator, n: int) -> list:
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out


def _spans(window: list[tuple[int, int, Record]]) -> list[list[int]]:
    spans: dict[int, list[int]] = {}
    for i, q, _ in window:
        span = spans.setdefault(i, [i, q, q])
        span[1], span[2] = min(span[1], q), max(span[2], q)
    return [spans[i] for i in sorted(spans)]


# ------------------------------------------------------------------------------------------
# Dataset and loader
# ------------------------------------------------------------------------------------------
@dataclass
class StreamBatch:
    """What a worker sends: the collated batch, its skipped records, the slot and its state after it."""

    batch: Any
    skipped: list
    slot: int
    state: dict[str, Any]


class StreamingShards(IterableDataset):
    """Batches of one kind streamed from tar shards (or text files); each worker of each rank reads one slot.

    Args:
        shards: from :func:`resolve_shards`.
        samples: a :class:`~mmkit.data.loader.SampleDataset` whose ``make_sample`` turns records into
            samples (its ``source`` only names the stream).
        collate: a :class:`~mmkit.data.loader.CollateWithSkips`.
        batch_size: samples per batch.
        rank, world_size, num_workers: the slots: ``world_size * max(1, num_workers)``.
        seed: shard permutations, windows and per-sample randomness.
        buffer_size: samples per shuffle window (memory: this many encoded samples per worker).
        options: how shards are read (:class:`ReadOptions`).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        samples: Any,
        collate: Callable,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
        buffer_size: int = 1000,
        options: ReadOptions | None = None,
    ) -> None:
        if batch_size < 1 or buffer_size < 1:
            raise InputError(f"batch_size and buffer_size must be >= 1, got {batch_size} and {buffer_size}")
        self.shards, self.samples, self.collate, self.batch_size = list(shards), samples, collate, batch_size
        self.rank, self.world_size, self.workers = rank, world_size, max(1, num_workers)
        self.seed, self.buffer_size, self.options = seed, buffer_size, options or ReadOptions()
        self.resume: dict[int, SlotState] = {}
        self.rotation = 0  # worker w plays local slot (rotation + w) % workers

    @property
    def num_slots(self) -> int:
        return self.world_size * self.workers

    def slot_of(self, worker: int) -> int:
        return self.rank * self.workers + (self.rotation + worker) % self.workers

    def __iter__(self) -> Iterator[StreamBatch]:
        info = get_worker_info()
        slot = self.slot_of(info.id if info is not None else 0)
        state = self.resume.get(slot)
        state = SlotState.from_dict(state.to_dict()) if state is not None else SlotState(slot, self.num_slots)
        reader = SlotReader(self.shards, state, self.seed, self.buffer_size, self.options)
        pending: list = []
        for epoch, shard, q, record in reader:
            sample = self.samples.make_sample(record, (epoch, (slot << 32) + state.batches), epoch, (shard << 32) + q)
            if record.meta.get("lost", 1) > 1 and not isinstance(sample, dict):
                pending.extend([sample] * (record.meta["lost"] - 1))  # every lost sample counts as skipped
            pending.append(sample)
            if len(pending) >= self.batch_size:
                state.batches += 1
                batch, skipped = self.collate(pending)
                pending = []
                yield StreamBatch(batch, skipped, slot, state.to_dict())


class ElasticRequired(InputError):
    """A data state saved with other ranks or workers: it needs :meth:`StreamingLoader.load_elastic` with
    the states of every old rank (``needs_elastic`` tells a checkpoint loader so without importing this)."""

    needs_elastic = True


class StreamingLoader:
    """The data loader of a :class:`StreamingShards`: ``(batch | None, skipped)`` per step, with a
    ``state_dict`` that resumes exactly (:meth:`load_state_dict`) or on other ranks/workers
    (:meth:`load_elastic`)."""

    def __init__(self, dataset: StreamingShards, num_workers: int = 0, pin_memory: bool = False,
                 prefetch_factor: int | None = None) -> None:  # fmt: skip
        self.dataset, self.num_workers = dataset, num_workers
        self.pin_memory, self.prefetch_factor = pin_memory, prefetch_factor
        self.states: dict[int, SlotState] = {}
        self.next_local = 0

    def __iter__(self) -> Iterator[tuple[Any, list]]:
        from torch.utils.data import DataLoader

        ds = self.dataset
        ds.resume, ds.rotation = dict(self.states), self.next_local
        loader = DataLoader(ds, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory,
                            prefetch_factor=self.prefetch_factor if self.num_workers else None,
                            persistent_workers=False,
                            # its own generator: starting an iterator must not draw from the global RNG
                            # (a resumed run's model randomness would shift)
                            generator=torch.Generator().manual_seed(mix_seed(ds.seed, ds.rank, 7)))  # fmt: skip
        for item in loader:
            self.states[item.slot] = SlotState.from_dict(item.state)
            self.next_local = (item.slot - ds.rank * ds.workers + 1) % ds.workers
            yield item.batch, item.skipped

    def state_dict(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "mode": "streaming",
            "name": ds.samples.source.name,
            "shards": shards_fingerprint(ds.shards),
            "seed": ds.seed,
            "world_size": ds.world_size,
            "workers": ds.workers,
            "rank": ds.rank,
            "next_local": self.next_local,
            "slots": {str(k): v.to_dict() for k, v in sorted(self.states.items())},
        }

    def _check(self, state: dict[str, Any]) -> None:
        ds = self.dataset
        if state.get("mode") != "streaming":
            name = ds.samples.source.name
            raise InputError(f"source {name!r}: the checkpoint read it in index mode, this run streams it")
        check_same_shards(state["shards"], ds.shards, ds.samples.source.name)
        if state["seed"] != ds.seed:
            raise InputError(f"data state was saved with seed {state['seed']}, this run uses {ds.seed}")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue exactly where ``state`` (this rank's, same ranks and workers) stopped."""
        self._check(state)
        ds = self.dataset
        if (state["world_size"], state["workers"], state["rank"]) != (ds.world_size, ds.workers, ds.rank):
            raise ElasticRequired(
                f"data state of rank {state['rank']} of {state['world_size']} x {state['workers']} workers cannot be "
                f"loaded exactly into rank {ds.rank} of {ds.world_size} x {ds.workers} workers; use load_elastic "
                "with the states of every old rank"
            )
        self.states = {int(k): SlotState.from_dict(v) for k, v in state["slots"].items()}
        self.next_local = int(state["next_local"])

    def load_elastic(self, states: Sequence[dict[str, Any]]) -> None:
        """Continue from the states of *every* rank of a run with other ranks or workers: the rest of
        each begun epoch is dealt to this run's slots (see :func:`plan_elastic`)."""
        for s in states:
            self._check(s)
        old_world, old_workers = states[0]["world_size"], states[0]["workers"]
        if sorted(s["rank"] for s in states) != list(range(old_world)):
            raise InputError(f"elastic resume needs the data state of all {old_world} old ranks")
        old = {int(k): SlotState.from_dict(v) for s in states for k, v in s["slots"].items()}
        n_old = old_world * old_workers
        full = [old.get(i, SlotState(i, n_old)) for i in range(n_old)]
        ds = self.dataset
        plan = plan_elastic(full, len(ds.shards), ds.seed, ds.num_slots)
        mine = range(ds.rank * ds.workers, (ds.rank + 1) * ds.workers)
        self.states, self.next_local = {i: plan[i] for i in mine}, 0


class StreamName(Source):
    """The name of a streamed source (what :class:`~mmkit.data.loader.SampleDataset` reports skips
    under); streams have no length and no random access."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __len__(self) -> int:
        raise TypeError(f"streamed source {self.name!r} has no length: it is read front to back")


def make_stream_loader(
    shards: Sequence[Shard] | str | Sequence[str],
    kind: str,
    collator: Callable,
    batch_size: int,
    *,
    name: str = "pairs",
    image_transform: Callable | None = None,
    tokenizer: Any = None,
    image_tokens: bool = False,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    num_workers: int = 0,
    buffer_size: int = 1000,
    caption_field: str | None = None,
    storage_options: dict[str, Any] | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = None,
    interleave: int = 4,
) -> StreamingLoader:
    """A :class:`StreamingLoader` of ``kind`` batches: ``pair`` / ``image`` from tar shards, ``text`` from
    text files (one sample per non-blank line; ``.jsonl``: the ``caption_field`` of each object, e.g. "text").

    The counterpart of :func:`~mmkit.data.loader.make_loader` for streamed shards; the result plugs
    into :class:`~mmkit.data.loader.MixedBatches` the same way.
    """
    from mmkit.data.loader import CollateWithSkips, SampleDataset

    if caption_field is None:  # the JSON field holding the text: TextLines' and TarShards' defaults
        caption_field = "text" if kind == "text" else "caption"
    if not shards or isinstance(shards, str) or not isinstance(shards[0], Shard):
        shards = resolve_shards(shards, storage_options)  # type: ignore[arg-type]
    samples = SampleDataset(StreamName(name), kind, image_transform, tokenizer, seed=seed, image_tokens=image_tokens)
    options = ReadOptions(
        caption_field, kind == "pair", storage_options, "lines" if kind == "text" else "tar", interleave
    )
    dataset = StreamingShards(shards, samples, CollateWithSkips(collator, seed, name), batch_size, rank=rank,
                              world_size=world_size, num_workers=num_workers, seed=seed, buffer_size=buffer_size,
                              options=options)  # fmt: skip
    return StreamingLoader(dataset, num_workers, pin_memory, prefetch_factor)
