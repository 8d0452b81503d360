"""The loader of a streamed source: workers that read one slot each and send batches with their slot's
state (:class:`StreamingShards`), and :class:`StreamingLoader`, which keeps the latest state per slot
and resumes from it exactly (same ranks and workers) or elastically (others).

Why not ``StatefulDataLoader`` here (index mode uses it): its worker snapshots can only be loaded
into the same number of workers, and their layout is internal; a state that travels with each
batch can be redistributed. The workers are a plain ``torch.utils.data.DataLoader``'s, and the
worker that resumes a slot is chosen so that batches come out in the saved round-robin order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import IterableDataset, get_worker_info

from mmkit.data.loader_options import LoaderOptions
from mmkit.data.seeding import mix_seed
from mmkit.data.streaming.plan import SlotState, plan_elastic
from mmkit.data.streaming.shards import Shard, check_same_shards, resolve_shards, shards_fingerprint
from mmkit.data.streaming.slots import ReadOptions, SlotReader
from mmkit.utils.errors import InputError


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
        shards: from :func:`~mmkit.data.streaming.shards.resolve_shards`.
        samples: a :class:`~mmkit.data.loader.SampleMaker` that turns records into samples (and names the stream).
        collate: a :class:`~mmkit.data.loader.CollateWithSkips`.
        loading: the run's :class:`~mmkit.data.loader_options.LoaderOptions`: batch size, the slots
            (``world_size * max(1, num_workers)``, this rank's), the seed (shard permutations, windows,
            per-sample randomness) and ``shuffle_buffer`` (samples per window, held encoded per worker).
        read: how shards are read (:class:`~mmkit.data.streaming.slots.ReadOptions`).
    """

    def __init__(
        self, shards: Sequence[Shard], samples: Any, collate: Callable, loading: LoaderOptions, read: ReadOptions
    ) -> None:
        self.shards, self.samples, self.collate, self.loading = list(shards), samples, collate, loading
        self.batch_size, self.buffer_size, self.seed = loading.batch_size, loading.shuffle_buffer, loading.seed
        self.rank, self.world_size, self.workers = loading.rank, loading.world_size, max(1, loading.num_workers)
        self.options = read
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

    def __init__(self, dataset: StreamingShards) -> None:
        self.dataset = dataset
        self.states: dict[int, SlotState] = {}
        self.next_local = 0

    def __iter__(self) -> Iterator[tuple[Any, list]]:
        from torch.utils.data import DataLoader

        ds = self.dataset
        ds.resume, ds.rotation = dict(self.states), self.next_local
        o = ds.loading
        loader = DataLoader(
            ds,
            batch_size=None,
            num_workers=o.num_workers,
            pin_memory=o.pin_memory,
            prefetch_factor=o.prefetch_factor if o.num_workers else None,
            persistent_workers=False,
            # its own generator: starting an iterator must not draw from the global RNG
            # (a resumed run's model randomness would shift)
            generator=torch.Generator().manual_seed(mix_seed(ds.seed, ds.rank, 7)),
        )
        for item in loader:
            self.states[item.slot] = SlotState.from_dict(item.state)
            self.next_local = (item.slot - ds.rank * ds.workers + 1) % ds.workers
            yield item.batch, item.skipped

    def state_dict(self) -> dict[str, Any]:
        ds = self.dataset
        return {
            "mode": "streaming",
            "name": ds.samples.name,
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
            name = ds.samples.name
            raise InputError(f"source {name!r}: the checkpoint read it in index mode, this run streams it")
        check_same_shards(state["shards"], ds.shards, ds.samples.name)
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


def make_stream_loader(
    shards: Sequence[Shard] | str | Sequence[str],
    kind: str,
    collator: Callable,
    options: LoaderOptions,
    *,
    name: str = "pairs",
    image_transform: Callable | None = None,
    tokenizer: Any = None,
    image_tokens: bool = False,
    caption_field: str | None = None,
) -> StreamingLoader:
    """A :class:`StreamingLoader` of ``kind`` batches: ``pair`` / ``image`` from tar shards, ``text`` from
    text files (one sample per non-blank line; ``.jsonl``: the ``caption_field`` of each object, e.g. "text").

    Args:
        shards: :class:`Shard` s, or patterns / URLs to resolve (with ``options.storage_options``).
        kind: ``"pair"``, ``"image"`` or ``"text"``.
        collator: a :mod:`mmkit.data.collators` collator (called with ``generator=``).
        options: the run's :class:`~mmkit.data.loader_options.LoaderOptions`.
        name: the stream's name (skip reports, checkpoints, per-sample seeds).
        image_transform, tokenizer, image_tokens: as :class:`~mmkit.data.loader.SampleMaker`'s.
        caption_field: the JSON field holding the text (default ``"text"`` for ``text``, else ``"caption"``).

    The counterpart of :func:`~mmkit.data.loader.make_loader` for streamed shards; the result plugs
    into :class:`~mmkit.data.loader.MixedBatches` the same way.
    """
    from mmkit.data.loader import CollateWithSkips, SampleMaker

    if caption_field is None:  # the JSON field holding the text: TextLines' and TarShards' defaults
        caption_field = "text" if kind == "text" else "caption"
    if not shards or isinstance(shards, str) or not isinstance(shards[0], Shard):
        shards = resolve_shards(shards, options.storage_options)  # type: ignore[arg-type]
    samples = SampleMaker(name, kind, image_transform, tokenizer, seed=options.seed, image_tokens=image_tokens)
    fmt = "lines" if kind == "text" else "tar"
    read = ReadOptions(caption_field, kind == "pair", options.storage_options, fmt, options.interleave)
    dataset = StreamingShards(shards, samples, CollateWithSkips(collator, options.seed, name), options, read)
    return StreamingLoader(dataset)
