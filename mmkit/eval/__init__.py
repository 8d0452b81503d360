"""Evaluation: zero-shot retrieval and classification, linear probes, task metrics, benchmark suites.

Benchmark readers: :mod:`mmkit.eval.benchmarks`; cached features: :mod:`mmkit.eval.features`; suites:
:mod:`mmkit.eval.suite`; loading any checkpoint to evaluate: :mod:`mmkit.eval.loading`.
"""

from mmkit.eval.features import FeatureCache
from mmkit.eval.finetune_tasks import FINETUNE_TASKS, FinetuneTask, finetune_task, open_task_split
from mmkit.eval.health import HealthConfig, HealthMonitor, mean_pairwise_cosine
from mmkit.eval.loading import eval_transform, find_tokenizer, load_encoders
from mmkit.eval.metrics import (
    accuracy,
    auroc,
    f1_score,
    matthews_corrcoef,
    mean_per_class_recall,
    pearson,
    spearman,
    vqa_soft_accuracy,
)
from mmkit.eval.probe import ProbeResult, fit_linear_probe
from mmkit.eval.retrieval import multi_caption_retrieval, retrieval_recall
from mmkit.eval.suite import SuiteContext, checkpoint_digest, load_suite, run_suite
from mmkit.eval.zero_shot import DEFAULT_TEMPLATES, class_embeddings, zero_shot_logits

__all__ = [
    "DEFAULT_TEMPLATES",
    "FINETUNE_TASKS",
    "FeatureCache",
    "FinetuneTask",
    "HealthConfig",
    "HealthMonitor",
    "ProbeResult",
    "SuiteContext",
    "accuracy",
    "auroc",
    "checkpoint_digest",
    "class_embeddings",
    "eval_transform",
    "f1_score",
    "find_tokenizer",
    "finetune_task",
    "fit_linear_probe",
    "load_encoders",
    "load_suite",
    "matthews_corrcoef",
    "mean_pairwise_cosine",
    "mean_per_class_recall",
    "multi_caption_retrieval",
    "open_task_split",
    "pearson",
    "retrieval_recall",
    "run_suite",
    "spearman",
    "vqa_soft_accuracy",
    "zero_shot_logits",
]
