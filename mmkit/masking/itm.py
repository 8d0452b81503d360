"""Negatives for image-text matching (ITM).

FLAVA (paper §3.2) trains a binary classifier on ``CLS_M`` to tell matched pairs from
mismatched ones; mismatched pairs are made by giving an image another sample's caption.
Label convention: 1 = the pair matches, 0 = it does not.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mmkit.utils.errors import InputError


def itm_negatives(
    batch_size: int, prob: float = 0.5, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Choose which captions to swap.

    Each sample, with probability ``prob``, takes the caption of a different sample of the
    batch chosen uniformly (never its own).

    Args:
        batch_size: ``B``. With ``B == 1`` there is no other caption: every pair stays matched.
        prob: probability of a negative.
        generator: source of randomness.

    Returns:
        ``(caption_index, itm_labels)``, both ``(B,)`` int64: sample ``i`` is paired with
        caption ``caption_index[i]``; ``itm_labels[i]`` is 1 when that is its own caption.
    """
    if not 0.0 <= prob <= 1.0:
        raise InputError(f"prob must be in [0, 1], got {prob}")
    index = torch.arange(batch_size)
    if batch_size < 2:
        return index, torch.ones(batch_size, dtype=torch.long)
    swap = torch.rand(batch_size, generator=generator) < prob
    offset = torch.randint(1, batch_size, (batch_size,), generator=generator)
    caption_index = torch.where(swap, (index + offset) % batch_size, index)
    return caption_index, (~swap).long()
