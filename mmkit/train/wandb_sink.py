"""Weights & Biases as one more sink of :class:`~mmkit.train.metrics.MetricsLogger` (optional: ``pip install -e
".[wandb]"``).

The W&B run's id is kept in ``<run_dir>/wandb_run_id``: a resumed run continues the same W&B run. Its files
go under the run directory (``dir``), so ``WANDB_MODE=offline`` writes ``<run_dir>/wandb/offline-run-*``
(``wandb sync`` uploads them later); every other ``WANDB_*`` variable works as W&B documents.
"""

from __future__ import annotations

import importlib
import secrets
from pathlib import Path
from typing import Any

from mmkit.utils.errors import InputError

__all__ = ["ID_FILE", "WandbSink", "require_wandb"]

#: the file in the run directory that holds the W&B run's id
ID_FILE = "wandb_run_id"


def require_wandb() -> Any:
    """The ``wandb`` module, or one line naming the extra that installs it."""
    try:
        module = importlib.import_module("wandb")
    except ImportError:
        module = None
    if module is None:
        raise InputError('log.wandb=true needs the wandb package: pip install -e ".[wandb]" (or set log.wandb=false)')
    return module


class WandbSink:
    """One W&B run per run directory (rank 0 only): created, or resumed by the id in :data:`ID_FILE`.

    Args:
        run_dir: the run directory (W&B's ``dir``; holds the id file).
        project, entity, name: W&B's project, entity (None: the default) and run name (None: the directory's).
        config: the run's config, stored with the W&B run.
    """

    def __init__(
        self, run_dir: Path, project: str, entity: str | None, name: str | None, config: dict[str, Any] | None
    ) -> None:
        wandb = require_wandb()
        id_file = run_dir / ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
        self.run = wandb.init(
            project=project,
            entity=entity,
            name=name or run_dir.resolve().name,
            id=run_id,
            resume="allow",
            dir=str(run_dir),
            config=config or {},
        )
        if not id_file.is_file():
            id_file.write_text(run_id + "\n")
        self.run_id = run_id

    def log(self, step: int, values: dict[str, float]) -> None:
        """``values`` at ``step`` (W&B keeps the first of several logs of one key at one step)."""
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()
