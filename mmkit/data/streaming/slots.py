"""Reading one slot: its queued pieces, then fresh epochs, through shuffle windows (:class:`SlotReader`),
with how shards are read (:class:`ReadOptions`).

A slot reads up to ``interleave`` of its pieces at once (:class:`~mmkit.data.streaming.pieces.Interleave`)
into a window of ``buffer_size`` samples, permutes the window with a generator seeded by ``(seed, slot,
epoch, window)`` and yields it. An epoch's first window has a random size (between half the buffer and
all of it), so window boundaries move from epoch to epoch: with fixed boundaries the same groups of
samples would meet in every epoch, and a small set trained for many epochs sees the same in-batch
negatives again and again (the demo's held-out R@1 fell from 0.35 to 0.19 with a 1000-sample buffer).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mmkit.data.records import Record
from mmkit.data.seeding import mix_seed
from mmkit.data.shard_reading import iter_lines, iter_samples
from mmkit.data.streaming.opening import open_shard
from mmkit.data.streaming.pieces import Interleave, Piece, take
from mmkit.data.streaming.plan import SlotState, epoch_shares, window_permutation, window_positions
from mmkit.data.streaming.shards import Shard
from mmkit.utils.errors import InputError

FORMATS = ("tar", "lines")  # WebDataset tar shards; text files (one sample per non-blank line)


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
                window = [(index[id(piece)], q, r) for piece, q, r in take(reader, size)]
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


def _window_length(state: SlotState) -> int:
    return len(window_positions(state))


def _spans(window: list[tuple[int, int, Record]]) -> list[list[int]]:
    spans: dict[int, list[int]] = {}
    for i, q, _ in window:
        span = spans.setdefault(i, [i, q, q])
        span[1], span[2] = min(span[1], q), max(span[2], q)
    return [spans[i] for i in sorted(spans)]
