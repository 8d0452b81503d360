"""Prediction heads for pretraining objectives (modules of the pretraining model; losses own none)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmkit.layers.mlp import get_activation
from mmkit.layers.pooler import Pooler


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
    ids). Give it only the masked positions' hidden states (see :func:`select_masked`):
    projecting every position through a 30522-way decoder is most of an MLM step's cost.

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
        raise ValueError(
            f"labels {tuple(labels.shape)} must match the first two dims of hidden states {tuple(hidden_states.shape)}"
        )
    keep = labels != ignore_index
    return hidden_states[keep], labels[keep]


def masked_labels(token_ids: Tensor, mask: Tensor, ignore_index: int = -100) -> Tensor:
    """Labels ``(B, N)``: ``token_ids`` where ``mask`` is True, ``ignore_index`` elsewhere (a new tensor)."""
    return torch.where(mask.bool(), token_ids, torch.full_like(token_ids, ignore_index))
