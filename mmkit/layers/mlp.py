"""Feed-forward block and the activations configs may name."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from mmkit.utils.errors import InputError


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)``, the GELU approximation used by OpenAI CLIP."""

    def forward(self, x: Tensor) -> Tensor:
        return x * (1.702 * x).sigmoid()


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "gelu": nn.GELU,  # exact (erf) GELU, as FLAVA and BERT use
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}
ACTIVATIONS: tuple[str, ...] = tuple(_ACTIVATIONS)


def get_activation(name: str) -> nn.Module:
    """Build an activation module by name (one of :data:`ACTIVATIONS`)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise InputError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}") from None


class MLP(nn.Module):
    """``fc2(drop(act(fc1(x))))``: the transformer feed-forward block.

    Args:
        dim: input and output width ``D``.
        hidden_dim: inner width (``4 D`` in ViT/BERT).
        activation: a name from :data:`ACTIVATIONS`.
        dropout: dropout after ``fc2`` (training only).

    Shapes: ``(..., D) -> (..., D)``.
    """

    def __init__(self, dim: int, hidden_dim: int, activation: str = "gelu", dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = get_activation(activation)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.act(self.fc1(x))))
