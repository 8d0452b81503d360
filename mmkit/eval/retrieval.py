"""Zero-shot image <-> text retrieval metrics."""

from __future__ import annotations

import torch
from torch import Tensor


def retrieval_recall(image_embeddings: Tensor, text_embeddings: Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict:
    """Recall@k for paired embeddings (row ``i`` of each is one pair).

    Args:
        image_embeddings: ``(N, P)``; text_embeddings: ``(N, P)`` (normalised or not: cosine is used).

    Returns:
        ``{"image_to_text_r1": ..., "text_to_image_r1": ..., ...}`` in [0, 1]. The rank of the
        true match is the number of items scoring strictly higher, so exact ties count in the
        query's favour.
    """
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(f"{tuple(image_embeddings.shape)} image vs {tuple(text_embeddings.shape)} text embeddings")
    img = torch.nn.functional.normalize(image_embeddings.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_embeddings.float(), dim=-1)
    sim = img @ txt.T
    target = torch.arange(sim.shape[0])
    out = {}
    for direction, s in (("image_to_text", sim), ("text_to_image", sim.T)):
        rank = (s > s[target, target][:, None]).sum(1)  # how many score strictly higher
        for k in ks:
            out[f"{direction}_r{k}"] = (rank < k).float().mean().item()
    return out
