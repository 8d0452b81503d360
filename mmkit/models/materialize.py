"""FLAVA on the meta device: build without memory, then give each tensor its storage and its values.

Build under ``with torch.device("meta"):`` (every builder works there: no tensor is read while a model
is built), shard it if you like (FSDP2's ``fully_shard`` takes meta modules), then call
:func:`materialize_flava`: ``to_empty`` gives every parameter and buffer storage on ``device`` (on each
rank only its shard, when sharded), and :func:`initialize_flava` draws them by the builders' rules —
the same rule and std for every tensor (``init_weights`` / ``init_tokens`` with the width's std, the
released ``logit_scale``, the position-id buffers) — and loads the frozen codebook from its checkpoint,
or draws a random one as ``DalleEncoder`` does.

The values follow the builders' rules, not their random stream: a model materialised from meta and one
built on the CPU with the same seed have the same constants and the same distributions, not the same
draws (construction on the CPU also draws PyTorch's default initialisation before overwriting it).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmkit.layers.embeddings import TextEmbedding
from mmkit.layers.init import init_std_for, init_tokens, init_weights
from mmkit.models.flava import FLAVAConfig, FLAVAModel
from mmkit.models.flava_pretraining import FLAVAForPreTraining, _head_order
from mmkit.tokenizers import dalle_encoder_from_checkpoint
from mmkit.utils.errors import InputError
from mmkit.utils.weights import load_strict

__all__ = ["initialize_flava", "materialize_flava"]


@torch.no_grad()
def initialize_flava(model: FLAVAModel | FLAVAForPreTraining, config: FLAVAConfig | None = None) -> None:
    """Set every parameter and buffer of a FLAVA model as its builder does, in construction order:
    the three encoders, the projections and ``logit_scale``, the codebook, the heads.

    Works on plain tensors and on FSDP2's sharded ``DTensor`` parameters alike (each rank fills its
    shard). Nothing is allocated beyond what ``model`` holds.

    Args:
        model: a :class:`FLAVAModel` or :class:`FLAVAForPreTraining` whose tensors have storage
            (after ``model.to_empty(device=...)``).
        config: defaults to ``model.config``.
    """
    cfg = config or model.config
    base = model.model if isinstance(model, FLAVAForPreTraining) else model
    if not isinstance(base, FLAVAModel):
        raise InputError(f"initialize_flava takes a FLAVAModel or FLAVAForPreTraining, not {type(model).__name__}")
    for encoder, width in ((base.image_encoder, cfg.image.hidden_size), (base.text_encoder, cfg.text.hidden_size),
                           (base.multimodal_encoder, cfg.multimodal.hidden_size)):  # fmt: skip
        std = init_std_for(width, cfg.init_std)
        encoder.apply(lambda m, std=std: init_weights(m, std=std))
        init_tokens(encoder, std, zero=True)
        for module in encoder.modules():  # init_weights' in-place row write misses a sharded table
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                _zero_row(module.weight, module.padding_idx)
    base.logit_scale.fill_(cfg.logit_scale_init)
    for proj in (base.image_projection, base.text_projection, base.image_to_mm_projection, base.text_to_mm_projection):
        init_weights(proj, std=init_std_for(proj.in_features, cfg.init_std))
    for module in base.modules():
        if isinstance(module, TextEmbedding):  # the one buffer: not in any state dict, lost by to_empty
            module.position_ids.copy_(torch.arange(module.position_ids.shape[1], device=module.position_ids.device))
    if isinstance(model, FLAVAForPreTraining):
        _initialize_pretraining_parts(model, cfg)


def _zero_row(weight: torch.Tensor, row: int) -> None:
    """``weight[row] = 0``, also for an FSDP2 parameter sharded along its rows (``Shard(0)`` on a 1-D
    mesh: rank ``r`` holds rows ``[r * ceil(N / world), ...)``, as ``torch.chunk`` splits them)."""
    if type(weight).__name__ != "DTensor":  # torch.distributed may be absent from the build: no import
        weight[row].zero_()
        return
    from torch.distributed.tensor import Shard

    if len(weight.placements) != 1 or weight.placements[0] != Shard(0):
        raise InputError(f"a padding row can be zeroed only in a row-sharded table, not {weight.placements}")
    local = weight.to_local()
    start = weight.device_mesh.get_local_rank() * math.ceil(weight.shape[0] / weight.device_mesh.size())
    if start <= row < start + local.shape[0]:
        local[row - start].zero_()


def _initialize_pretraining_parts(model: FLAVAForPreTraining, cfg: FLAVAConfig) -> None:
    tokenizer = model.image_tokenizer
    if tokenizer is not None:
        if cfg.codebook.checkpoint:  # the frozen codebook: its released (or trained) weights
            source = dalle_encoder_from_checkpoint(cfg.codebook.checkpoint)
            load_strict(tokenizer.encoder, source.state_dict(), cfg.codebook.checkpoint, target="codebook")
        else:  # a random codebook, drawn as DalleEncoder's convolutions draw at construction
            for module in tokenizer.encoder.modules():
                if isinstance(module, nn.Conv2d):
                    module.reset_parameters()
    for objective in sorted((o for o in model.objectives if o.head is not None), key=_head_order):
        width = objective.head_width(cfg) if objective.head_width else cfg.multimodal.hidden_size
        std = init_std_for(width, cfg.init_std)
        getattr(model, objective.head_name).apply(lambda m, std=std: init_weights(m, std=std))


def materialize_flava(
    model: FLAVAModel | FLAVAForPreTraining, device: str | torch.device = "cpu", config: FLAVAConfig | None = None
) -> FLAVAModel | FLAVAForPreTraining:
    """Give a model built on the meta device (and possibly sharded) storage on ``device`` and its initial
    values (:func:`initialize_flava`); returns ``model``.

    Example::

        with torch.device("meta"):
            model = flava_model_for_pretraining(FLAVAConfig())  # the released size, no memory
        fully_shard(...)                                        # optional: FSDP2, on meta
        materialize_flava(model, "cuda")                        # each rank: its shard only
    """
    model.to_empty(device=device)
    initialize_flava(model, config)
    return model
