"""The epoch plan: which pieces every slot (one data worker of one rank) reads in each epoch, where a
slot is (:class:`SlotState`), and the elastic re-plan that deals what old slots left to new ones.

Every epoch the pieces are permuted with ``seed + epoch`` and dealt to the slots (``rank * workers +
worker``); with fewer shards than slots, each shard is split into ``stride`` interleaved pieces so
that every slot has work (:func:`epoch_shares`). :func:`plan_elastic` turns the states of all old slots
into the work that is left of every epoch any slot had begun and deals it to the new slots.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from mmkit.data.seeding import mix_seed
from mmkit.data.streaming.pieces import Interleave, Piece, take
from mmkit.utils.errors import InputError


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


def window_positions(state: SlotState) -> list[tuple[int, int]]:
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
    return [(piece.shard, q) for piece, q, _ in take(Interleave(list(pieces), state.interleave, positions), n)]


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
                    positions = window_positions(s)
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
