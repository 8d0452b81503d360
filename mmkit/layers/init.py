"""Weight initialisation and weight-decay grouping shared by every encoder.

The standard deviation follows the width (:func:`init_std_for`): the released FLAVA's 0.02 at width
768, and ``0.02 * sqrt(768 / width)`` at any other width, so that ``std**2 * width`` (what sets how
much each residual block adds to its input at the start) is the released model's at every size.
``docs/INIT.md`` gives the measurements and sources.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mmkit.utils.errors import InputError

#: The reference the width rule is anchored at: BERT's and ViT-B's ``initializer_range`` 0.02 at width
#: 768 (Devlin et al. 2019; the released FLAVA's ``FlavaConfig.initializer_range``).
REFERENCE_STD = 0.02
REFERENCE_WIDTH = 768


def init_std_for(width: int, std: float | None = None) -> float:
    """The initialisation std of weights that read ``width`` features.

    Args:
        width: the layer's input width (an encoder's hidden size, a projection's input).
        std: an explicit std (a config's ``init_std``); returned as it is when given.

    Returns:
        ``std``, or ``0.02 * sqrt(768 / width)``: 0.02 at the released width, 0.098 at width 32.
        The std times ``sqrt(width)`` stays the released model's, as fan-in scaling (LeCun et al.
        1998; He et al. 2015; muP's hidden weights, Yang et al. 2022) keeps it.
    """
    if std is not None:
        if std <= 0:
            raise InputError(f"init_std must be > 0, got {std}")
        return float(std)
    if width < 1:
        raise InputError(f"width must be >= 1, got {width}")
    return REFERENCE_STD * math.sqrt(REFERENCE_WIDTH / width)


def init_weights(module: nn.Module, std: float = REFERENCE_STD) -> None:
    """transformers' BERT/ViT/FLAVA initialisation of one module (use with ``model.apply``).

    Linear and conv weights ~ normal(0, ``std``), biases 0; embeddings ~ normal(0, ``std``) with the
    padding row zeroed; LayerNorm weight 1, bias 0. (Plain normal, as transformers' ``_init_weights``
    draws; ``trunc_normal_``'s default cut at +-2 is 100 stds away at 0.02 anyway.) Works on FSDP2's
    sharded ``DTensor`` parameters too: each rank fills its shard.
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                zero_row(module.weight, module.padding_idx)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def zero_row(weight: torch.Tensor, row: int) -> None:
    """``weight[row] = 0`` for a ``(N, D)`` table, also when it is an FSDP2 parameter sharded along its rows
    (``Shard(0)`` on a 1-D mesh: rank ``r`` holds rows ``[r * ceil(N / world), ...)``, as ``torch.chunk``
    splits them), where an indexed write would miss the shard."""
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


def init_module(module: nn.Module, std: float, zero_tokens: bool) -> None:
    """Initialise every sub-module of ``module`` by :func:`init_weights` (in ``module.apply``'s order), then its
    learned tokens and position tables by :func:`init_tokens`: an encoder's whole rule, at the std of its width."""
    module.apply(lambda m: init_weights(m, std=std))
    init_tokens(module, std, zero=zero_tokens)


#: Learned tokens and position tables: a module's parameters with these names (see :func:`init_tokens`).
TOKEN_PARAMETERS = ("cls_token", "mask_token", "position_embeddings", "probe")


def init_tokens(module: nn.Module, std: float, zero: bool) -> None:
    """Initialise the learned tokens and position tables (:data:`TOKEN_PARAMETERS`) below ``module``.

    Args:
        module: any module; parameters named in :data:`TOKEN_PARAMETERS` are set.
        std: their std when drawn.
        zero: start them at 0, as transformers' FLAVA does for the image ``[CLS]``, mask token and
            position table and the fusion ``CLS_M``; otherwise ~ normal(0, ``std``) (CLIP's and
            SigLIP's towers draw theirs).
    """
    for mod in module.modules():
        for name, p in mod.named_parameters(recurse=False):
            if name in TOKEN_PARAMETERS:
                nn.init.zeros_(p) if zero else nn.init.normal_(p, std=std)


_NO_DECAY_MODULES = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.Embedding)


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Names (relative to ``module``) of parameters that should take no weight decay.

    That is: every bias and other 1-D or scalar parameter (norm scales, learned
    temperatures), every parameter of a norm or embedding table, and learned
    tokens / position tables (``*_token``, ``position_embeddings``, an attention pool's ``probe``).
    """
    names: set[str] = set()
    for mod_name, mod in module.named_modules():
        for p_name, p in mod.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if (
                p.ndim <= 1
                or isinstance(mod, _NO_DECAY_MODULES)
                or p_name.endswith("_token")
                or p_name in ("position_embeddings", "probe")
            ):
                names.add(full)
    return names
