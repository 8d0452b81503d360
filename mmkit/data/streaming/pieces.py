"""The reading unit of a stream, a :class:`Piece` (the samples of one shard at positions ``q >= start``
with ``q % stride == phase``, minus ``skip``), and :class:`Interleave`, which reads several pieces at
once, one sample from each in turn. A sample's position is its ordinal in the shard (the n-th group of
members sharing a key), so a piece names its samples without reading them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmkit.data.records import Record


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
            Piece(
                self.shard,
                self.start,
                self.stride * parts,
                self.phase + self.stride * i,
                [q for q in self.skip if q % (self.stride * parts) == self.phase + self.stride * i],
            )
            for i in range(parts)
        ]

    def to_list(self) -> list[Any]:
        return [self.shard, self.start, self.stride, self.phase, list(self.skip)]

    @classmethod
    def from_list(cls, x: Sequence[Any]) -> Piece:
        return cls(int(x[0]), int(x[1]), int(x[2]), int(x[3]), [int(q) for q in x[4]])


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


def take(it: Iterator, n: int) -> list:
    """The next ``n`` items of ``it`` (fewer where it ends first)."""
    out = []
    for item in it:
        out.append(item)
        if len(out) == n:
            break
    return out
