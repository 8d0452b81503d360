"""Zero-shot image <-> text retrieval metrics."""

from __future__ import annotations

import torch
from torch import Tensor

from mmkit.utils.errors import InputError


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
        raise InputError(f"{tuple(image_embeddings.shape)} image vs {tuple(text_embeddings.shape)} text embeddings")
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


def multi_caption_retrieval(
    image_embeddings: Tensor,
    text_embeddings: Tensor,
    text_to_image: Tensor,
    ks: tuple[int, ...] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k when an image has several captions: the standard COCO / Flickr30K protocol.

    Image -> text: image ``i`` scores a hit at ``k`` when *any* of its captions ranks in the top ``k``
    of all ``M`` texts. Text -> image: every caption is a query, a hit when its own image ranks in the
    top ``k`` of all ``N`` images. A rank counts the items scoring strictly higher (ties in the query's
    favour, as :func:`retrieval_recall`). Karpathy's test splits: 5,000 COCO / 1,000 Flickr30K images,
    5 captions each.

    Args:
        image_embeddings: ``(N, P)``; text_embeddings: ``(M, P)`` (cosine is used: any norm).
        text_to_image: ``(M,)`` the image index of each caption, in ``[0, N)``; every image needs one.
        ks: the ``k`` of each reported recall.
        chunk: query rows scored at a time (memory ``chunk x max(N, M)``).

    Returns:
        ``{"image_to_text_r1": ..., "text_to_image_r1": ..., ...}`` in [0, 1].
    """
    n, m = image_embeddings.shape[0], text_embeddings.shape[0]
    owner = text_to_image.reshape(-1).long().to(image_embeddings.device)
    if owner.shape[0] != m:
        raise InputError(f"text_to_image has {owner.shape[0]} entries for {m} texts")
    if image_embeddings.shape[1] != text_embeddings.shape[1]:
        raise InputError(f"{tuple(image_embeddings.shape)} image vs {tuple(text_embeddings.shape)} text embeddings")
    if m and (owner.min() < 0 or owner.max() >= n):
        raise InputError(f"text_to_image must hold image indices in [0, {n}), got [{owner.min()}, {owner.max()}]")
    captions = torch.bincount(owner, minlength=n)
    if (captions == 0).any():
        missing = torch.nonzero(captions == 0).flatten()[:5].tolist()
        raise InputError(f"{int((captions == 0).sum())} image(s) have no caption (e.g. indices {missing})")
    img = torch.nn.functional.normalize(image_embeddings.float(), dim=-1)
    txt = torch.nn.functional.normalize(text_embeddings.float(), dim=-1)
    i2t = torch.empty(n, dtype=torch.long, device=img.device)
    for s in range(0, n, chunk):
        sim = img[s : s + chunk] @ txt.T  # (c, M)
        own = owner[None, :] == torch.arange(s, s + sim.shape[0], device=img.device)[:, None]
        best = sim.masked_fill(~own, float("-inf")).amax(1, keepdim=True)  # each image's best caption
        i2t[s : s + sim.shape[0]] = (sim > best).sum(1)
    t2i = torch.empty(m, dtype=torch.long, device=img.device)
    for s in range(0, m, chunk):
        sim = txt[s : s + chunk] @ img.T  # (c, N)
        mine = sim.gather(1, owner[s : s + sim.shape[0], None])
        t2i[s : s + sim.shape[0]] = (sim > mine).sum(1)
    out = {}
    for direction, rank in (("image_to_text", i2t), ("text_to_image", t2i)):
        for k in ks:
            out[f"{direction}_r{k}"] = (rank < k).float().mean().item()
    return out
