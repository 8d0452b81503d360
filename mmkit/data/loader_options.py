"""The run-wide loader settings as one value: made once from a recipe's config, passed to every loader.

:func:`~mmkit.data.loader.make_loader`, :func:`~mmkit.data.streaming.make_stream_loader` and
:meth:`~mmkit.data.training_sources.TrainingSource.loader` all take a :class:`LoaderOptions` for what
is the same for every source of a run (batch size, this process's rank, workers, seed, shuffle window,
remote-storage options); what differs per source (its kind, collator, transform, tokenizer) stays a
parameter of the call.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Protocol

from mmkit.utils.errors import InputError

__all__ = ["LoaderOptions"]


class _DataSettings(Protocol):
    """What :meth:`LoaderOptions.from_config` reads of a recipe's data config (e.g. ``PairDataConfig``)."""

    batch_size: int
    num_workers: int


class _Rank(Protocol):
    """What :meth:`LoaderOptions.from_config` reads of the process's place (``mmkit.train.DistInfo``)."""

    rank: int
    world_size: int


@dataclass(frozen=True)
class LoaderOptions:
    """How every loader of a run reads: the same for all its sources.

    Raises:
        InputError: a batch size, shuffle window, interleave width or prefetch factor below 1, a negative
            worker count, or a rank outside ``[0, world_size)``.
    """

    batch_size: int
    """Samples per batch on this rank (each rank makes batches of this size)."""
    rank: int = 0
    """This process's rank: indexed loaders take its share of each epoch's permutation, streamed ones its slots."""
    world_size: int = 1
    """The number of ranks reading the data together."""
    seed: int = 0
    """Base seed of the sample order, shuffle windows and per-sample / per-batch randomness."""
    num_workers: int = 0
    """Data-loader worker processes per rank (0: load in the training process). Streamed: one slot each."""
    shuffle_buffer: int = 1000
    """Streamed sources: samples per shuffle window per worker (memory: this many encoded samples)."""
    storage_options: dict[str, Any] | None = None
    """``fsspec`` options of a remote filesystem (e.g. ``{"endpoint_url": ...}``); None: the environment's."""
    interleave: int = 4
    """Streamed sources: how many pieces of shards a worker reads at once, one sample from each in turn."""
    pin_memory: bool = False
    """Return batches in page-locked memory (faster host-to-GPU copies)."""
    prefetch_factor: int | None = None
    """Batches each worker loads ahead (None: PyTorch's default); ignored without workers."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.shuffle_buffer < 1 or self.interleave < 1:
            raise InputError(
                f"batch_size, shuffle_buffer and interleave must be >= 1, got {self.batch_size}, "
                f"{self.shuffle_buffer} and {self.interleave}"
            )
        if self.num_workers < 0:
            raise InputError(f"num_workers must be >= 0, got {self.num_workers}")
        if not 0 <= self.rank < self.world_size:
            raise InputError(f"rank {self.rank} is not in [0, {self.world_size})")
        if self.prefetch_factor is not None and self.prefetch_factor < 1:
            raise InputError(f"prefetch_factor must be >= 1 or None, got {self.prefetch_factor}")

    @classmethod
    def from_config(cls, data: _DataSettings, dist: _Rank, seed: int) -> LoaderOptions:
        """The options of a run: ``data``'s ``batch_size`` and ``num_workers`` (and, where it has them,
        ``shuffle_buffer`` and ``storage_options``), ``dist``'s rank and world size, the run's ``seed``."""
        return cls(
            batch_size=data.batch_size,
            rank=dist.rank,
            world_size=dist.world_size,
            seed=seed,
            num_workers=data.num_workers,
            shuffle_buffer=getattr(data, "shuffle_buffer", 1000),
            storage_options=getattr(data, "storage_options", None) or None,
        )

    def unsharded(self) -> LoaderOptions:
        """The same settings for a loader that reads everything in this process (rank 0 of 1): an
        evaluation every rank runs over the whole split."""
        return dataclasses.replace(self, rank=0, world_size=1)
