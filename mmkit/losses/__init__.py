"""Losses (parameter-free): global contrastive with differentiable gather, masked CE, FLAVA's weighted sum."""

from mmkit.losses.contrastive import ContrastiveLoss, ContrastiveOutput, gather_batches
from mmkit.losses.flava import OBJECTIVES, FLAVALossWeights, FLAVAPretrainingLoss, masked_cross_entropy

__all__ = [
    "OBJECTIVES",
    "ContrastiveLoss",
    "ContrastiveOutput",
    "FLAVALossWeights",
    "FLAVAPretrainingLoss",
    "gather_batches",
    "masked_cross_entropy",
]
