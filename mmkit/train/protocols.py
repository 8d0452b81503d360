"""What the runtime asks of a model it trains, instead of guessing from class or attribute names.

A model handed to :func:`~mmkit.train.parallelize` implements :class:`Parallelizable` (structurally: the two
methods, no base class): its repeated units (activation checkpointing, ``compile="layers"``, FSDP2 sharding)
and the losses that gather embeddings across ranks (sized for a compiled step on several processes).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from torch import nn

from mmkit.utils.errors import InputError

__all__ = ["Parallelizable", "require_parallelizable"]

#: the protocol's methods, as a model would write them (named in the error of :func:`require_parallelizable`)
_METHODS = {
    "shard_units": "def shard_units(self) -> list[nn.Module]  # its repeated transformer layers ([] for none)",
    "gathering_losses": (
        "def gathering_losses(self) -> list[nn.Module]  # its losses that gather embeddings across ranks and "
        "have rows_per_rank ([] for none)"
    ),
}


@runtime_checkable
class Parallelizable(Protocol):
    """A model the runtime can checkpoint, compile, shard and size (see the module docs)."""

    def shard_units(self) -> list[nn.Module]:
        """The repeated transformer layers, each one unit of activation checkpointing, of ``compile="layers"``
        and of FSDP2 sharding (``[]``: the model is one unit)."""
        ...

    def gathering_losses(self) -> list[nn.Module]:
        """The contrastive losses that gather embeddings across ranks, each with a ``rows_per_rank`` attribute
        (the most rows a rank passes; set before a compiled step on several processes); ``[]`` when none."""
        ...


def require_parallelizable(model: nn.Module, purpose: str = "parallelize") -> Parallelizable:
    """``model`` when it implements :class:`Parallelizable`; else an :class:`~mmkit.utils.InputError` naming the
    methods to add (``purpose``: what needed them, for the message)."""
    missing = [name for name in _METHODS if not callable(getattr(model, name, None))]
    if missing:
        lines = "\n".join(f"    {_METHODS[name]}" for name in missing)
        raise InputError(
            f"{purpose}: {type(model).__name__} does not implement mmkit.train.Parallelizable; add to it:\n{lines}"
        )
    return model
