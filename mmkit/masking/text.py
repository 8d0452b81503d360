"""BERT-style token masking for masked language modelling.

Devlin et al., 2019 (BERT §3.1): choose 15% of the tokens; of those, 80% become
``[MASK]``, 10% a random token, 10% stay as they are; the model predicts the original
ids at the chosen positions. Special tokens (``[CLS]``, ``[SEP]``, ...) and padding are
never chosen. With whole-word masking every WordPiece of a chosen word is chosen.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from mmkit.utils.errors import InputError

IGNORE_INDEX = -100


class TokenMasker:
    """Mask token ids for MLM.

    Args:
        vocab_size: size of the vocabulary (random replacements are drawn from it, never
            from ``special_token_ids``).
        mask_token_id: id of ``[MASK]``.
        special_token_ids: ids never chosen (``[CLS]``, ``[SEP]``, ``[PAD]``, ...).
        pad_token_id: padding id (never chosen either).
        mask_prob: probability a token (or, with whole-word masking, a word) is chosen.
        mask_replace_prob: chosen tokens replaced by ``[MASK]`` (0.8).
        random_replace_prob: chosen tokens replaced by a random token (0.1); the rest stay.
        ignore_index: label of positions that are not predicted.
    """

    def __init__(
        self,
        vocab_size: int,
        mask_token_id: int,
        special_token_ids: Iterable[int] = (),
        pad_token_id: int = 0,
        mask_prob: float = 0.15,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        if not 0.0 <= mask_prob <= 1.0:
            raise InputError(f"mask_prob must be in [0, 1], got {mask_prob}")
        if mask_replace_prob < 0 or random_replace_prob < 0 or mask_replace_prob + random_replace_prob > 1:
            raise InputError(
                "mask_replace_prob and random_replace_prob must be non-negative and sum to at most 1, "
                f"got {mask_replace_prob} and {random_replace_prob}"
            )
        self.vocab_size = vocab_size
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
        self.special_token_ids = torch.tensor(sorted({*special_token_ids, pad_token_id, mask_token_id}))
        allowed = torch.ones(vocab_size, dtype=torch.bool)
        allowed[self.special_token_ids[self.special_token_ids < vocab_size]] = False
        self._random_pool = allowed.nonzero().squeeze(1)
        self.mask_prob = mask_prob
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.ignore_index = ignore_index

    def eligible(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Bool ``(B, L)``: positions that may be masked (real, non-special tokens)."""
        ok = ~torch.isin(input_ids, self.special_token_ids)
        if attention_mask is not None:
            ok &= attention_mask.bool()
        return ok

    def __call__(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        word_ids: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Mask a batch.

        Args:
            input_ids: ``(B, L)`` int64.
            attention_mask: optional ``(B, L)``, 1 = real token.
            word_ids: optional ``(B, L)`` int64 word index of each token (tokens of one
                word share it; any value for specials). Given: whole-word masking.
            generator: source of randomness.

        Returns:
            ``(masked_input_ids, labels)``, both ``(B, L)`` int64; ``labels`` holds the
            original id at chosen positions and ``ignore_index`` elsewhere. The input is
            not modified.
        """
        if input_ids.ndim != 2:
            raise InputError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        b, length = input_ids.shape
        eligible = self.eligible(input_ids, attention_mask)
        if word_ids is None:
            chosen = torch.rand(b, length, generator=generator) < self.mask_prob
        else:
            if word_ids.shape != input_ids.shape:
                raise InputError(f"word_ids must have the shape of input_ids {tuple(input_ids.shape)}")
            word_draw = torch.rand(b, length, generator=generator) < self.mask_prob
            chosen = word_draw.gather(1, word_ids.clamp(0, length - 1))
        chosen &= eligible
        labels = torch.where(chosen, input_ids, torch.full_like(input_ids, self.ignore_index))
        action = torch.rand(b, length, generator=generator)
        to_mask = chosen & (action < self.mask_replace_prob)
        to_random = (
            chosen & (action >= self.mask_replace_prob) & (action < self.mask_replace_prob + self.random_replace_prob)
        )
        pool = self._random_pool
        random_ids = pool[torch.randint(len(pool), (b, length), generator=generator)]
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_token_id), input_ids)
        masked = torch.where(to_random, random_ids, masked)
        return masked, labels
