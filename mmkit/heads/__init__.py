"""Heads: masked-prediction (MIM / MLM / MMM) and image-text matching."""

from mmkit.heads.heads import ITMHead, MaskedPredictionHead, PredictionHeadTransform, masked_labels, select_masked

__all__ = ["ITMHead", "MaskedPredictionHead", "PredictionHeadTransform", "masked_labels", "select_masked"]
