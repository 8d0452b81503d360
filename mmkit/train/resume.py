"""Resume rules: a resumed run is the run that was saved, or a clear error says what differs.

* Fields that define *what* is trained (the model's shape, the data sources, the batch size, the
  seed, ...) must equal the checkpoint's: a difference is a :class:`ResumeError` naming each field.
  Each recipe lists its frozen fields (dotted prefixes: ``"model"`` covers every model field).
* Every other field may change and the new value is used: an explicitly changed ``optim.lr`` takes
  effect (see :class:`SchedulerState`), a longer ``optim.total_steps`` extends the run. Each change
  is printed.
* ``checkpoint.resume=auto`` takes the newest complete checkpoint; if it cannot be read (truncated
  or corrupt files) the previous complete one is tried, with a warning. An explicit path that
  cannot be read is an error. Resuming from step ``s`` sets later checkpoints aside (lineage).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmkit.train.checkpoint import CheckpointError, CheckpointManager, Stateful
from mmkit.utils import config_to_dict
from mmkit.utils.errors import InputError

logger = logging.getLogger(__name__)


class ResumeError(InputError):
    """The checkpoint does not belong to this run's configuration."""


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, Mapping):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out or {prefix.rstrip("."): {}}
    if isinstance(d, tuple):
        d = list(d)
    return {prefix.rstrip("."): d}


def _under(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted key: (saved value, current value)}`` for every leaf that differs."""
    a, b = _flatten(saved), _flatten(current)
    return {k: (a.get(k, "<absent>"), b.get(k, "<absent>")) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def check_resume_config(
    saved: Mapping[str, Any], current: Mapping[str, Any], frozen: Sequence[str], where: str | Path = "checkpoint"
) -> list[str]:
    """Compare configs; return the (allowed) changes as readable lines.

    Raises:
        ResumeError: naming every frozen field that differs.
    """
    diffs = config_differences(saved, current)
    bad = {k: v for k, v in diffs.items() if _under(k, frozen)}
    if bad:
        fields = "; ".join(f"{k}: checkpoint {a!r}, config {b!r}" for k, (a, b) in bad.items())
        raise ResumeError(
            f"cannot resume from {where}: these settings differ from the run that was saved: {fields}. "
            "Resume with the saved values, or start a new run (another run_dir, or checkpoint.resume=none)"
        )
    return [f"{k}: {a!r} -> {b!r}" for k, (a, b) in diffs.items()]


class SchedulerState:
    """A learning-rate scheduler as a checkpointed component whose *configured* base rates win.

    The saved state gives the position in the schedule; the base learning rates come from this
    run's config, so resuming with a changed ``optim.lr`` uses the new rate from the next step on.
    """

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler
        self.base_lrs = list(scheduler.base_lrs)

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        s = self.scheduler
        s.load_state_dict(state)
        s.base_lrs = list(self.base_lrs)
        for group, base in zip(s.optimizer.param_groups, self.base_lrs, strict=True):
            group["initial_lr"] = base
        if isinstance(s, torch.optim.lr_scheduler.LambdaLR):  # recomputed at last_epoch from the configured bases
            lrs = [base * rate(s.last_epoch) for base, rate in zip(s.base_lrs, s.lr_lambdas, strict=True)]
        else:
            lrs = s._last_lr
        for group, lr in zip(s.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        s._last_lr = list(lrs)


def resume(
    ckpt: CheckpointManager,
    spec: str | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    components: Mapping[str, Stateful],
    config: Any,
    frozen: Sequence[str],
    log=print,
) -> dict[str, Any] | None:
    """Restore the run from ``spec`` (``auto`` | ``none`` | a checkpoint path); returns the loaded
    checkpoint's meta, or None when the run starts fresh.

    Raises:
        ResumeError: the checkpoint's config differs in a frozen field.
        CheckpointError / FileNotFoundError: an explicit checkpoint cannot be read.
    """
    current = config_to_dict(config)
    if spec in (None, "", "none"):
        retired = ckpt.retire_after(0)
        if retired:
            log(f"checkpoint.resume=none: set aside {len(retired)} earlier checkpoint(s) (*.abandoned)")
        return None
    candidates = list(reversed(ckpt.complete())) if spec == "auto" else [Path(spec)]
    for i, path in enumerate(candidates):
        meta = ckpt.read_meta(path)
        changes = check_resume_config(meta.get("config", {}), current, frozen, path)
        try:
            meta = ckpt.load(path, model, optimizer, components)
            failed = None
        except (CheckpointError, OSError) as e:
            failed = e
        if ckpt.comm.any(failed is not None)[0]:  # every rank takes the same fallback
            if spec != "auto":
                raise CheckpointError(f"cannot resume from {path}: {failed or 'another rank failed to load it'}")
            older = candidates[i + 1] if i + 1 < len(candidates) else None
            logger.warning("checkpoint %s cannot be loaded (%s); trying %s", path, failed, older)
            log(f"WARNING: checkpoint {path} cannot be loaded ({failed}); falling back to {older}")
            continue
        _report_resume(ckpt, path, meta, changes, log)
        return meta
    if candidates:  # never start "fresh" from weights a failed load may have half-written
        raise CheckpointError(
            f"no checkpoint in {ckpt.directory} can be loaded (tried {', '.join(p.name for p in candidates)}); "
            "move them aside or set checkpoint.resume=none to start over"
        )
    return None


def _report_resume(ckpt: CheckpointManager, path: Path, meta: dict[str, Any], changes: list[str], log) -> None:
    """Set aside checkpoints newer than the one resumed and say what the resume changed."""
    retired = ckpt.retire_after(meta["step"])
    if retired:
        log(f"resumed from an older step: set aside {', '.join(p.name for p in retired)} (*.abandoned)")
    for line in changes:
        log(f"config changed since the checkpoint: {line}")
    if meta.get("elastic_workers") and not meta.get("elastic_from"):
        log(
            "elastic resume: the data workers changed since the checkpoint; the rest of every begun data "
            "epoch is dealt to the new workers"
        )
    if meta.get("elastic_from"):
        log(
            f"elastic resume: the checkpoint was written by {meta['elastic_from']} rank(s), this run has "
            f"{ckpt.comm.world_size}; the rest of every begun data epoch is dealt to the new ranks"
        )
    log(f"resumed from {path} at step {meta['step']}")
