"""The built-in dataset's image tokenizer: a small dVAE trained once on the shapes pictures, beside them.

FLAVA's demo trains masked-image modelling on the ids of a tokenizer that knows its pictures (a random
one's ids carry almost nothing). :func:`make_builtin_tokenizer` makes it on first use: the dVAE recipe
run in a child process, then the built-in shards rewritten with its ids cached
(``python -m mmkit.data.token_cache``), so pretraining reads the ids instead of running the tokenizer
in the step.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mmkit.utils import StateError, file_lock

__all__ = ["TORCHRUN_VARIABLES", "make_builtin_tokenizer"]

#: the launcher's variables, kept from the child so that it runs as one process of its own
TORCHRUN_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
)


def _train_command(paths, root: Path, script: Path, config: Path, steps: int | None) -> list[str]:
    pictures = json.dumps([str(p) for p in (*paths.train_pairs, *paths.images)])  # what data.dataset=shapes reads
    cmd = [
        sys.executable,
        str(script),
        "--config",
        str(config),
        f"run_dir={root / 'run'}",
        "distributed=none",
        "progress=false",
        "checkpoint.resume=none",
        "data.dataset=files",
        f"data.images={pictures}",
        f"data.val_images={json.dumps([str(p) for p in paths.val_pairs])}",
    ]
    if steps is not None:
        cmd += [
            f"optim.total_steps={steps}",
            f"objective.temperature_steps={steps}",
            "optim.warmup_steps=1",
            f"objective.kl_warmup_steps={steps}",
            f"checkpoint.every={steps}",
            f"eval_every={steps}",
            f"image_every={steps}",
        ]
    return cmd


def make_builtin_tokenizer(
    paths, script: Path, config: Path, steps: int | None = None
) -> tuple[Path, list[Path], list[Path]]:
    """The built-in data's image tokenizer, made once beside the data (``<data>-dvae/``) and remade when
    its ``config`` changes: ``script`` (``recipes/dalle/train_tokenizer.py``) trains ``config`` in one
    process, then the training pairs and images get its ids cached. Every rank may call this: one makes
    it under a file lock, the others wait.

    Args:
        paths: the built-in set (:class:`~mmkit.data.ShapesPaths`).
        script, config: the dVAE recipe and its config (``recipes/dalle/configs/shapes_tiny.yaml``).
        steps: a shorter training (tests).

    Returns:
        ``(tokenizer folder, cached training pair shards, cached image shards)``.

    Raises:
        StateError: the training failed (its stderr's end in the message).
    """
    from mmkit.data.token_cache import main as cache_ids

    root = Path(paths.root).parent / f"{Path(paths.root).name}-dvae"
    spec = f"{config.name} {hashlib.sha256(config.read_bytes()).hexdigest()[:16]}"
    done = root / "DONE"

    def listing() -> tuple[Path, list[Path], list[Path]]:
        return root / "final", sorted((root / "pairs").glob("*.tar")), sorted((root / "images").glob("*.tar"))

    if done.is_file() and done.read_text() == spec:
        return listing()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):
        if done.is_file() and done.read_text() == spec:
            return listing()
        print(f"making the built-in image tokenizer (once, in {root}): {config.name}", file=sys.stderr, flush=True)
        env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARIABLES}
        env.update(OMP_NUM_THREADS=str(os.cpu_count() or 1))
        run = subprocess.run(
            _train_command(paths, root, script, config, steps), env=env, capture_output=True, text=True
        )
        if run.returncode:
            raise StateError(f"training the built-in image tokenizer failed:\n{run.stderr[-3000:]}")
        shutil.rmtree(root / "final", ignore_errors=True)  # a half-made one from an interrupted first use
        os.replace(root / "run" / "final", root / "final")
        for name, shards in (("pairs", paths.train_pairs), ("images", paths.images)):
            cache_ids(
                [
                    "--shards",
                    *map(str, shards),
                    "--tokenizer",
                    str(root / "final"),
                    "--out",
                    str(root / name),
                    "--device",
                    "cpu",
                ]
            )
        done.write_text(spec)
    return listing()
