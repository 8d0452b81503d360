"""Each metric against a computation written out by hand on a fixed prediction set."""

import math

import pytest
import torch

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

PREDS = torch.tensor([1, 1, 0, 1, 0, 0, 1, 0])
TARGETS = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0])
# confusion: tp = 3 (0,3,6), fp = 1 (1), fn = 1 (4), tn = 3 (2,5,7)


def test_accuracy_and_f1():
    assert accuracy(PREDS, TARGETS) == 6 / 8
    logits = torch.nn.functional.one_hot(PREDS, 2).float()
    assert accuracy(logits, TARGETS) == 6 / 8
    assert f1_score(PREDS, TARGETS) == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    # class 0: tp 3, fp 1 (4), fn 1 (1) -> also 0.75
    assert f1_score(PREDS, TARGETS, average="macro") == pytest.approx(0.75)
    with pytest.raises(ValueError, match="average must be"):
        f1_score(PREDS, TARGETS, average="micro")


def test_matthews():
    tp, tn, fp, fn = 3, 3, 1, 1
    expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert matthews_corrcoef(PREDS, TARGETS) == pytest.approx(expected)
    assert matthews_corrcoef(TARGETS, TARGETS) == pytest.approx(1.0)
    assert matthews_corrcoef(torch.zeros(4, dtype=torch.long), torch.tensor([0, 1, 0, 1])) == 0.0


def test_auroc_counts_pairs():
    scores = torch.tensor([0.9, 0.8, 0.8, 0.3, 0.1])
    targets = torch.tensor([1, 0, 1, 0, 1])
    # positives 0.9, 0.8, 0.1 vs negatives 0.8, 0.3: (1 + 1) + (0.5 + 1) + (0 + 0) = 3.5 of 6
    assert auroc(scores, targets) == pytest.approx(3.5 / 6)
    with pytest.raises(ValueError, match="at least one positive and one negative"):
        auroc(scores, torch.ones(5))


def test_correlations():
    x = torch.tensor([1.0, 2.0, 3.0, 4.0])
    y = torch.tensor([2.0, 4.0, 5.0, 4.0])
    mx, my = 2.5, 3.75
    cov = sum((a - mx) * (b - my) for a, b in zip(x.tolist(), y.tolist(), strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in x.tolist()))
    sy = math.sqrt(sum((b - my) ** 2 for b in y.tolist()))
    assert pearson(x, y) == pytest.approx(cov / (sx * sy))
    # ranks of y with the tie at 4.0 averaged: [1, 2.5, 4, 2.5]
    assert spearman(x, y) == pytest.approx(pearson(torch.tensor([1.0, 2, 3, 4]), torch.tensor([1.0, 2.5, 4, 2.5])))
    assert spearman(x, x**3) == pytest.approx(1.0)


def test_vqa_soft_accuracy():
    logits = torch.tensor([[0.1, 2.0, 0.3], [3.0, 0.0, 0.0]])
    scores = torch.tensor([[0.0, 0.6, 1.0], [0.3, 1.0, 0.0]])
    assert vqa_soft_accuracy(logits, scores) == pytest.approx((0.6 + 0.3) / 2)


# the last case predicts a class absent from the targets on purpose; scikit-learn warns that it does
@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true:UserWarning")
def test_mean_per_class_recall_is_balanced_accuracy_on_imbalanced_data():
    from sklearn.metrics import balanced_accuracy_score

    g = torch.Generator().manual_seed(0)
    targets = torch.cat([torch.zeros(80), torch.ones(15), torch.full((5,), 2)]).long()  # imbalanced
    preds = torch.where(torch.rand(100, generator=g) < 0.7, targets, torch.randint(0, 3, (100,), generator=g))
    ours = mean_per_class_recall(preds, targets)
    assert ours == pytest.approx(balanced_accuracy_score(targets.numpy(), preds.numpy()), abs=1e-12)
    assert abs(ours - accuracy(preds, targets)) > 1e-3  # the two differ when classes are imbalanced
    # a class never in the targets (3 here) has no recall and is left out, as scikit-learn does
    preds[0] = 3
    assert mean_per_class_recall(preds, targets, num_classes=4) == pytest.approx(
        balanced_accuracy_score(targets.numpy(), preds.numpy()), abs=1e-12
    )
    # (N, C) scores take their argmax
    logits = torch.nn.functional.one_hot(preds, 4).float()
    assert mean_per_class_recall(logits, targets) == pytest.approx(mean_per_class_recall(preds, targets))
