"""FLAVA on the meta device: build without memory, then give each tensor its storage and its values.

Build under ``with torch.device("meta"):`` (every builder works there: no tensor is read while a model
is built), shard it if you like (FSDP2's ``fully_shard`` takes meta modules), then call
:func:`materialize_flava`: ``to_empty`` gives every parameter and buffer storage on ``device`` (on each
rank only its shard, when sharded), and the model's own ``reset_parameters()`` sets them by the rules the
builders apply through the same methods (each encoder's, the projections' and ``logit_scale``'s, the frozen
codebook's: loaded from its checkpoint or drawn as ``DalleEncoder`` draws it, each head's).

The values follow the builders' rules, not their random stream: a model materialised from meta and one
built on the CPU with the same seed have the same constants and the same distributions, not the same
draws (construction on the CPU also draws PyTorch's default initialisation before overwriting it).
"""

from __future__ import annotations

import torch

from mmkit.models.flava import FLAVAModel
from mmkit.models.flava_pretraining import FLAVAForPreTraining
from mmkit.utils.errors import InputError

__all__ = ["initialize_flava", "materialize_flava"]


def initialize_flava(model: FLAVAModel | FLAVAForPreTraining) -> None:
    """Set every parameter and buffer of a FLAVA model as its builder does: ``model.reset_parameters()``
    (:meth:`FLAVAModel.reset_parameters`, :meth:`FLAVAForPreTraining.reset_parameters`), after checking
    that it is one. Works on plain tensors and on FSDP2's sharded ``DTensor`` parameters alike (each rank
    fills its shard); nothing is allocated beyond what ``model`` holds.

    Args:
        model: a :class:`FLAVAModel` or :class:`FLAVAForPreTraining` whose tensors have storage
            (after ``model.to_empty(device=...)``).
    """
    if not isinstance(model, FLAVAModel | FLAVAForPreTraining):
        raise InputError(f"initialize_flava takes a FLAVAModel or FLAVAForPreTraining, not {type(model).__name__}")
    model.reset_parameters()


def materialize_flava(
    model: FLAVAModel | FLAVAForPreTraining, device: str | torch.device = "cpu"
) -> FLAVAModel | FLAVAForPreTraining:
    """Give a model built on the meta device (and possibly sharded) storage on ``device`` and its initial
    values (``to_empty``, then :func:`initialize_flava`); returns ``model``.

    Example::

        with torch.device("meta"):
            model = flava_model_for_pretraining(FLAVAConfig())  # the released size, no memory
        fully_shard(...)                                        # optional: FSDP2, on meta
        materialize_flava(model, "cuda")                        # each rank: its shard only
    """
    model.to_empty(device=device)
    initialize_flava(model)
    return model
