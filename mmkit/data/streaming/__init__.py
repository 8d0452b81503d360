"""Streaming WebDataset shards from local disk, HTTP(S), S3 or GCS: flat memory, exact and elastic resume.

Index mode (:class:`~mmkit.data.sources.TarShards`) reads every tar header at start and keeps a
Python tuple per sample in every process: minutes and gigabytes at the scale of CC12M or PMD. Here
start-up costs one listing per shard directory and memory is one shuffle window per data worker,
whatever the number of samples.

How it reads (one module per step)
    * :mod:`~mmkit.data.streaming.shards`: :func:`resolve_shards` expands patterns into :class:`Shard` s
      with byte sizes and, where a sizes file says so, sample counts; :mod:`~mmkit.data.streaming.opening`
      opens one (:func:`open_shard`), :mod:`mmkit.data.shard_reading` reads its samples.
    * :mod:`~mmkit.data.streaming.pieces`: the reading unit is a :class:`Piece`: the samples of one shard
      at positions ``q >= start`` with ``q % stride == phase``, minus ``skip``; :class:`Interleave` reads
      several at once, one sample from each in turn.
    * :mod:`~mmkit.data.streaming.plan`: every epoch the pieces are permuted with ``seed + epoch`` and dealt
      to the *slots* (one slot per data worker of every rank: ``rank * workers + worker``); with fewer
      shards than slots, each shard is split into ``stride`` interleaved pieces so that every slot has work.
    * :mod:`~mmkit.data.streaming.slots`: a slot reads its pieces into shuffle windows of
      ``shuffle_buffer`` samples, each permuted with a generator seeded by ``(seed, slot, epoch, window)``
      (:class:`SlotReader`); batches are made in the worker (:class:`~mmkit.data.loader.CollateWithSkips`).
    * :mod:`~mmkit.data.streaming.loader`: :func:`make_stream_loader` builds the
      :class:`StreamingLoader` a recipe mixes with :class:`~mmkit.data.loader.MixedBatches`.

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
"""

from mmkit.data.shard_reading import iter_lines, iter_samples
from mmkit.data.streaming.loader import (
    ElasticRequired,
    StreamBatch,
    StreamingLoader,
    StreamingShards,
    make_stream_loader,
)
from mmkit.data.streaming.opening import open_shard, read_token_info
from mmkit.data.streaming.pieces import Interleave, Piece
from mmkit.data.streaming.plan import (
    SlotState,
    epoch_shares,
    plan_elastic,
    remaining_work,
    window_permutation,
)
from mmkit.data.streaming.shards import (
    REMOTE_PROTOCOLS,
    Shard,
    check_same_shards,
    is_url,
    resolve_shards,
    shards_fingerprint,
)
from mmkit.data.streaming.slots import FORMATS, ReadOptions, SlotReader

__all__ = [
    "FORMATS",
    "REMOTE_PROTOCOLS",
    "ElasticRequired",
    "Interleave",
    "Piece",
    "ReadOptions",
    "Shard",
    "SlotReader",
    "SlotState",
    "StreamBatch",
    "StreamingLoader",
    "StreamingShards",
    "check_same_shards",
    "epoch_shares",
    "is_url",
    "iter_lines",
    "iter_samples",
    "make_stream_loader",
    "open_shard",
    "plan_elastic",
    "read_token_info",
    "remaining_work",
    "resolve_shards",
    "shards_fingerprint",
    "window_permutation",
]
