"""The settings every pretraining recipe shares, and which of them a resume may change.

A recipe's config subclasses :class:`RunConfig` (adding its model keys: ``preset``, ``model``, ...)
and its data config :class:`PairDataConfig` (adding its own sources and mixing). The rule of what a
checkpoint's run and the resuming run must share is one function, :func:`frozen_fields`: everything
a recipe adds, the seed, the gradient accumulation (``optim.grad_accum`` and which batch the contrastive
loss sees, ``optim.contrastive_per_micro_batch``) and every data setting, except those that only
change how data is read (``data.max_bad_fraction``, ``data.storage_options``, and
``data.num_workers`` when streamed: the rest of each begun epoch is dealt to the new workers).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Literal

from mmkit.eval import HealthConfig
from mmkit.train import PRECISIONS, CheckpointConfig, LogConfig, OptimConfig, PerfConfig
from mmkit.utils import MAX_SAMPLE_BYTES, InputError, at_least, choice, fraction

__all__ = ["RESUMABLE", "PairDataConfig", "PretrainOptimConfig", "RunConfig", "frozen_fields", "whole_batch"]


@dataclass
class PretrainOptimConfig(OptimConfig):
    """The ``optim`` section of a pretraining recipe: :class:`~mmkit.train.OptimConfig` and which batch the
    contrastive loss sees under gradient accumulation."""

    # With grad_accum = K > 1 the contrastive loss (CLIP's, SigLIP's, FLAVA's global one) sees the whole
    # accumulated batch, K x batch_size x ranks rows, as one step on a K-times larger batch would: two passes,
    # about one extra forward of the towers per micro-batch (mmkit.train.whole_batch). true: each micro-batch's
    # loss sees its own batch_size x ranks rows only (no extra forward).
    contrastive_per_micro_batch: bool = False


@dataclass
class PairDataConfig:
    """Image-text pairs, held-out pairs and a text tokenizer (every key ``data.*``)."""

    dataset: str = choice("shapes", "files")  # shapes: the built-in set, made on first use
    train_pairs: list[str] = field(default_factory=list)  # tar shard patterns, local or URLs
    val_pairs: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)  # text files (a tokenizer is trained on them if none is given)
    tokenizer: str | None = None  # vocab.txt / tokenizer.json / directory; None: train one on the text data
    vocab_size: int = at_least(1, 1000)
    max_length: int = at_least(1, 32)
    batch_size: int = at_least(1, 32)  # per rank
    num_workers: int = at_least(0, 1)
    random_crop: bool = False
    max_bad_fraction: float = fraction(0.01)  # of the records read, before the run stops
    # the largest sample file read (a tar member, an image): larger ones are named skips (mmkit.utils.bounded)
    max_sample_bytes: int = at_least(1, MAX_SAMPLE_BYTES)
    # Tar shards are streamed (read front to back: any size, local or s3:// gs:// http(s)://, memory of
    # one shuffle window per worker) unless streaming=false (index mode: local files, every header read at start).
    streaming: bool = True
    shuffle_buffer: int = at_least(1, 1000)  # streaming: samples per shuffle window per data worker
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options, e.g. {endpoint_url: ...}
    # worker: PIL in the data workers; device: JPEGs decoded on the training device (nvJPEG on CUDA)
    image_decode: str = choice("worker", "device")


#: top-level settings a resume may change (everything else a recipe's config holds is frozen)
RESUMABLE = (
    "run_dir",
    "optim",
    "checkpoint",
    "distributed",
    "precision",
    "activation_checkpointing",
    "compile",
    "meta_init",
    "log_every",
    "eval_every",
    "eval_samples",
    "eval_at_start",
    "health",
    "max_nonfinite",
    "progress",
    "log",
    "perf",
)
#: data settings that change how data is read, not what is read
DATA_RESUMABLE = ("max_bad_fraction", "max_sample_bytes", "storage_options")


@dataclass
class RunConfig:
    """The runtime every pretraining recipe shares (``mmkit.train``): where, how many processes, precision,
    compilation, optimiser, checkpoints, logging, evaluation and health checks."""

    run_dir: str = "runs/run"
    seed: int = 0
    data: PairDataConfig = field(default_factory=PairDataConfig)
    optim: PretrainOptimConfig = field(default_factory=PretrainOptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: str = choice("ddp", "fsdp", "none")
    precision: str = choice(*PRECISIONS)
    activation_checkpointing: bool = False
    # none | layers (torch.compile each transformer layer) | step (the whole step as one graph; FSDP2: one unit)
    compile: Literal["none", "layers", "step"] = "none"
    # build the model on the meta device and materialise it after wrapping (FSDP2: each rank allocates only
    # its shard); the initial weights follow the same rules but are other draws than meta_init=false's
    meta_init: bool = False
    log_every: int = at_least(1, 10)
    eval_every: int = at_least(1, 1000)
    eval_samples: int = at_least(1, 512)  # held-out pairs scored at each evaluation (the first ones)
    eval_at_start: bool = True
    health: HealthConfig = field(default_factory=HealthConfig)  # when an evaluation calls the run stuck
    max_nonfinite: int = at_least(1, 5)  # non-finite steps in a row before the run stops
    progress: bool = True
    log: LogConfig = field(default_factory=LogConfig)  # Weights & Biases (log.wandb) beside metrics.jsonl
    perf: PerfConfig = field(default_factory=PerfConfig)  # the device peak perf/mfu is measured against

    #: settings a recipe adds that a resume may change too (e.g. how often something is measured)
    resumable: ClassVar[tuple[str, ...]] = ()


def frozen_fields(cfg: RunConfig) -> tuple[str, ...]:
    """The dotted names whose values a checkpoint's run and a resuming run must share (see the module docs)."""
    changeable = {*RESUMABLE, *cfg.resumable, "data"}
    top = tuple(f.name for f in fields(cfg) if f.name not in changeable)
    data = tuple(
        f"data.{f.name}"
        for f in fields(cfg.data)
        if f.name not in DATA_RESUMABLE and not (cfg.data.streaming and f.name == "num_workers")
    )
    return (*top, "optim.grad_accum", "optim.contrastive_per_micro_batch", *data)


def whole_batch(cfg: RunConfig) -> bool:
    """Whether a step of ``cfg`` takes its contrastive loss over the whole accumulated batch in two passes
    (``optim.grad_accum > 1`` without ``optim.contrastive_per_micro_batch``).

    Raises:
        InputError: with ``compile: step``, which cannot hold the two passes in one graph.
    """
    two_passes = cfg.optim.grad_accum > 1 and not cfg.optim.contrastive_per_micro_batch
    if two_passes and cfg.compile == "step":
        raise InputError(
            f"compile=step with optim.grad_accum={cfg.optim.grad_accum}: the whole-batch contrastive loss runs in "
            "two passes that one compiled graph cannot hold; set compile=layers, or "
            "optim.contrastive_per_micro_batch=true (each micro-batch's loss on its own rows)"
        )
    return two_passes
