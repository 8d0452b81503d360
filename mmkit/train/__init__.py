"""Training pieces the recipes share: distributed setup and wrapping, optimisation, checkpoints, metrics."""

from mmkit.train.checkpoint import (
    CheckpointConfig,
    CheckpointManager,
    recipe_arg_parser,
    rng_state,
    run_recipe,
    run_training,
    set_rng_state,
)
from mmkit.train.distributed import DistInfo, parallelize, setup_distributed, teardown_distributed
from mmkit.train.metrics import MetricsLogger, plot_run, read_metrics, summarize_run
from mmkit.train.optim import adamw_param_groups, warmup_cosine, warmup_cosine_scheduler

__all__ = [
    "CheckpointConfig",
    "CheckpointManager",
    "DistInfo",
    "MetricsLogger",
    "adamw_param_groups",
    "parallelize",
    "plot_run",
    "read_metrics",
    "recipe_arg_parser",
    "rng_state",
    "run_recipe",
    "run_training",
    "set_rng_state",
    "setup_distributed",
    "summarize_run",
    "teardown_distributed",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
