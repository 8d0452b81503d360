"""Evaluation: zero-shot retrieval and classification, linear probes, task metrics."""

from mmkit.eval.health import HealthConfig, HealthMonitor, mean_pairwise_cosine
from mmkit.eval.metrics import (
    accuracy,
    auroc,
    f1_score,
    matthews_corrcoef,
    pearson,
    spearman,
    vqa_soft_accuracy,
)
from mmkit.eval.retrieval import retrieval_recall
from mmkit.eval.zero_shot import DEFAULT_TEMPLATES, class_embeddings, linear_probe, zero_shot_logits

__all__ = [
    "DEFAULT_TEMPLATES",
    "HealthConfig",
    "HealthMonitor",
    "accuracy",
    "auroc",
    "class_embeddings",
    "f1_score",
    "linear_probe",
    "matthews_corrcoef",
    "mean_pairwise_cosine",
    "pearson",
    "retrieval_recall",
    "spearman",
    "vqa_soft_accuracy",
    "zero_shot_logits",
]
