"""FLAVA's pretraining loss: a weighted sum of its six objectives (paper §3.2-3.3, all weights 1.0).

:class:`FLAVALossWeights` lives here, beside the loss that consumes it, although
:class:`~mmkit.models.FLAVAConfig` holds one (``pretraining.weights``): ``mmkit.losses`` imports nothing
from mmkit, so ``mmkit.models`` may build on it. Its fields are the config's keys, one per objective of
the table in :mod:`mmkit.models.flava_objectives` (which names them, orders them and says what each
computes); nothing here spells a name again (:data:`OBJECTIVES` is read off the fields).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.utils.errors import InputError


@dataclass
class FLAVALossWeights:
    """Weight of each objective in the total; 0 switches an objective off (it is not computed).

    ``extra`` holds the weights of objectives added to FLAVA's six (``{"name": weight}``, see
    :class:`~mmkit.models.Objective`).
    """

    global_contrastive: float = 1.0
    itm: float = 1.0
    mmm_image: float = 1.0
    mmm_text: float = 1.0
    mim: float = 1.0
    mlm: float = 1.0
    extra: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        clash = sorted(set(self.extra) & set(OBJECTIVES))
        if clash:
            raise InputError(f"weights.extra names FLAVA's own objectives {clash}: set weights.<name> instead")
        for name, value in self.as_dict().items():
            if value < 0:
                raise InputError(f"loss weight {name}={value} must be non-negative")

    def get(self, name: str) -> float:
        """The weight of objective ``name``; an unknown name raises, saying where its weight goes."""
        if name in OBJECTIVES:
            return float(getattr(self, name))
        if name in self.extra:
            return float(self.extra[name])
        raise InputError(f"objective {name!r} has no weight: set pretraining.weights.extra.{name}")

    def active(self, name: str) -> bool:
        return self.get(name) > 0

    def as_dict(self) -> dict[str, float]:
        """``{objective: weight}`` over FLAVA's objectives and the added ones."""
        return {**{k: float(getattr(self, k)) for k in OBJECTIVES}, **{k: float(v) for k, v in self.extra.items()}}


#: FLAVA's own objectives: the names of :class:`FLAVALossWeights`' weight fields
OBJECTIVES = tuple(f.name for f in fields(FLAVALossWeights) if f.name != "extra")


def masked_cross_entropy(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Mean cross-entropy over the labelled positions, in fp32.

    Args:
        logits: ``(M, V)``; labels: ``(M,)``, ``ignore_index`` at positions that do not count
            (the padding of a static-shape budget, :func:`~mmkit.heads.select_budget`).

    Returns:
        Scalar: the sum over labelled positions divided by their number, without a host sync or a
        branch on the data (so it compiles whole). With no labelled position (``M == 0``, or every
        label ignored) it is 0 and still connected to the graph, instead of the NaN a plain mean
        would give.
    """
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp_min(1)


class FLAVAPretrainingLoss(nn.Module):
    """Combine per-objective losses into the weighted total. No parameters.

    Args:
        weights: :class:`FLAVALossWeights`.
    """

    def __init__(self, weights: FLAVALossWeights | None = None) -> None:
        super().__init__()
        self.weights = weights or FLAVALossWeights()

    def forward(self, losses: dict[str, Tensor]) -> Tensor:
        """``sum_k w_k * losses[k]`` over the objectives present; unknown names raise."""
        weights = self.weights.as_dict()
        unknown = set(losses) - set(weights)
        if unknown:
            raise InputError(f"unknown objectives {sorted(unknown)}; expected some of {tuple(weights)}")
        if not losses:
            raise InputError("no objective was computed for this batch (all weights 0 for its kind?)")
        return sum(weights[k] * v for k, v in losses.items())  # type: ignore[return-value]
