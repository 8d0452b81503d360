"""Poolers that turn a token sequence into one vector."""

from __future__ import annotations

from torch import Tensor, nn


class Pooler(nn.Module):
    """BERT-style pooler: ``tanh(dense(x[:, 0]))``.

    Args:
        dim: width ``D``.

    Shapes: ``(B, N, D) -> (B, D)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))
