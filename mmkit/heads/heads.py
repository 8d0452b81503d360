"""Prediction heads for pretraining objectives (modules of the pretraining model; losses own none)."""

from __future__ import annotations

from fractions import Fraction

import torch
from torch import Tensor, nn

from mmkit.layers.mlp import get_activation
from mmkit.layers.pooler import Pooler
from mmkit.utils.errors import InputError


class PredictionHeadTransform(nn.Module):
    """``LayerNorm(act(dense(x)))``, BERT's transform before a vocabulary decoder. ``(..., D) -> (..., D)``."""

    def __init__(self, dim: int, activation: str = "gelu", norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.act = get_activation(activation)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.act(self.dense(x)))


class MaskedPredictionHead(nn.Module):
    """Predict vocabulary ids at masked positions: transform, then a linear decoder with bias.

    Used for masked image modelling (dVAE token ids) and masked language modelling (word
    ids). Give it only the masked positions' hidden states (see :func:`select_masked`, or
    :func:`select_budget` for a static shape): projecting every position through a 30522-way
    decoder is most of an MLM step's cost.

    Args:
        dim: input width ``D``. vocab_size: ``V``.
        activation, norm_eps: of the transform.

    Shapes: ``(M, D) -> (M, V)`` (any leading shape works).
    """

    def __init__(self, dim: int, vocab_size: int, activation: str = "gelu", norm_eps: float = 1e-12) -> None:
        super().__init__()
        self.transform = PredictionHeadTransform(dim, activation, norm_eps)
        self.decoder = nn.Linear(dim, vocab_size)
        nn.init.zeros_(self.decoder.bias)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.decoder(self.transform(hidden_states))


class ITMHead(nn.Module):
    """Image-text matching classifier: its own pooler on token 0 (``CLS_M``), then 2 logits.

    Shapes: ``(B, N, D) -> (B, 2)``; logit 1 = "the pair matches".
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.pooler = Pooler(dim)
        self.classifier = nn.Linear(dim, 2)

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.classifier(self.pooler(hidden_states))


def select_masked(hidden_states: Tensor, labels: Tensor, ignore_index: int = -100) -> tuple[Tensor, Tensor]:
    """Gather the positions that carry a label.

    Args:
        hidden_states: ``(B, N, D)``.
        labels: ``(B, N)`` int64, ``ignore_index`` where nothing is predicted.

    Returns:
        ``(hidden (M, D), labels (M,))`` for the ``M`` labelled positions, row-major order.
    """
    if hidden_states.shape[:2] != labels.shape:
        raise InputError(
            f"labels {tuple(labels.shape)} must match the first two dims of hidden states {tuple(hidden_states.shape)}"
        )
    keep = labels != ignore_index
    return hidden_states[keep], labels[keep]


def masked_labels(token_ids: Tensor, mask: Tensor, ignore_index: int = -100) -> Tensor:
    """Labels ``(B, N)``: ``token_ids`` where ``mask`` is True, ``ignore_index`` elsewhere (a new tensor)."""
    return torch.where(mask.bool(), token_ids, torch.full_like(token_ids, ignore_index))


def prediction_budget(num_positions: int, fraction: float) -> int:
    """How many positions a static-shape masked objective predicts: ``ceil(fraction * num_positions)``
    (between 1 and ``num_positions`` for ``num_positions >= 1``). From shapes only, so it compiles static;
    integer arithmetic (``fraction`` as a ratio of integers), so a symbolic batch size adds no guard."""
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"a prediction budget is a fraction of the positions in (0, 1], got {fraction}")
    ratio = Fraction(fraction).limit_denominator(10_000)
    return -(-num_positions * ratio.numerator // ratio.denominator)


def budget_indices(keep: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """A fixed number of flat positions, the kept ones first: the static-shape form of ``keep.nonzero()``.

    Args:
        keep: bool ``(n,)``, True = predicted position. budget: ``K``, ``1 <= K <= n``.

    Returns:
        ``(index (K,) int64, overflow () int64)``: the first ``K`` kept positions in order, then
        (when fewer than ``K`` are kept) positions that are not kept, as padding; ``overflow`` is how
        many kept positions did not fit (0 when the budget holds them all). No host sync.
    """
    static = isinstance(budget, int) and isinstance(keep.shape[0], int)  # a symbolic size is not checked
    if keep.ndim != 1 or (static and not 1 <= budget <= keep.shape[0]):
        raise InputError(f"keep must be 1-d with at least budget={budget} (>= 1) entries, got {tuple(keep.shape)}")
    order = torch.argsort((~keep).to(torch.uint8), stable=True)[:budget]
    return order, (keep.sum() - budget).clamp_min(0)


def select_budget(
    hidden_states: Tensor, labels: Tensor, budget: int, ignore_index: int = -100
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`select_masked` with a static shape: ``budget`` positions whatever the mask holds.

    The labelled positions come first in row-major order (so while they fit, the labelled rows are
    exactly :func:`select_masked`'s, in its order); the rest of the budget is padded with
    unlabelled positions, whose label stays ``ignore_index`` so a loss skips them.

    Args:
        hidden_states: ``(B, N, D)``. labels: ``(B, N)`` int64, ``ignore_index`` where nothing is predicted.
        budget: ``K`` positions, ``1 <= K <= B * N`` (see :func:`prediction_budget`).

    Returns:
        ``(hidden (K, D), labels (K,), overflow ())``; ``overflow`` counts labelled positions beyond
        the budget (left out of the returned ones; 0 when the budget holds them all).
    """
    if hidden_states.shape[:2] != labels.shape:
        raise InputError(
            f"labels {tuple(labels.shape)} must match the first two dims of hidden states {tuple(hidden_states.shape)}"
        )
    labels = labels.reshape(-1)
    index, overflow = budget_indices(labels != ignore_index, budget)
    return hidden_states.reshape(-1, hidden_states.shape[-1])[index], labels[index], overflow
