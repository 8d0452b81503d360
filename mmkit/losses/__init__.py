"""Losses (parameter-free): global contrastive with differentiable gather, SigLIP's sigmoid loss with a
differentiable ring exchange, masked CE, FLAVA's weighted sum."""

from mmkit.losses.contrastive import ContrastiveLoss, ContrastiveOutput, gather_batches, gather_padded
from mmkit.losses.flava import OBJECTIVES, FLAVALossWeights, FLAVAPretrainingLoss, masked_cross_entropy
from mmkit.losses.sigmoid import SigmoidContrastiveLoss

__all__ = [
    "OBJECTIVES",
    "ContrastiveLoss",
    "ContrastiveOutput",
    "FLAVALossWeights",
    "FLAVAPretrainingLoss",
    "SigmoidContrastiveLoss",
    "gather_batches",
    "gather_padded",
    "masked_cross_entropy",
]
