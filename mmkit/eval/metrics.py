"""Task metrics, on tensors, each checked in ``tests/eval`` against a hand computation.

All take predictions and targets as 1-D tensors (or ``(N, C)`` scores where stated) and return
Python floats.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmkit.utils.errors import InputError


def accuracy(logits_or_preds: Tensor, targets: Tensor) -> float:
    """Fraction correct. ``logits_or_preds``: ``(N, C)`` scores (argmax taken) or ``(N,)`` class ids."""
    preds = logits_or_preds.argmax(-1) if logits_or_preds.ndim == 2 else logits_or_preds
    return (preds == targets).float().mean().item()


def mean_per_class_recall(logits_or_preds: Tensor, targets: Tensor, num_classes: int | None = None) -> float:
    """The mean over classes of each class's recall (the share of its samples predicted as it).

    What CLIP (Radford et al. 2021, Table 10) and CLIP_benchmark report for FGVC Aircraft, Oxford-IIIT
    Pets, Caltech-101 and Oxford Flowers-102; scikit-learn's ``balanced_accuracy_score``. Classes absent
    from ``targets`` are left out of the mean (they have no recall), as scikit-learn does.

    Args:
        logits_or_preds: ``(N, C)`` scores (argmax taken) or ``(N,)`` class ids. targets: ``(N,)`` class ids.
        num_classes: the number of classes (default: the largest id seen + 1).
    """
    preds = logits_or_preds.argmax(-1) if logits_or_preds.ndim == 2 else logits_or_preds
    preds, targets = preds.flatten().long().cpu(), targets.flatten().long().cpu()
    if len(targets) == 0:
        raise InputError("mean per-class recall needs at least one sample")
    n = num_classes or int(max(preds.max(), targets.max())) + 1
    support = torch.bincount(targets, minlength=n).double()
    hits = torch.bincount(targets[preds == targets], minlength=n).double()
    present = support > 0
    return (hits[present] / support[present]).mean().item()


def f1_score(preds: Tensor, targets: Tensor, average: str = "binary", positive: int = 1) -> float:
    """F1 of class ids. ``average``: ``"binary"`` (of class ``positive``) or ``"macro"`` (mean over classes)."""

    def f1_of(c: int) -> float:
        tp = ((preds == c) & (targets == c)).sum().item()
        fp = ((preds == c) & (targets != c)).sum().item()
        fn = ((preds != c) & (targets == c)).sum().item()
        return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)

    if average == "binary":
        return f1_of(positive)
    if average == "macro":
        classes = torch.unique(torch.cat([preds, targets])).tolist()
        return sum(f1_of(c) for c in classes) / len(classes)
    raise InputError(f"average must be 'binary' or 'macro', got {average!r}")


def matthews_corrcoef(preds: Tensor, targets: Tensor) -> float:
    """Matthews correlation (multi-class form of Gorodkin 2004; the binary MCC for two classes)."""
    classes = torch.unique(torch.cat([preds, targets]))
    index = {int(c): i for i, c in enumerate(classes)}
    k = len(classes)
    conf = torch.zeros(k, k, dtype=torch.float64)
    for p, t in zip(preds.tolist(), targets.tolist(), strict=True):
        conf[index[t], index[p]] += 1
    t_sum, p_sum = conf.sum(1), conf.sum(0)
    n, correct = conf.sum(), conf.trace()
    cov_ytyp = correct * n - (t_sum * p_sum).sum()
    cov_ypyp = n * n - (p_sum * p_sum).sum()
    cov_ytyt = n * n - (t_sum * t_sum).sum()
    denom = (cov_ypyp * cov_ytyt).sqrt()
    return 0.0 if denom == 0 else (cov_ytyp / denom).item()


def auroc(scores: Tensor, targets: Tensor) -> float:
    """Area under the ROC curve for binary ``targets`` (1 = positive), ties counted as half.

    Equals the probability that a random positive scores above a random negative.
    """
    scores, targets = scores.double().flatten(), targets.flatten().bool()
    pos, neg = scores[targets], scores[~targets]
    if len(pos) == 0 or len(neg) == 0:
        raise InputError("AUROC needs at least one positive and one negative example")
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return ((greater + 0.5 * ties) / (len(pos) * len(neg))).item()


def pearson(x: Tensor, y: Tensor) -> float:
    """Pearson correlation coefficient."""
    x, y = x.double().flatten(), y.double().flatten()
    xc, yc = x - x.mean(), y - y.mean()
    return (xc @ yc / (xc.norm() * yc.norm())).item()


def _ranks(x: Tensor) -> Tensor:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    x = x.double().flatten()
    order = x.argsort()
    ranks = torch.empty_like(x)
    ranks[order] = torch.arange(1, len(x) + 1, dtype=torch.float64)
    for v in torch.unique(x):
        same = x == v
        if same.sum() > 1:
            ranks[same] = ranks[same].mean()
    return ranks


def spearman(x: Tensor, y: Tensor) -> float:
    """Spearman rank correlation (Pearson of average ranks)."""
    return pearson(_ranks(x), _ranks(y))


def vqa_soft_accuracy(logits: Tensor, soft_scores: Tensor) -> float:
    """VQA accuracy: the soft score (``min(#annotators who gave it / 3, 1)``) of the predicted answer.

    Args:
        logits: ``(N, A)`` answer scores. soft_scores: ``(N, A)`` target scores in [0, 1].
    """
    pred = logits.argmax(-1)
    return soft_scores.gather(1, pred[:, None]).mean().item()
