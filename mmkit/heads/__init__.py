"""Heads: masked-prediction (MIM / MLM / MMM) and image-text matching."""

from mmkit.heads.heads import (
    ITMHead,
    MaskedPredictionHead,
    PredictionHeadTransform,
    budget_indices,
    masked_labels,
    prediction_budget,
    select_budget,
    select_masked,
)

__all__ = [
    "ITMHead",
    "MaskedPredictionHead",
    "PredictionHeadTransform",
    "budget_indices",
    "masked_labels",
    "prediction_budget",
    "select_budget",
    "select_masked",
]
