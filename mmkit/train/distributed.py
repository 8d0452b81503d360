"""Process-group setup and model parallelisation, applied outside the model in one fixed order:
activation checkpointing, then ``torch.compile``, then FSDP2 (``fully_shard``) or DDP.

Launch with ``torchrun`` (single node: ``--nproc_per_node=N``; several nodes: ``--nnodes=M
--node_rank=i --rdzv_backend=c10d --rdzv_endpoint=HOST:PORT``); a plain ``python`` run is one
process without a process group.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn


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


def parallelize(
    model: nn.Module,
    info: DistInfo,
    strategy: str = "ddp",
    activation_checkpointing: bool = False,
    compile: bool = False,
    bf16_params: bool = False,
) -> nn.Module:
    """Wrap ``model`` for training.

    Args:
        strategy: ``"ddp"``, ``"fsdp"`` (FSDP2: each transformer layer and the root sharded), or
            ``"none"``. Ignored (no wrapper) with one process.
        activation_checkpointing: per-layer, via the encoders' ``set_grad_checkpointing``.
        compile: ``torch.compile`` each transformer layer.
        bf16_params: FSDP2 mixed precision (bf16 compute, fp32 reductions).
    """
    if strategy not in ("ddp", "fsdp", "none"):
        raise ValueError(f"strategy must be 'ddp', 'fsdp' or 'none', got {strategy!r}")
    inner = getattr(model, "model", model)
    if activation_checkpointing and hasattr(inner, "set_grad_checkpointing"):
        inner.set_grad_checkpointing(True)
    layers = [m for m in model.modules() if type(m).__name__ == "TransformerLayer"]
    if compile:
        for layer in layers:
            layer.compile()
    if info.world_size == 1 or strategy == "none":
        return model
    if strategy == "ddp":
        # Each FLAVA batch kind uses a different part of the model (an image batch never touches
        # the text encoder), so DDP must look for unused parameters every step.
        return nn.parallel.DistributedDataParallel(
            model,
            device_ids=[info.device.index] if info.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16_params else None
    kwargs = {"mp_policy": mp} if mp is not None else {}
    # Frozen modules (the image tokenizer) stay whole on every rank: sharding them would only add
    # an all-gather per step, and they have no gradients or optimiser state to save memory on.
    frozen = {p for p in model.parameters() if not p.requires_grad}
    for layer in layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, ignored_params=frozen or None, **kwargs)
    return model
