"""From sources to FLAVA batches: datasets, deterministic sharded order, source mixing, exact resume.

* :class:`SampleDataset` turns a :class:`~mmkit.data.sources.Source` into samples of one kind
  (``"pair"``, ``"image"`` or ``"text"``); a record that cannot be decoded becomes a
  :class:`Skipped` marker that names it, never an exception in a worker.
* :class:`ShardedBatchSampler` walks a seeded permutation per epoch, gives each rank every
  ``world``-th index (padding by wrapping so ranks stay in step), groups them into batches and
  keeps going epoch after epoch. Its iterator's ``state_dict`` is (epoch, batch), so
  ``torchdata``'s ``StatefulDataLoader`` restores the position without touching the data.
* Randomness in a batch (crops, masks, ITM negatives) is seeded by ``(seed, source, epoch,
  batch index)``, not by a stream in a worker process: the same batch comes out whichever
  worker builds it, before or after a resume.
* :class:`MixedBatches` draws each step's source with fixed probabilities from a generator
  seeded identically on every rank (so all ranks run the same batch kind in a step), counts
  skipped records per source and stops the run past ``max_bad_fraction``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from mmkit.data.collators import Batch
from mmkit.data.decoding import decode_image, decode_text
from mmkit.data.formats import read_token_ids
from mmkit.data.loader_options import LoaderOptions
from mmkit.data.records import Record
from mmkit.data.seeding import mix_seed
from mmkit.data.sources import Source
from mmkit.data.transforms import ImageTransform
from mmkit.utils.errors import InputError, StateError

logger = logging.getLogger(__name__)
# torchdata 0.11's StatefulDataLoader calls torch.set_vital, which newer torch deprecates on every
# iterator start; it is not actionable for users, so it is silenced here and only here.
warnings.filterwarnings("ignore", message="'set_vital' is deprecated", category=UserWarning)

KINDS = ("pair", "image", "text")


@dataclass
class Skipped:
    """A record that could not be used: which source, which key, why."""

    source: str
    key: str
    reason: str


def _source_id(name: str) -> int:
    return int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little")


class SampleMaker:
    """Turns records of one stream into samples of one kind (what :class:`SampleDataset` does for an
    indexed source, and what a streamed source's workers do with each record they read).

    Args:
        name: the source's name (skip reports; with the seed it seeds each sample's random crop).
        kind: ``"pair"`` (image + caption), ``"image"`` or ``"text"``.
        image_transform: for ``pair`` / ``image`` (default :class:`ImageTransform`).
        tokenizer: a :class:`~mmkit.tokenizers.TextTokenizer`, for ``pair`` / ``text``.
        seed: base seed of the per-sample randomness (random crops).
        image_tokens: read the cached tokenizer ids of each image (``python -m mmkit.data.token_cache``)
            into ``image_tokens`` instead of making the tokenizer input; a sample without them is skipped.
    """

    def __init__(
        self,
        name: str,
        kind: str,
        image_transform: Callable | None = None,
        tokenizer=None,
        seed: int = 0,
        image_tokens: bool = False,
    ) -> None:
        if kind not in KINDS:
            raise InputError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind in ("pair", "text") and tokenizer is None:
            raise InputError(f"a {kind!r} dataset needs a tokenizer")
        self.name, self.kind, self.tokenizer, self.seed = name, kind, tokenizer, seed
        self.image_tokens = image_tokens
        self.image_transform = image_transform or ImageTransform()

    def make_sample(
        self, record: Record, batch_id: tuple[int, int], epoch: int, index: int
    ) -> dict[str, Any] | Skipped:
        """Decode and transform one record; its random crop is seeded by ``(seed, name, epoch, index)``
        and ``batch_id`` seeds its batch's collator. A record that cannot be used is a :class:`Skipped`."""
        try:
            if record.meta.get("error"):
                raise InputError(record.meta["error"])
            sample: dict[str, Any] = {"__batch__": batch_id, "__key__": record.key}
            if self.kind in ("pair", "image"):
                g = None
                if getattr(getattr(self.image_transform, "config", None), "random_crop", True):
                    g = torch.Generator().manual_seed(mix_seed(self.seed, _source_id(self.name), epoch, index))
                if hasattr(self.image_transform, "from_record"):  # may keep a JPEG encoded for the device
                    sample.update(self.image_transform.from_record(record, g))
                else:
                    sample.update(self.image_transform(decode_image(record), g))
                if self.image_tokens:
                    if "tokens_bytes" not in record.meta:
                        raise InputError("no cached image tokens (run python -m mmkit.data.token_cache)")
                    sample["image_tokens"] = read_token_ids(record.meta["tokens_bytes"])
                if record.label is not None:
                    sample["label"] = torch.tensor(record.label)
            if self.kind in ("pair", "text"):
                enc = self.tokenizer.encode(decode_text(record))
                sample["input_ids"], sample["word_ids"] = enc.input_ids, enc.word_ids
            return sample
        except (ValueError, OSError) as e:
            return Skipped(self.name, record.key, str(e))


class SampleDataset(SampleMaker, Dataset):
    """Samples of one kind from a source (a :class:`SampleMaker` named after it).

    Args:
        source: where records come from.
        kind, image_transform, tokenizer, seed, image_tokens: as :class:`SampleMaker`'s.

    Indexed by the ``(epoch, batch, index)`` triples :class:`ShardedBatchSampler` yields; returns a
    sample dict (``image``, ``codebook_image``, ``input_ids``, ``word_ids``, ``label``) or a :class:`Skipped`.
    """

    def __init__(
        self,
        source: Source,
        kind: str,
        image_transform: Callable | None = None,
        tokenizer=None,
        seed: int = 0,
        image_tokens: bool = False,
    ) -> None:
        super().__init__(source.name, kind, image_transform, tokenizer, seed, image_tokens)
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, item: tuple[int, int, int] | int) -> dict[str, Any] | Skipped:
        epoch, batch, index = item if isinstance(item, tuple) else (0, 0, int(item))
        try:
            record = self.source[index]
        except (ValueError, OSError) as e:
            return Skipped(self.source.name, f"#{index}", str(e))
        return self.make_sample(record, (epoch, batch), epoch, index)

    # StatefulDataLoader: a stateful dataset is never "fast-forwarded" by re-reading data;
    # all position state lives in the sampler.
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class _BatchIterator:
    def __init__(self, sampler: ShardedBatchSampler) -> None:
        self.sampler, self.epoch, self.batch = sampler, 0, 0
        self._order: list[int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch, self._order = state["epoch"], state["batch"], None

    def __iter__(self) -> _BatchIterator:
        return self

    def __next__(self) -> list[tuple[int, int, int]]:
        s = self.sampler
        if self._order is None:
            self._order = s.rank_order(self.epoch)
        if self.batch >= s.batches_per_epoch:
            if not s.repeat:
                raise StopIteration
            self.epoch, self.batch, self._order = self.epoch + 1, 0, s.rank_order(self.epoch + 1)
        start = self.batch * s.batch_size
        out = [(self.epoch, self.batch, i) for i in self._order[start : start + s.batch_size]]
        self.batch += 1
        return out


class ShardedBatchSampler:
    """Deterministic, rank-sharded, endless batches of ``(epoch, batch, index)``.

    Args:
        num_samples: size of the source.
        batch_size: samples per batch on this rank.
        rank, world_size: this process's share: indices ``perm[rank::world_size]``.
        seed: permutation seed (epoch ``e`` uses ``seed + e``).
        shuffle: permute each epoch (False: source order).
        repeat: go on to the next epoch (True) or stop after one.
        drop_last: drop the last incomplete batch of an epoch.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        repeat: bool = True,
        drop_last: bool = True,
    ) -> None:
        if num_samples <= 0:
            raise InputError("cannot sample from an empty source")
        if not 0 <= rank < world_size:
            raise InputError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.shuffle, self.repeat, self.drop_last = shuffle, repeat, drop_last
        per_rank = -(-num_samples // world_size)
        self.per_rank = per_rank
        self.batches_per_epoch = per_rank // batch_size if drop_last else -(-per_rank // batch_size)
        if self.batches_per_epoch == 0:
            raise InputError(
                f"a rank's share ({per_rank} samples of {num_samples}) is smaller than one batch of {batch_size}; "
                "lower the batch size or set drop_last=False"
            )

    def rank_order(self, epoch: int) -> list[int]:
        if self.shuffle:
            perm = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            perm = torch.arange(self.num_samples)
        total = self.per_rank * self.world_size
        if total > self.num_samples:  # wrap so every rank has the same number of samples
            perm = torch.cat([perm, perm[: total - self.num_samples]])
        return perm[self.rank :: self.world_size].tolist()

    def __iter__(self) -> _BatchIterator:
        return _BatchIterator(self)

    def __len__(self) -> int:
        return self.batches_per_epoch


class CollateWithSkips:
    """Drop :class:`Skipped` markers, seed the collator per batch, return ``(batch | None, skipped)``.

    Args:
        collator: a :mod:`mmkit.data.collators` collator (called with ``generator=``).
        seed: base seed; with the source name, epoch and batch index it seeds the batch.
        source_name: the source's name.
    """

    def __init__(self, collator: Callable, seed: int, source_name: str) -> None:
        self.collator, self.seed, self.source_name = collator, seed, source_name

    def __call__(self, samples: Sequence[dict[str, Any] | Skipped]) -> tuple[Batch | None, list[Skipped]]:
        skipped = [s for s in samples if isinstance(s, Skipped)]
        good = [s for s in samples if not isinstance(s, Skipped)]
        if not good:
            return None, skipped
        epoch, batch = good[0]["__batch__"]
        g = torch.Generator().manual_seed(mix_seed(self.seed, _source_id(self.source_name), epoch, batch, 1))
        return self.collator(good, generator=g), skipped


def make_loader(
    dataset: SampleDataset,
    collator: Callable,
    options: LoaderOptions,
    *,
    shuffle: bool = True,
    repeat: bool = True,
    drop_last: bool = True,
):
    """A ``torchdata`` ``StatefulDataLoader`` over ``dataset`` yielding ``(Batch | None, skipped)``.

    Args:
        dataset: the samples.
        collator: a :mod:`mmkit.data.collators` collator (called with ``generator=``).
        options: batch size, rank, workers, seed (:class:`~mmkit.data.loader_options.LoaderOptions`).
        shuffle: permute each epoch (False: source order).
        repeat: go on epoch after epoch (False: stop after one, e.g. an evaluation pass).
        drop_last: drop the last incomplete batch of an epoch.

    Its ``state_dict()`` holds the position (epoch, batch); load it into a loader built the
    same way to continue exactly where it stopped.
    """
    from torchdata.stateful_dataloader import StatefulDataLoader

    o = options
    sampler = ShardedBatchSampler(len(dataset), o.batch_size, o.rank, o.world_size, o.seed, shuffle, repeat, drop_last)
    return StatefulDataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=CollateWithSkips(collator, o.seed, dataset.source.name),
        num_workers=o.num_workers,
        pin_memory=o.pin_memory,
        prefetch_factor=o.prefetch_factor if o.num_workers else None,
        persistent_workers=False,
        # its own generator: starting an iterator draws the workers' base seed from it, never from the
        # global RNG, so a resumed run's model randomness (e.g. Gumbel noise) is not shifted by it
        generator=torch.Generator().manual_seed(mix_seed(o.seed, o.rank, 7)),
    )


class DataQualityError(StateError):
    """Too many records of a source could not be used, or none at all (see :class:`MixedBatches`)."""


class MixedBatches:
    """An endless stream of FLAVA batches, each drawn from one source.

    Args:
        loaders: ``{name: (loader, probability)}`` from :func:`make_loader`; probabilities are
            normalised (FLAVA: pairs 0.70, images 0.15, text 0.15).
        seed: seed of the source draw, the same on every rank.
        max_bad_fraction: stop with :class:`DataQualityError` when a source's skipped / seen
            exceeds this (checked once it has seen ``min_samples``).
        min_samples: records a source must have seen before its bad fraction is judged.

    Even with ``max_bad_fraction=1.0`` (tolerate every bad record) a source that yields nothing
    stops the run with :class:`DataQualityError` instead of looping forever: once every one of its
    ``min_samples`` or more records seen was skipped, or when more than ``max(min_samples, 10 batches)``
    records in a row were (a source that went bad, e.g. its disk went away).

    Yields :class:`~mmkit.data.collators.Batch` with ``batch.source`` set. ``stats()`` gives
    per-source counts and recent skipped keys; ``state_dict()`` / ``load_state_dict()`` cover
    the draw generator, every loader's position and the counts.
    """

    def __init__(
        self,
        loaders: dict[str, tuple[Any, float]],
        seed: int = 0,
        max_bad_fraction: float = 0.01,
        min_samples: int = 200,
    ) -> None:
        if not loaders:
            raise InputError("MixedBatches needs at least one loader")
        probs = torch.tensor([float(p) for _, p in loaders.values()], dtype=torch.float64)
        if (probs < 0).any() or probs.sum() <= 0:
            raise InputError(f"source probabilities must be non-negative and not all 0, got {probs.tolist()}")
        self.names = list(loaders)
        self.loaders = {name: loader for name, (loader, _) in loaders.items()}
        self.probs = probs / probs.sum()
        self.seed = seed
        self.max_bad_fraction, self.min_samples = max_bad_fraction, min_samples
        self._generator = torch.Generator().manual_seed(seed)
        self._iters: dict[str, Iterator] = {}
        self.seen = dict.fromkeys(self.names, 0)
        self.skipped = dict.fromkeys(self.names, 0)
        self.examples: dict[str, list[str]] = {n: [] for n in self.names}
        for name, loader in self.loaders.items():  # samples an indexed source lost to truncated shards
            source = getattr(getattr(loader, "dataset", None), "source", None)
            lost = getattr(source, "lost", 0)
            if lost:
                self.seen[name] += lost
                self.skipped[name] += lost
                shards = ", ".join(f"{n} ({k} indexed)" for n, k in source.truncated)
                self.examples[name].append(f"{lost} samples lost in truncated shards: {shards}")

    def __iter__(self) -> MixedBatches:
        return self

    def _next_from(self, name: str) -> tuple[Batch | None, list[Skipped]]:
        if name not in self._iters:
            self._iters[name] = iter(self.loaders[name])
        return next(self._iters[name])

    def __next__(self) -> Batch:
        name = self.names[int(torch.multinomial(self.probs, 1, generator=self._generator))]
        bad_run = 0  # records in a row of this source that could not be used
        while True:
            batch, skipped = self._next_from(name)
            self._account(name, batch, skipped)
            if batch is not None:
                if isinstance(batch, Batch):
                    batch.source = name
                return batch
            bad_run += len(skipped)
            if bad_run > max(self.min_samples, 10 * len(skipped)):
                raise DataQualityError(
                    f"source {name!r}: no record could be used: the last {bad_run} records in a row were skipped "
                    f"({self.skipped[name]} of {self.seen[name]} overall); latest: "
                    f"{'; '.join(self.examples[name][-3:])}"
                )

    def _account(self, name: str, batch: Batch | None, skipped: list[Skipped]) -> None:
        self.seen[name] += (0 if batch is None else len(batch)) + len(skipped)
        if skipped:
            self.skipped[name] += len(skipped)
            for s in skipped:
                logger.warning("skipped %s record %s: %s", s.source, s.key, s.reason)
            self.examples[name] = (self.examples[name] + [f"{s.key} ({s.reason})" for s in skipped])[-10:]
        seen, bad = self.seen[name], self.skipped[name]
        if not bad:
            return
        # checked on every batch once there are bad records: skips counted before min_samples (or at
        # the start, from truncated shards) are judged once enough records have been seen
        if seen >= self.min_samples and bad == seen:
            raise DataQualityError(
                f"source {name!r}: no record could be used: all {seen} records seen were skipped; "
                f"latest: {'; '.join(self.examples[name][-3:])}"
            )
        if seen >= self.min_samples and bad / seen > self.max_bad_fraction:
            raise DataQualityError(
                f"source {name!r}: {bad} of {seen} records could not be used "
                f"({bad / seen:.1%} > max_bad_fraction {self.max_bad_fraction:.1%}); "
                f"latest: {'; '.join(self.examples[name][-3:])}"
            )

    def close(self) -> None:
        """Stop the loaders' worker processes now (the end of a run) rather than whenever the garbage collector
        finds their iterators: a worker left for the collector is joined at an arbitrary later moment of the
        process, seconds each; the stream starts again from its state on the next ``next``."""
        iters, self._iters = self._iters, {}
        for it in iters.values():
            shutdown = getattr(it, "_shutdown_workers", None)  # torch's multi-process iterator; in-process: none
            if shutdown is not None:
                shutdown()

    def stats(self) -> dict[str, dict[str, Any]]:
        """Per source: records seen, skipped and the latest skipped keys with reasons."""
        return {n: {"seen": self.seen[n], "skipped": self.skipped[n], "examples": self.examples[n]} for n in self.names}

    def state_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "generator": self._generator.get_state(),
            "loaders": {n: loader.state_dict() for n, loader in self.loaders.items()},
            "seen": dict(self.seen),
            "skipped": dict(self.skipped),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if set(state["loaders"]) != set(self.names):
            raise InputError(f"data state has sources {sorted(state['loaders'])}, this run has {sorted(self.names)}")
        if state["seed"] != self.seed:
            raise InputError(f"data state was saved with seed {state['seed']}, this run uses {self.seed}")
        self._generator.set_state(state["generator"])
        for n, loader in self.loaders.items():
            loader.load_state_dict(state["loaders"][n])
        self._iters = {}
        self.seen, self.skipped = dict(state["seen"]), dict(state["skipped"])

    def load_elastic(self, states: Sequence[dict[str, Any]], rank: int, world_size: int) -> None:
        """Continue from the data states of *every* rank of a run with another number of ranks.

        Each source's loader redistributes the rest of its begun epochs (streamed sources only:
        :meth:`mmkit.data.streaming.loader.StreamingLoader.load_elastic`); the source draw continues from the
        saved generator (the same on every rank); the seen/skipped counts are the old ranks' totals
        shared out evenly, so ``max_bad_fraction`` keeps its meaning.
        """
        indexed = [n for n, loader in self.loaders.items() if not hasattr(loader, "load_elastic")]
        if indexed:
            raise InputError(
                f"source(s) {', '.join(map(repr, indexed))} are read in index mode, whose positions belong to one "
                f"number of ranks: resume with the checkpoint's {len(states)} ranks, or stream every source "
                "(data.streaming=true) to change it"
            )
        for state in states:
            if set(state["loaders"]) != set(self.names) or state["seed"] != self.seed:
                raise InputError(
                    f"data state has sources {sorted(state['loaders'])} and seed {state['seed']}, this "
                    f"run has {sorted(self.names)} and seed {self.seed}"
                )
        self._generator.set_state(states[0]["generator"])
        for n, loader in self.loaders.items():
            loader.load_elastic([state["loaders"][n] for state in states])
        self._iters = {}
        share = lambda key, n: sum(s[key][n] for s in states) // world_size  # noqa: E731
        self.seen = {n: share("seen", n) for n in self.names}
        self.skipped = {n: share("skipped", n) for n in self.names}
