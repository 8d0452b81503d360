"""Zero-shot classification with prompt ensembles (the linear probe: :mod:`mmkit.eval.probe`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.utils.errors import InputError

#: a small CLIP-style template ensemble; any list of "{}"-templates works.
DEFAULT_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "{}")


def class_embeddings(
    classnames: Sequence[str], embed_texts: Callable[[list[str]], Tensor], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> Tensor:
    """One ``(C, P)`` L2-normalised embedding per class: the mean of its normalised template embeddings.

    Args:
        classnames: ``C`` names. embed_texts: texts -> ``(n, P)`` embeddings.
        templates: strings with one ``{}`` for the class name (CLIP's prompt ensembling).
    """
    if not classnames:
        raise InputError("zero-shot classification needs at least one class name")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise InputError(f"templates need exactly one '{{}}' for the class name: {bad}")
    out = []
    for name in classnames:
        emb = F.normalize(embed_texts([t.format(name) for t in templates]).float(), dim=-1)
        out.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(out)


def zero_shot_logits(image_embeddings: Tensor, class_embeds: Tensor) -> Tensor:
    """Cosine similarities ``(N, C)`` between ``(N, P)`` image and ``(C, P)`` class embeddings."""
    return F.normalize(image_embeddings.float(), dim=-1) @ class_embeds.T
