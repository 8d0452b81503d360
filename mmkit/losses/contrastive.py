"""Global contrastive loss (CLIP / FLAVA) with a differentiable all-gather across ranks.

FLAVA (paper §3.2, Table 5) gathers image and text embeddings from every rank and lets
gradients flow back *through* the gather ("global back-propagation"), worth +1.65 macro
points over local-only gradients. ``torch.distributed.nn.functional.all_gather`` does
this: its backward sums every rank's gradient into the owner's slice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.utils.errors import InputError


def _all_gather_with_grad(x: Tensor) -> list[Tensor]:
    """All-gather whose backward sums every rank's gradient into the owner's slice."""
    try:  # newer torch: functional collectives carry autograd and the torch.distributed.nn API is deprecated
        from torch.distributed._functional_collectives import all_gather_single_autograd
    except ImportError:
        return list(dist_fn.all_gather(x))
    gathered = all_gather_single_autograd(x.contiguous(), 0, dist.group.WORLD)
    return list(gathered.chunk(dist.get_world_size()))


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_batches(x: Tensor, with_grad: bool = True) -> tuple[Tensor, int]:
    """All-gather ``x`` along dim 0 from every rank; per-rank sizes may differ.

    Args:
        x: ``(n_r, ...)`` on this rank.
        with_grad: let gradients flow back to every rank's slice (FLAVA's choice). Without
            it, only this rank's slice carries gradient.

    Returns:
        ``(gathered (sum_r n_r, ...), offset)`` where ``offset`` is where this rank's rows start.
        Outside a process group (or with one rank): ``(x, 0)``.

    Unequal sizes cost one extra tiny all-gather of the sizes (a host sync); rows are padded
    to the largest size for the data gather and the padding is dropped afterwards.
    """
    if not _distributed():
        return x, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device, dtype=torch.long)
    sizes_t = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes_t, n)
    sizes = [int(s) for s in sizes_t]
    pad = max(sizes) - x.shape[0]
    padded = torch.cat([x, x.new_zeros((pad, *x.shape[1:]))]) if pad else x
    if with_grad:
        parts = _all_gather_with_grad(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach().contiguous())
        parts[rank] = padded
    return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)]), sum(sizes[:rank])


@dataclass
class ContrastiveOutput:
    """Attributes:
    loss: scalar, ``(CE(logits_per_image) + CE(logits_per_text)) / 2`` over the rows that count.
    logits_per_image: ``(n, N)`` this rank's images against all ``N`` texts (scaled; ``-inf`` in
        columns left out by ``column_mask``).
    logits_per_text: ``(n, N)`` this rank's texts against all ``N`` images (scaled, same columns).
    labels: ``(n,)`` column of each row's positive; ``ignore_index`` (-100) on rows left out by ``row_mask``.
    """

    loss: Tensor
    logits_per_image: Tensor
    logits_per_text: Tensor
    labels: Tensor


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE over the global batch. Holds no parameters: ``logit_scale`` is the model's.

    Args:
        gather_with_grad: back-propagate through the all-gather (FLAVA: True).
        cross_rank: score against every rank's batch when a process group is up; False: this rank's
            only (e.g. evaluation on the same data on every rank); the attribute of the same name switches it.

    Works for unequal per-rank batch sizes. Each rank's loss is the mean over its own rows;
    with equal batch sizes, DDP's gradient averaging then equals one process on the whole
    batch. With unequal sizes each rank's rows are weighted by ``1 / (world * n_r)``.

    Rows and columns are left out by masking, never by indexing, so every shape depends on the
    batch size only (the loss compiles whole, with no host sync outside a process group).
    """

    ignore_index = -100

    def __init__(self, gather_with_grad: bool = True, cross_rank: bool = True) -> None:
        super().__init__()
        self.gather_with_grad = gather_with_grad
        self.cross_rank = cross_rank

    def forward(
        self,
        image_embedding: Tensor,
        text_embedding: Tensor,
        logit_scale: Tensor,
        row_mask: Tensor | None = None,
        column_mask: Tensor | None = None,
    ) -> ContrastiveOutput:
        """Args:
        image_embedding: ``(n, P)``, L2-normalised. text_embedding: ``(n, P)``, L2-normalised,
            row ``i`` paired with image ``i``.
        logit_scale: scalar; logits are multiplied by ``exp(logit_scale)``.
        row_mask: optional bool ``(n,)``: only these rows enter the loss (all columns stay
            negatives). FLAVA passes the matched pairs of a batch with ITM negatives.
        column_mask: optional bool ``(n,)``: only these pairs are columns (gathered from every rank
            like the embeddings); the others get ``-inf`` logits. With ``row_mask`` equal to it,
            the loss is that of the kept pairs alone (FLAVA's ``contrastive_matched_only``).
            Every kept row needs at least one kept column (its own pair, when both masks agree).
        """
        if image_embedding.shape != text_embedding.shape or image_embedding.ndim != 2:
            raise InputError(
                f"image and text embeddings must both be (n, P); got {tuple(image_embedding.shape)} "
                f"and {tuple(text_embedding.shape)}"
            )
        if self.cross_rank:
            all_images, offset = gather_batches(image_embedding, self.gather_with_grad)
            all_texts, _ = gather_batches(text_embedding, self.gather_with_grad)
        else:
            all_images, all_texts, offset = image_embedding, text_embedding, 0
        scale = logit_scale.exp()
        logits_per_image = image_embedding @ all_texts.T * scale
        logits_per_text = text_embedding @ all_images.T * scale
        if column_mask is not None:
            columns = column_mask
            if self.cross_rank:
                columns = gather_batches(column_mask.to(torch.uint8), with_grad=False)[0]
            dropped = ~columns.bool()[None, :]
            logits_per_image = logits_per_image.masked_fill(dropped, float("-inf"))
            logits_per_text = logits_per_text.masked_fill(dropped, float("-inf"))
        labels = torch.arange(offset, offset + image_embedding.shape[0], device=image_embedding.device)
        if row_mask is not None:
            labels = torch.where(row_mask.bool(), labels, torch.full_like(labels, self.ignore_index))
        loss = (_mean_ce(logits_per_image, labels) + _mean_ce(logits_per_text, labels)) / 2
        return ContrastiveOutput(loss, logits_per_image, logits_per_text, labels)


def _mean_ce(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy averaged over the rows whose label is not ignored (0 when none is), no host sync."""
    total = F.cross_entropy(logits, labels, ignore_index=ContrastiveLoss.ignore_index, reduction="sum")
    return total / (labels != ContrastiveLoss.ignore_index).sum().clamp_min(1)
