"""The training runtime every recipe shares.

* :mod:`~mmkit.train.context`: :func:`start_run` -> :class:`RunContext` (process group, device,
  run directory, resolved config, SIGTERM, fault hooks); :mod:`~mmkit.utils.run_lock`: one writer
  per run directory.
* :mod:`~mmkit.train.collectives`: :class:`Collectives`, the only way training code talks to
  other ranks (tensors on the process group's device).
* :mod:`~mmkit.train.step`: :class:`TrainStep` (accumulation, autocast, GradScaler, clipping, the
  agreed non-finite skip; on the device, without a host read, with a fused optimiser);
  :mod:`~mmkit.train.whole_batch`: accumulation whose contrastive loss sees the whole accumulated batch.
* :mod:`~mmkit.train.loop`: :func:`prepare_training`, :class:`TrainState` (checkpointed components),
  :func:`train_loop`.
* :mod:`~mmkit.train.checkpoint` and :mod:`~mmkit.train.resume`: atomic DCP checkpoints, resume rules.
* :mod:`~mmkit.train.protocols`: :class:`Parallelizable`, what a trained model tells the runtime (its shard
  units and its gathering losses) instead of the runtime guessing from names.
* :mod:`~mmkit.train.distributed` (setup, DDP/FSDP2 wrapping), :mod:`~mmkit.train.optim` (AdamW
  groups, warmup-cosine), :mod:`~mmkit.train.metrics` (JSONL, TensorBoard, W&B through
  :mod:`~mmkit.train.wandb_sink`, plots), :mod:`~mmkit.train.perf` (where the time goes: FLOPs, MFU, data wait),
  :mod:`~mmkit.train.cli` (the shared command line; :class:`TrainingRecipe`, what it runs).
"""

from mmkit.train.checkpoint import (
    CheckpointConfig,
    CheckpointError,
    CheckpointManager,
    CheckpointSaveError,
    RNGState,
    rng_state,
    set_rng_state,
)
from mmkit.train.cli import TrainingRecipe, debug_enabled, recipe_arg_parser, run_cli, run_recipe, run_training
from mmkit.train.collectives import Collectives
from mmkit.train.context import RunContext, start_run
from mmkit.train.distributed import (
    COMPILE_MODES,
    CompileMode,
    DistInfo,
    checkpoint_units,
    full_parameters,
    full_state_dict,
    parallelize,
    setup_distributed,
    teardown_distributed,
)
from mmkit.train.loop import (
    Counters,
    LogWindow,
    LoopOptions,
    NonFiniteError,
    TrainState,
    loop_options,
    memory_mib,
    prepare_training,
    read_scalar,
    train_loop,
    unwrap,
)
from mmkit.train.metrics import LogConfig, MetricsLogger, plot_run, read_metrics, summarize_run
from mmkit.train.optim import (
    OptimConfig,
    adamw_param_groups,
    build_optimizer,
    warmup_cosine,
    warmup_cosine_scheduler,
)
from mmkit.train.perf import PerfConfig, PerfMeter, count_flops, peak_flops
from mmkit.train.protocols import Parallelizable, require_parallelizable
from mmkit.train.resume import ResumeError, SchedulerState, check_resume_config
from mmkit.train.step import (
    PRECISIONS,
    GradNormProbe,
    StepOptions,
    StepOutcome,
    TrainStep,
    autocast,
    make_grad_scaler,
    objective_grad_norms,
)
from mmkit.train.whole_batch import WholeBatchForward
from mmkit.utils.run_lock import RunDirInUseError, RunDirLock

__all__ = [
    "COMPILE_MODES",
    "PRECISIONS",
    "CheckpointConfig",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointSaveError",
    "Collectives",
    "CompileMode",
    "Counters",
    "DistInfo",
    "GradNormProbe",
    "LogConfig",
    "LogWindow",
    "LoopOptions",
    "MetricsLogger",
    "NonFiniteError",
    "OptimConfig",
    "Parallelizable",
    "PerfConfig",
    "PerfMeter",
    "RNGState",
    "ResumeError",
    "RunContext",
    "RunDirInUseError",
    "RunDirLock",
    "SchedulerState",
    "StepOptions",
    "StepOutcome",
    "TrainState",
    "TrainStep",
    "TrainingRecipe",
    "WholeBatchForward",
    "adamw_param_groups",
    "autocast",
    "build_optimizer",
    "check_resume_config",
    "checkpoint_units",
    "count_flops",
    "debug_enabled",
    "full_parameters",
    "full_state_dict",
    "loop_options",
    "make_grad_scaler",
    "memory_mib",
    "objective_grad_norms",
    "parallelize",
    "peak_flops",
    "plot_run",
    "prepare_training",
    "read_metrics",
    "read_scalar",
    "recipe_arg_parser",
    "require_parallelizable",
    "rng_state",
    "run_cli",
    "run_recipe",
    "run_training",
    "set_rng_state",
    "setup_distributed",
    "start_run",
    "summarize_run",
    "teardown_distributed",
    "train_loop",
    "unwrap",
    "warmup_cosine",
    "warmup_cosine_scheduler",
]
