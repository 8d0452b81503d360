"""Atomic, resumable training checkpoints on PyTorch Distributed Checkpoint (DCP).

Layout of ``<dir>/step_00001234/``:

* DCP files for ``{"model", "optim"}`` taken with ``torch.distributed.checkpoint.state_dict``
  (plain, DDP and FSDP2 models; sharded tensors are written by every rank);
* ``rank<r>.pt``: this rank's checkpointed components (data position, RNG, scheduler, grad scaler,
  counters: whatever the recipe registers), plain tensors and containers only, read back with
  ``torch.load(weights_only=True)`` so a planted pickle payload cannot run;
* ``meta.json``: step, world size and the run's resolved config (JSON: no code);
* ``COMPLETE``: written last.

A checkpoint is written under ``step_N.tmp``, every file is fsynced, and rank 0 renames it to
``step_N`` after every rank has finished, so a crash while saving leaves the previous checkpoint
intact and the partial one invisible. Older checkpoints beyond ``keep`` are removed only after
the new one is complete on disk.

Lineage: resuming from step ``s`` (explicitly, or ``resume=none`` = from step 0) sets every
later checkpoint aside as ``step_N.abandoned`` so that ``resume=auto`` can never continue the
abandoned branch; they are deleted at the next successful save.

Trust: no file of a checkpoint can run code when it is loaded. ``meta.json`` and ``COMPLETE`` are
JSON and text; ``rank<r>.pt`` and DCP's tensor data are read with ``torch.load(weights_only=True)``;
DCP's non-tensor entries (the optimiser's hyperparameters), which torch's own planner reads with
the full unpickler, are read with ``weights_only=True`` by :class:`SafeLoadPlanner`; and DCP's
``.metadata``, which torch's reader unpickles as it is, is read by :class:`SafeFileSystemReader`
through an unpickler that admits only the classes DCP's metadata holds
(:func:`dcp_metadata_allowed`). A planted file is refused with :class:`CheckpointError` naming the
file and what it tried to load.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickle
import random
import re
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from mmkit.train.collectives import Collectives, local_collectives
from mmkit.utils import at_least, positive
from mmkit.utils.errors import InputError, MissingError, MMKitError, StateError
from mmkit.utils.safe_pickle import UnsafePickleError, restricted_load
from mmkit.utils.weights import torch_load_failure

logger = logging.getLogger(__name__)
_STEP_DIR = re.compile(r"^step_(\d{8})$")
FORMAT_VERSION = 2


class Stateful(Protocol):
    """What a checkpointed component provides (torch optimisers, schedulers and scalers already do)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class CheckpointError(StateError):
    """A checkpoint could not be read (missing, truncated, unsafe or corrupt files)."""


class CheckpointSaveError(MMKitError, OSError):
    """A checkpoint could not be written; the message names the path and the cause."""


_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")


def dcp_metadata_allowed(module: str, name: str) -> bool:
    """What DCP's ``.metadata`` pickle may name: DCP's metadata dataclasses and enums, the storage
    record of its file system writer, ``torch.Size``, torch's dtypes and layouts, and the path its
    storage meta keeps. Nothing that can run a command or import a module."""
    if module in _DCP_MODULES:
        obj = getattr(__import__(module, fromlist=[name]), name, None)
        return isinstance(obj, type) and obj.__module__ == module
    if module == "torch":
        return name == "Size" or isinstance(getattr(torch, name, None), torch.dtype)
    return (module, name) in {
        ("torch.serialization", "_get_layout"),  # maps a layout's name to the layout
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
    }


class SafeFileSystemReader(FileSystemReader):
    """DCP's file system reader with ``.metadata`` read through :func:`dcp_metadata_allowed`.

    Raises:
        CheckpointError: the metadata names anything else, or is not a DCP ``Metadata``.
    """

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = self._get_metadata_path(kwargs.get("rank"))
        try:
            with self.fs.create_stream(path, "rb") as f:
                metadata = restricted_load(f, dcp_metadata_allowed, "DCP checkpoint metadata")
        except UnsafePickleError as e:
            raise CheckpointError(f"{path} is unsafe: {e}; it was not written by DCP, do not resume from it") from None
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
            raise CheckpointError(f"{path} is not DCP checkpoint metadata ({type(e).__name__}: {e})") from None
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path} holds a {type(metadata).__name__}, not DCP checkpoint metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _single_process() -> bool:
    """No process group: DCP then reads and writes as one process (``no_dist``)."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized())


@contextlib.contextmanager
def _one_process_is_meant() -> Iterator[None]:
    """DCP warns on every save and load without a process group that it "assumes" one process, even when
    told ``no_dist=True``; a single-process run means exactly that, so the warning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, reading non-tensor entries with ``torch.load(weights_only=True)``
    (torch's own uses the full unpickler, so a planted entry could run code)."""

    def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
        fqn = read_item.dest_index.fqn
        try:
            obj = torch.load(value, weights_only=True)
        except Exception as e:
            raise CheckpointError(f"checkpoint entry {fqn!r} cannot be read safely: {_load_failure(e)}") from e
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[fqn], obj)
        else:
            self.state_dict[fqn] = obj


def _load_failure(e: BaseException) -> str:
    """One line for a failed ``torch.load(weights_only=True)`` (torch's own message is a paragraph of
    advice around the one line that says what was refused; the advice to turn ``weights_only`` off
    is left out: :func:`mmkit.utils.weights.torch_load_failure`)."""
    return torch_load_failure(e)


def _first_failure(e: BaseException) -> str:
    """One line for an exception, unwrapping DCP's per-rank CheckpointException (whose text is a
    traceback per rank) to the first rank's own exception."""
    if isinstance(e, CheckpointException) and e.failures:
        inner = next(iter(e.failures.values()))[0]
        return str(inner) if isinstance(inner, CheckpointError) else _load_failure(inner)
    return str(e)


def rng_state() -> dict[str, Any]:
    """torch CPU (and CUDA) and Python ``random`` generator states."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RNGState:
    """The process's random generators as a checkpointed component."""

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_rng_state(state)

    def load_elastic(self, states: Sequence[dict[str, Any]], rank: int, world_size: int) -> None:
        """On another number of ranks, rank ``r`` continues old rank ``r % old``'s generators, advanced by
        ``r // old`` seeded draws so that no two ranks share a stream."""
        set_rng_state(states[rank % len(states)])
        for _ in range(rank // len(states)):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + rank)


@dataclass
class CheckpointConfig:
    """The ``checkpoint`` section every recipe shares: save ``every`` steps, keep the last ``keep``,
    ``resume`` = ``"auto"`` (the latest complete checkpoint, if any) | ``"none"`` (start over; earlier
    checkpoints in the run directory are set aside) | a checkpoint path."""

    every: int = positive(1000)
    keep: int = at_least(1, 3)
    resume: str = "auto"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _describe_os_error(err: BaseException, path: Path) -> str:
    """A readable cause; torch reports a full disk as 'unexpected pos ...'."""
    text = str(err)
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    if "unexpected pos" in text or getattr(err, "errno", None) == 28 or (free is not None and free < 2**20):
        text = f"no space left on device ({free / 2**20:.1f} MiB free)" if free is not None else "no space left"
    return text


class CheckpointManager:
    """Save, find, load and rotate training checkpoints in ``directory``.

    Args:
        directory: where ``step_*`` folders go.
        keep: how many complete checkpoints to keep (older ones are deleted after a save).
        comm: the run's collectives (default: the current process group's).
    """

    def __init__(self, directory: str | Path, keep: int = 3, comm: Collectives | None = None) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.comm = comm or local_collectives()
        self.rank = torch.distributed.get_rank() if self.comm.distributed else 0
        if self.rank == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            for old in self.directory.glob("step_*.old"):  # a crash in the middle of a re-save
                final = old.with_suffix("")
                if not final.exists() and (old / "COMPLETE").exists():
                    os.replace(old, final)
                else:
                    shutil.rmtree(old, ignore_errors=True)
            for stale in self.directory.glob("step_*.tmp"):  # a save that never finished
                shutil.rmtree(stale, ignore_errors=True)
        self.comm.barrier()

    # -- finding ------------------------------------------------------------------------------
    @staticmethod
    def step_of(path: str | Path) -> int:
        m = _STEP_DIR.match(Path(path).name)
        if not m:
            raise InputError(f"{path} is not a checkpoint directory (expected a name like step_00001234)")
        return int(m.group(1))

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [p for p in self.directory.glob("step_*") if _STEP_DIR.match(p.name) and (p / "COMPLETE").exists()]
        return sorted(found, key=self.step_of)

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def retire_after(self, step: int) -> list[Path]:
        """Set every complete checkpoint after ``step`` aside (``.abandoned``), so the lineage being
        resumed is the only one ``resume=auto`` can find; returns what was set aside."""
        later = [p for p in self.complete() if self.step_of(p) > step]
        if self.rank == 0:
            for p in later:
                os.replace(p, p.with_name(p.name + ".abandoned"))
        self.comm.barrier()
        return later

    # -- saving -------------------------------------------------------------------------------
    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        components: Mapping[str, Stateful] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint of ``step``: model and optimiser (DCP), every component's
        ``state_dict()`` (per rank) and ``meta`` (JSON, rank 0).

        Raises:
            CheckpointSaveError: naming the path and the cause (e.g. no space left on device); the
                previous checkpoints are untouched.
        """
        final = self.directory / f"step_{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.comm.barrier()
        error: BaseException | None = None
        try:
            model_sd, optim_sd = get_state_dict(model, optimizer)
            with _one_process_is_meant():
                dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp), no_dist=_single_process())
            per_rank = {name: c.state_dict() for name, c in (components or {}).items()}
            torch.save(per_rank, tmp / f"rank{self.rank}.pt")
            for f in tmp.iterdir():
                _fsync(f)
        except (OSError, RuntimeError) as e:
            error = e
        if self.comm.any(error is not None)[0]:
            if error is None:
                raise CheckpointSaveError(f"could not write checkpoint {tmp}: another rank failed (see its log)")
            raise CheckpointSaveError(f"could not write checkpoint {tmp}: {_describe_os_error(error, tmp)}") from error
        if self.rank == 0:
            self._publish(step, tmp, final, meta or {})
        self.comm.barrier()
        return final

    def _publish(self, step: int, tmp: Path, final: Path, meta: Mapping[str, Any]) -> None:
        try:
            record = {"format": FORMAT_VERSION, "step": step, "world_size": self.comm.world_size, **meta}
            (tmp / "meta.json").write_text(json.dumps(record, indent=1, default=str))
            (tmp / "COMPLETE").write_text(f"step {step}, world size {self.comm.world_size}\n")
            _fsync(tmp / "meta.json")
            _fsync(tmp / "COMPLETE")
            old = final.with_name(final.name + ".old")
            if final.exists():  # re-saving a step: the previous copy stays until the new one is in place
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync(self.directory)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as e:
            raise CheckpointSaveError(f"could not write checkpoint {final}: {_describe_os_error(e, final)}") from e
        for abandoned in self.directory.glob("step_*.abandoned"):
            shutil.rmtree(abandoned, ignore_errors=True)
        for old_ckpt in self.complete()[: -self.keep]:
            shutil.rmtree(old_ckpt, ignore_errors=True)

    # -- loading ------------------------------------------------------------------------------
    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        """``meta.json`` of a complete checkpoint.

        Raises:
            FileNotFoundError: not a complete checkpoint. CheckpointError: unreadable metadata.
        """
        path = Path(path)
        if not (path / "COMPLETE").exists():
            raise MissingError(f"{path} is not a complete checkpoint (no COMPLETE marker)")
        try:
            meta = json.loads((path / "meta.json").read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{path}/meta.json cannot be read ({e})") from e
        if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by another mmkit checkpoint format ({meta.get('format')!r})")
        return meta

    def load(
        self,
        path: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        components: Mapping[str, Stateful] | None = None,
    ) -> dict[str, Any]:
        """Restore model, optimiser and components in place; returns the checkpoint's meta.

        The optimiser's hyperparameters (lr, betas, weight decay, ...) stay as configured: a changed
        ``optim.lr`` takes effect on resume (the scheduler component re-derives the current lr).

        Written by another number of ranks, it resumes *elastically* when a component can take the
        states of every old rank (``load_elastic(states, rank, world_size)``: the data stream and the
        RNG); the others (scheduler, scaler, counters) are the same on every rank.

        Raises:
            FileNotFoundError: not a complete checkpoint.
            ValueError: written by another number of ranks and nothing here can redistribute (or a
                component refuses, e.g. a data source read in index mode).
            CheckpointError: a file is missing, truncated, unsafe or does not fit the model.
        """
        path = Path(path)
        meta = self.read_meta(path)
        old_world = int(meta["world_size"])
        components = components or {}
        elastic = old_world != self.comm.world_size
        if elastic and not any(hasattr(c, "load_elastic") for c in components.values()):
            raise InputError(
                f"{path} was written by {old_world} rank(s) but this run has {self.comm.world_size}: "
                "resume with the same number of processes"
            )
        ranks = range(old_world) if elastic else [self.rank]
        per_rank = {r: self._read_rank_file(path, r) for r in ranks}
        for r, state in per_rank.items():
            missing = sorted(set(components) - set(state))
            if missing:
                raise CheckpointError(f"{path}/rank{r}.pt has no state for {missing}")
        hparams = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
        try:
            self._load_model_and_optimizer(path, model, optimizer)
        except CheckpointError:
            raise
        except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
            raise CheckpointError(f"{path}: model/optimizer state cannot be loaded: {_first_failure(e)}") from e
        for group, configured in zip(optimizer.param_groups, hparams, strict=True):
            group.update(configured)
        if self._load_components(path, components, per_rank, old_world, elastic):
            meta = {**meta, "elastic_workers": True}
        if elastic:
            meta = {**meta, "elastic_from": old_world}
        return meta

    def _load_components(
        self, path: Path, components: Mapping[str, Stateful], per_rank: dict[int, dict], old_world: int, elastic: bool
    ) -> bool:
        """Load each component from its rank's state (or every old rank's, elastically); True when a
        component saved with other data workers took every old rank's state."""
        other_workers = False
        ranks = sorted(per_rank)
        for name, component in components.items():
            if elastic and hasattr(component, "load_elastic"):
                component.load_elastic([per_rank[r][name] for r in ranks], self.rank, self.comm.world_size)
                continue
            try:  # the same on every rank (scheduler, scaler, counters), or this rank's own
                component.load_state_dict(per_rank[min(self.rank, old_world - 1)][name])
            except ValueError as e:
                # saved with other data workers (every rank finds the same): take every old rank's state
                if not (getattr(e, "needs_elastic", False) and hasattr(component, "load_elastic")):
                    raise
                states = [self._read_rank_file(path, r)[name] for r in range(old_world)]
                component.load_elastic(states, self.rank, self.comm.world_size)
                other_workers = True
        return other_workers

    @staticmethod
    def _read_rank_file(path: Path, rank: int) -> dict[str, Any]:
        try:
            return torch.load(path / f"rank{rank}.pt", map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{path}/rank{rank}.pt cannot be read safely: {_load_failure(e)}") from e

    @staticmethod
    def _load_model_and_optimizer(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        stored = SafeFileSystemReader(path).read_metadata().state_dict_metadata  # its own one-line errors
        model_sd, optim_sd = get_state_dict(model, optimizer)
        model_state = {"model": model_sd}  # weights strictly: every one must be in the checkpoint
        single, reader = _single_process(), SafeFileSystemReader(path)
        with _one_process_is_meant():
            dcp.load(model_state, storage_reader=reader, planner=SafeLoadPlanner(), no_dist=single)
        set_model_state_dict(model, model_state["model"])
        # Optimiser state partially: a parameter that never had a gradient before the save (an
        # unused pooler, or the image side when only text batches came so far) has no state.
        optim_state = {"optim": optim_sd}
        partial = SafeLoadPlanner(allow_partial_load=True)
        with _one_process_is_meant():
            dcp.load(optim_state, storage_reader=SafeFileSystemReader(path), planner=partial, no_dist=single)
        set_optimizer_state_dict(model, optimizer, optim_state["optim"], options=StateDictOptions(strict=False))
        # get_state_dict gave every parameter a fresh state; those without a saved one must have
        # none, or Adam's step count (and so its bias correction) would differ from the original run.
        saved = {k.removeprefix("optim.state.").rsplit(".", 1)[0] for k in stored if k.startswith("optim.state.")}
        for name, p in model.named_parameters():
            if name.removeprefix("module.") not in saved:
                optimizer.state.pop(p, None)
