"""Collectives that put their tensors on the process group's device.

NCCL reduces CUDA tensors only and gloo is happiest with CPU tensors, so a flag built with
``torch.tensor([...])`` (a CPU tensor) and all-reduced under NCCL crashes a multi-GPU run. Every
collective mmkit's training code makes goes through :class:`Collectives`, which moves its inputs to
the one device the process group was set up with (``DistInfo.device``: ``cuda:<local_rank>`` under
NCCL, ``cpu`` under gloo) and hands results back there. Recipes never call ``torch.distributed``
collectives directly (a test checks this).

With one process every method is the identity, so single-process runs need no special cases.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from mmkit.utils.errors import InputError

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


class Collectives:
    """Reductions, flags and barriers on one device.

    Args:
        device: the process group's device (tensors are moved there before every collective).
        world_size: number of processes; 1 makes every method local.
    """

    def __init__(self, device: torch.device, world_size: int = 1) -> None:
        self.device = torch.device(device)
        self.world_size = world_size

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_reduce(self, tensor: Tensor, op: str = "sum") -> Tensor:
        """``op`` (``sum`` | ``max`` | ``min``) of ``tensor`` over all ranks; returns a new tensor on
        :attr:`device` (the input is not modified)."""
        if op not in _OPS:
            raise InputError(f"op must be one of {sorted(_OPS)}, got {op!r}")
        out = tensor.detach().to(self.device, copy=True)
        if self.distributed:
            dist.all_reduce(out, op=_OPS[op])
        return out

    def any(self, *flags: bool | Tensor) -> list[bool]:
        """For each flag, whether it is true on any rank: one collective and one host read for all.

        Flags may be Python bools or 0-d/1-element tensors already on the device (read without a
        separate sync)."""
        parts = [f.detach().reshape(()).float() if isinstance(f, Tensor) else torch.tensor(float(f)) for f in flags]
        stacked = torch.stack([p.to(self.device) for p in parts])
        return [bool(v) for v in self.all_reduce(stacked, "max").tolist()]

    def barrier(self) -> None:
        """Wait for every rank (a no-op with one process)."""
        if not self.distributed:
            return
        if self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index if self.device.index is not None else 0])
        else:
            dist.barrier()


def local_collectives() -> Collectives:
    """The collectives of the current process group (CPU and world size 1 without one); for library
    code that is called outside a run context."""
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return Collectives(device, dist.get_world_size())
    return Collectives(torch.device("cpu"), 1)
