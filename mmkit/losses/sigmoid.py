"""SigLIP's pairwise sigmoid loss (Zhai et al., "Sigmoid Loss for Language Image Pre-Training",
ICCV 2023, arXiv 2303.15343), with its distributed form.

Every image-text pair of the batch is a binary classification: ``z_ij = +1`` for the matched pair
(``i == j``) and ``-1`` otherwise, with logits ``t * x_i . y_j + b`` (``t = exp(logit_scale)``, a
learnable bias ``b``; SigLIP starts them at ``log 10`` and ``-10``). The loss of ``n`` images is

    L = -(1 / n) * sum_i sum_j log sigmoid(z_ij * (t * x_i . y_j + b))

Unlike the softmax loss there is no normalisation over the batch, so the global batch never has
to be in one place: each rank scores its images against its own texts (the positives and local
negatives), then passes its text chunk to the next rank around the ring and scores its images
against each chunk that arrives (negatives only), ``world - 1`` times. Only one foreign chunk is
held at a time. The exchange is differentiable (:class:`_RingShift`: the gradient of a received
chunk travels back to its owner), so gradients are those of the global loss. Inside
``torch.compile`` (a compiled step on several processes) point-to-point sends cannot be traced, so
the texts are all-gathered instead (a functional collective with autograd, the same blocks in the
same order; ``world x`` the text chunk's memory, which is ``(n, P)``, small beside the activations).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.utils.errors import InputError


class _RingShift(torch.autograd.Function):
    """Send ``x`` to rank ``r + 1``, receive rank ``r - 1``'s; backward sends the gradient the other way."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _exchange(x, +1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _exchange(grad, -1)


def _exchange(x: Tensor, step: int) -> Tensor:
    world, rank = dist.get_world_size(), dist.get_rank()
    out = torch.empty_like(x)
    ops = [
        dist.P2POp(dist.isend, x.contiguous(), (rank + step) % world),
        dist.P2POp(dist.irecv, out, (rank - step) % world),
    ]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return out


def _foreign_text_chunks(texts: Tensor) -> Iterator[Tensor]:
    """The other ranks' texts, rank ``r - 1``'s first: around the ring, or all-gathered when compiling."""
    world = dist.get_world_size()
    if torch.compiler.is_compiling():
        from torch.distributed import _functional_collectives as fc

        chunks = fc.all_gather_single_autograd(texts.contiguous(), 0, dist.group.WORLD).chunk(world)
        rank = dist.get_rank()
        yield from (chunks[(rank - k) % world] for k in range(1, world))
        return
    chunk = texts
    for _ in range(world - 1):
        chunk = _RingShift.apply(chunk)
        yield chunk


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SigmoidContrastiveLoss(nn.Module):
    """SigLIP's loss over the global batch. Holds no parameters: the scale and bias are the model's.

    Args:
        cross_rank: when a process group is up, score against every rank's texts through the ring
            (every rank must pass the same number of rows). False: this rank's batch only (e.g.
            evaluation on the same data on every rank); the attribute of the same name switches it.

    ``forward`` returns this rank's loss, normalised by its own ``n`` images; with equal batch sizes
    the mean over ranks (what DDP's gradient averaging takes) is the loss of one process on the
    whole batch, and so are its gradients.
    """

    def __init__(self, cross_rank: bool = True) -> None:
        super().__init__()
        self.cross_rank = cross_rank

    def forward(
        self, image_embedding: Tensor, text_embedding: Tensor, logit_scale: Tensor, logit_bias: Tensor
    ) -> Tensor:
        """Args:
        image_embedding: ``(n, P)``, L2-normalised. text_embedding: ``(n, P)``, L2-normalised, row ``i``
            paired with image ``i``.
        logit_scale: scalar ``log t``. logit_bias: scalar ``b``.

        Returns the scalar loss (of this rank's ``n`` images against the global batch).
        """
        if image_embedding.shape != text_embedding.shape or image_embedding.ndim != 2:
            raise InputError(
                f"image and text embeddings must both be (n, P); got {tuple(image_embedding.shape)} "
                f"and {tuple(text_embedding.shape)}"
            )
        scale = logit_scale.exp()
        loss = self._block(image_embedding, text_embedding, scale, logit_bias, positives=True)
        if self.cross_rank and _distributed():
            for chunk in _foreign_text_chunks(text_embedding):
                loss = loss + self._block(image_embedding, chunk, scale, logit_bias, positives=False)
        return loss / image_embedding.shape[0]

    @staticmethod
    def _block(images: Tensor, texts: Tensor, scale: Tensor, bias: Tensor, positives: bool) -> Tensor:
        """``-sum log sigmoid(z * logits)`` of one image block against one text block."""
        logits = images @ texts.T * scale + bias
        signs = -torch.ones_like(logits)
        if positives:
            signs = signs + 2 * torch.eye(logits.shape[0], device=logits.device, dtype=logits.dtype)
        return -F.logsigmoid(signs * logits).sum()
