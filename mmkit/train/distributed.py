"""Process-group setup and model parallelisation, applied outside the model in one fixed order:
activation checkpointing, then ``torch.compile``, then FSDP2 (``fully_shard``) or DDP.

``compile="step"`` on several processes: under DDP the compiled module is wrapped as it is. DDP's
gradient hooks fire as the compiled backward hands the gradients over, all at its end, so the bucket
all-reduces follow the backward instead of overlapping it (for the released FLAVA's 1.4 GB of fp32
gradients, roughly 10 ms on NVLink against steps of a few hundred milliseconds). FSDP2's hooks are
excluded from Dynamo (``torch._dynamo.disable``), so a graph cannot span a sharded layer's boundary:
with ``compile="step"`` the model is therefore ONE FSDP2 unit whose hooks run outside the compiled
``forward`` (parameters gathered once per step, gradients reduce-scattered once; optimiser state and
the resting parameters stay sharded). Where the whole model's parameters and gradients do not fit on
one device at once, use ``compile="layers"``, which keeps per-layer sharding.

Launch with ``torchrun`` (single node: ``--nproc_per_node=N``; several nodes: ``--nnodes=M
--node_rank=i --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT``); a plain ``python`` run is one
process without a process group.
"""

from __future__ import annotations

import os
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

from mmkit.train.protocols import require_parallelizable
from mmkit.utils.errors import InputError

#: what ``parallelize(compile=...)`` compiles: nothing, each transformer layer, or the whole forward
COMPILE_MODES = ("none", "layers", "step")
CompileMode = Literal["none", "layers", "step"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``); NCCL on GPU, gloo on CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device, local) if device == "cuda" else torch.device(device)
    if device == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo", timeout=timedelta(minutes=30))
    return DistInfo(rank, world, local, dev)


def teardown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _check_options(strategy: str, compile: CompileMode | bool) -> CompileMode:
    if strategy not in ("ddp", "fsdp", "none"):
        raise InputError(f"strategy must be 'ddp', 'fsdp' or 'none', got {strategy!r}")
    if isinstance(compile, bool):
        compile = "layers" if compile else "none"
    if compile not in COMPILE_MODES:
        raise InputError(f"compile must be one of {', '.join(COMPILE_MODES)}, got {compile!r}")
    return compile


def parallelize(
    model: nn.Module,
    info: DistInfo,
    strategy: str = "ddp",
    activation_checkpointing: bool = False,
    compile: CompileMode | bool = "none",
    bf16_params: bool = False,
    find_unused_parameters: bool = True,
    compile_options: dict[str, Any] | None = None,
) -> nn.Module:
    """Wrap ``model`` for training.

    Args:
        model: a module implementing :class:`~mmkit.train.Parallelizable` (its ``shard_units`` and
            ``gathering_losses`` are what the options below act on; an :class:`InputError` names them when
            missing).
        strategy: ``"ddp"``, ``"fsdp"`` (FSDP2: each shard unit and the root sharded; the root
            alone with ``compile="step"``), or ``"none"``. Ignored (no wrapper) with one process.
        activation_checkpointing: each shard unit's activations recomputed in backward
            (:func:`checkpoint_units`).
        compile: ``"none"``; ``"layers"``: ``torch.compile`` each shard unit; ``"step"``: the
            whole forward with its losses, one graph per batch kind (``fullgraph=True``, static
            shapes, so a graph break or a data-dependent shape is an error rather than a silent
            slowdown, and the backward is compiled with it); a model with ``set_static_shapes``
            (FLAVA's masked objectives) is switched to its static-shape path first. The module is
            compiled in place, so parameter and state-dict names do not change. Under FSDP2 the
            model is then one sharded unit (see the module's docstring); on several processes each of
            ``gathering_losses`` needs ``rows_per_rank`` set (its gather then compiles into the step).
            ``True`` / ``False`` mean ``"layers"`` / ``"none"``.
        bf16_params: FSDP2 mixed precision (bf16 compute, fp32 reductions).
        find_unused_parameters: DDP only. FLAVA needs it (an image batch never touches the text
            encoder); a model whose every forward uses every parameter (the dVAE) turns it off and
            saves a traversal of the autograd graph per step.
        compile_options: more ``torch.compile`` arguments (``backend``, ``mode``, ``options``).
    """
    compile = _check_options(strategy, compile)
    units = require_parallelizable(model).shard_units()
    if activation_checkpointing:
        checkpoint_units(units)
    sharded = info.world_size > 1 and strategy == "fsdp"
    if _compile(model, compile, units, info.world_size, sharded, dict(compile_options or {})):
        units = []  # the compiled step under FSDP2: one unit
    if info.world_size == 1 or strategy == "none":
        return model
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters,
        )
    return _fully_shard(model, units, bf16_params)


def checkpoint_units(units: list[nn.Module]) -> None:
    """Activation checkpointing: each unit's forward runs under ``torch.utils.checkpoint`` (non-reentrant, the
    RNG state preserved, so dropout replays) while gradients are enabled, and its activations are recomputed
    in backward. The units are changed in place (no wrapper module: parameter names stay); a unit already
    checkpointed is left as it is. Inside FSDP2's hooks and ``torch.compile`` alike."""
    for unit in units:
        if getattr(unit.forward, "__func__", None) is not _checkpointed_forward:
            unit.forward = types.MethodType(_checkpointed_forward, unit)  # bound: a deep copy rebinds to the copy


def _checkpointed_forward(unit: nn.Module, *args: Any, **kwargs: Any) -> Any:
    """``unit``'s own forward, checkpointed while gradients are enabled."""
    forward = type(unit).forward
    if torch.is_grad_enabled():
        return checkpoint(forward, unit, *args, use_reentrant=False, **kwargs)
    return forward(unit, *args, **kwargs)


def _compile(
    model: nn.Module, mode: CompileMode, units: list[nn.Module], world_size: int, sharded: bool, options: dict
) -> bool:
    """Compile ``model`` (a :class:`~mmkit.train.Parallelizable`) in place as ``mode`` says; True where FSDP2
    must then shard it as one unit."""
    if mode == "layers":
        for unit in units:
            unit.compile(**options)
    if mode != "step":
        return False
    names = {id(m): name or "the model" for name, m in model.named_modules()}
    losses = model.gathering_losses() if world_size > 1 else []
    unbounded = [names.get(id(loss), type(loss).__name__) for loss in losses if loss.rows_per_rank is None]
    if unbounded:
        raise InputError(
            f"compile='step' on {world_size} processes: set rows_per_rank (the per-rank batch size) on "
            f"{', '.join(unbounded)}, so that the contrastive gather compiles into the step without a host sync"
        )
    if hasattr(model, "set_static_shapes"):
        model.set_static_shapes(True)
    options = {"fullgraph": True, "dynamic": False, **options}
    if sharded:  # FSDP2's hooks must run outside the graph: compile forward, not the hooked call
        model.forward = torch.compile(model.forward, **options)
    else:
        model.compile(**options)
    return sharded


def _fully_shard(model: nn.Module, units: list[nn.Module], bf16_params: bool) -> nn.Module:
    """FSDP2: each of ``units`` (none: the model is one unit), then the root; frozen modules (the
    image tokenizer) stay whole on every rank: sharding them would only add an all-gather per step,
    and they have no gradients or optimiser state to save memory on."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    frozen = {p for p in model.parameters() if not p.requires_grad}
    for unit in units:
        fully_shard(unit, **kwargs)
    fully_shard(model, ignored_params=frozen or None, **kwargs)
    return model


@contextmanager
def full_parameters(model: nn.Module) -> Iterator[nn.Module]:
    """Make every parameter of ``model`` a whole local tensor for the duration of the block.

    Under FSDP2 the parameters of a ``fully_shard``-ed module are sharded ``DTensor``s between
    forwards, so calling a submodule directly (``model.encoder(x)`` for evaluation) fails with
    "mixed torch.Tensor and DTensor". This all-gathers them (``unshard``) and shards them again on
    exit. Every rank must enter it together (it is a collective). Without FSDP2 it does nothing.
    """
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in sharded:
        m.unshard()
    try:
        yield model
    finally:
        for m in reversed(sharded):
            m.reshard()


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict as plain CPU tensors (names without wrapper prefixes).

    Under FSDP2 the shards are all-gathered, so every rank must call it; the gathered copy is kept on
    CPU and only rank 0's result is complete (other ranks may get an empty dict): write it from rank 0.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().contiguous().cpu() for k, v in full.items()}
