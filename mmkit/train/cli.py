"""The command line every recipe shares.

``--config FILE`` (YAML) plus ``key=value`` overrides; :func:`run_recipe` builds the recipe (a
:class:`TrainingRecipe`), runs ``setup()`` then ``train()``, and always closes the run and tears the process
group down. A user error (one of
:mod:`mmkit.utils.errors`' types: a bad config value, a missing file, a checkpoint that does not fit)
prints one line, ``error: ...``, and exits with status 2; ``--debug`` or ``MMKIT_DEBUG=1`` shows the
full traceback instead. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Callable
from typing import Any

import torch

from mmkit.train.context import RunContext
from mmkit.train.distributed import teardown_distributed
from mmkit.train.metrics import plot_run, summarize_run
from mmkit.utils.errors import debug_requested, run_cli


def recipe_arg_parser(doc: str | None) -> argparse.ArgumentParser:
    """``--config FILE``, ``--debug``, ``--plot RUN_DIR`` and ``key=value`` overrides."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config file")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks (also MMKIT_DEBUG=1)")
    parser.add_argument("--plot", metavar="RUN_DIR", help="plot and summarise a finished run, then exit")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. optim.lr=3e-4")
    return parser


def debug_enabled(args: argparse.Namespace | None = None) -> bool:
    """``--debug`` on the command line, or ``MMKIT_DEBUG`` set."""
    return debug_requested(bool(getattr(args, "debug", False)))


class TrainingRecipe:
    """What :func:`run_training` runs, and the base of every recipe: ``setup()`` builds the run (starting with
    :func:`~mmkit.train.start_run`, kept as ``ctx``, and registering with ``ctx.closing`` what must be closed:
    the batch stream, the metrics logger), ``train()`` trains, ``close()`` ends the run however it ended."""

    ctx: RunContext | None = None

    def setup(self) -> None:
        raise NotImplementedError(f"{type(self).__name__}.setup")

    def train(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__}.train")

    def close(self, completed: bool = False) -> None:
        """Close what the run registered and release its directory (:meth:`RunContext.close`); when ``completed``
        (setup and train returned on this rank), first wait for every rank. Safe after a setup that failed part
        way, and a second time."""
        if self.ctx is not None:
            self.ctx.close(wait_for_ranks=completed)


def run_training(recipe: TrainingRecipe) -> int:
    """``setup()`` then ``train()``, then ``close()`` and the process group torn down whatever happens; with
    several processes on one machine each takes its share of the CPU threads."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    completed = False
    try:
        recipe.setup()
        recipe.train()
        completed = True
    finally:
        try:
            recipe.close(completed)
        finally:
            teardown_distributed()
    return 0


def run_recipe(recipe_cls: type, load_config: Callable, doc: str | None, argv: list[str] | None = None) -> int:
    """Parse ``--config FILE key=value ...``, build ``recipe_cls(load_config(...))`` and run it; with
    ``--plot RUN_DIR``, write that run's ``losses.png`` and print its summary instead."""
    args = recipe_arg_parser(doc).parse_intermixed_args(argv)

    def run() -> int:
        if args.plot:
            print(f"wrote {plot_run(args.plot)}")
            print(summarize_run(args.plot))
            return 0
        return run_training(recipe_cls(load_config(args.config, args.overrides)))

    code = run_cli(run, debug_enabled(args))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # the run joined a process group (setup_distributed)
        # The recipe is unreferenced now but for its cycles: after a 2-rank FSDP2 demo run, 146 FSDP states and
        # process groups were still alive here, freed only by this collection. Left to the interpreter's last
        # collection, a group's gloo threads may reach for the GIL while Python shuts down, and the process
        # dies of SIGABRT ("terminate called without an active exception") after its work is done: seen in 2
        # of 40 runs of a test worker (tests/conftest.py: spawn_ranks), none in 30 recipe runs; collected
        # here, they stop while Python still runs. A one-process run has no group to stop, and skips the
        # collection (0.2-0.5 s in a large process, such as a test session that runs recipes in turn).
        gc.collect()
    return code
