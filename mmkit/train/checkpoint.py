"""Atomic, resumable training checkpoints on PyTorch Distributed Checkpoint (DCP).

Layout of ``<dir>/step_00001234/``:

* DCP files for ``{"model", "optim"}``, taken with ``torch.distributed.checkpoint.state_dict``
  (works for plain, DDP and FSDP2 models; sharded tensors are written by every rank);
* ``rank<r>.pt``: what is per rank (data-loader position, RNG states) plus the scheduler and
  the step;
* ``COMPLETE``: written last.

A checkpoint is written under ``step_N.tmp`` and renamed to ``step_N`` by rank 0 after every
rank finished, so a crash while saving leaves the previous checkpoint intact and the partial
one invisible. ``latest()`` only considers complete directories; older ones beyond ``keep``
are deleted after a successful save.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _barrier() -> None:
    if _world() > 1:
        dist.barrier()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class CheckpointConfig:
    """The ``checkpoint`` section every recipe shares: save ``every`` steps, keep the last ``keep``,
    ``resume`` = ``"auto"`` (the latest complete checkpoint, if any) | ``"none"`` | a checkpoint path."""

    every: int = 1000
    keep: int = 3
    resume: str = "auto"


def recipe_arg_parser(doc: str | None):
    """The command line every recipe shares: ``--config FILE`` and ``key=value`` overrides."""
    import argparse

    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. optim.lr=3e-4")
    return parser


def run_training(recipe) -> int:
    """``setup()`` then ``train()``, the process group torn down whatever happens; with several
    processes on one machine each takes its share of the CPU threads."""
    from mmkit.train.distributed import teardown_distributed

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    try:
        recipe.setup()
        recipe.train()
    finally:
        teardown_distributed()
    return 0


def run_recipe(recipe_cls: type, load_config, doc: str | None, argv: list[str] | None = None) -> int:
    """Parse ``--config FILE key=value ...``, build ``recipe_cls(load_config(...))`` and run it."""
    args = recipe_arg_parser(doc).parse_args(argv)
    return run_training(recipe_cls(load_config(args.config, args.overrides)))


class CheckpointManager:
    """Save / find / load training checkpoints in ``directory``.

    Args:
        directory: where ``step_*`` folders go.
        keep: how many complete checkpoints to keep (older ones are deleted).
    """

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        self.directory = Path(directory)
        self.keep = keep
        if _rank() == 0:
            self.directory.mkdir(parents=True, exist_ok=True)
            for stale in self.directory.glob("step_*.tmp"):  # a save that never finished
                shutil.rmtree(stale, ignore_errors=True)
        _barrier()

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        found = [p for p in self.directory.glob("step_*") if p.is_dir() and (p / "COMPLETE").exists()]
        return sorted(found, key=lambda p: int(p.name.split("_")[1]))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def save(
        self,
        step: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any] | None = None,
    ) -> Path:
        """Write a checkpoint of ``step``; ``extra`` (per rank) holds scheduler, data and RNG state."""
        final = self.directory / f"step_{step:08d}"
        tmp = self.directory / f"step_{step:08d}.tmp"
        if _rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        _barrier()
        model_sd, optim_sd = get_state_dict(model, optimizer)
        dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp))
        torch.save({"step": step, **(extra or {})}, tmp / f"rank{_rank()}.pt")
        _barrier()
        if _rank() == 0:
            (tmp / "COMPLETE").write_text(f"step {step}, world size {_world()}\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in self.complete()[: -self.keep] if self.keep > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """Restore model and optimiser in place; returns this rank's ``extra`` dict (with ``step``).

        Raises:
            FileNotFoundError: if the checkpoint is incomplete or missing.
            ValueError: if it was written by a different number of ranks (data positions are per rank).
        """
        path = Path(path)
        if not (path / "COMPLETE").exists():
            raise FileNotFoundError(f"{path} is not a complete checkpoint (no COMPLETE marker)")
        ranks = sorted(path.glob("rank*.pt"))
        if len(ranks) != _world():
            raise ValueError(
                f"{path} was written by {len(ranks)} rank(s) but this run has {_world()}: "
                "resume with the same number of processes"
            )
        model_sd, optim_sd = get_state_dict(model, optimizer)
        # Weights strictly: every one must be in the checkpoint.
        model_state = {"model": model_sd}
        dcp.load(model_state, checkpoint_id=str(path))
        set_model_state_dict(model, model_state["model"])
        # Optimiser state partially: a parameter that never had a gradient before the save (an
        # unused pooler, or the image side when only text batches came so far) has no state.
        optim_state = {"optim": optim_sd}
        dcp.load(optim_state, checkpoint_id=str(path), planner=DefaultLoadPlanner(allow_partial_load=True))
        set_optimizer_state_dict(model, optimizer, optim_state["optim"], options=StateDictOptions(strict=False))
        # get_state_dict gave every parameter a fresh state; those without a saved one must have
        # none, or Adam's step count (and so its bias correction) would differ from the original run.
        meta = dcp.FileSystemReader(str(path)).read_metadata().state_dict_metadata
        saved = {k.removeprefix("optim.state.").rsplit(".", 1)[0] for k in meta if k.startswith("optim.state.")}
        for name, p in model.named_parameters():
            if name.removeprefix("module.") not in saved:
                optimizer.state.pop(p, None)
        return torch.load(path / f"rank{_rank()}.pt", weights_only=False)
