"""Weight initialisation and weight-decay grouping shared by every encoder."""

from __future__ import annotations

from torch import nn


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """BERT/ViT initialisation, applied to one module (use with ``model.apply``).

    Linear and conv weights ~ truncated normal(0, ``std``), biases 0; embeddings ~
    normal(0, ``std``) with the padding row zeroed; LayerNorm weight 1, bias 0.
    """
    if isinstance(module, nn.Linear | nn.Conv2d):
        nn.init.trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=std)
        if module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


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
