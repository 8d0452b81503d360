"""What every mmkit vision-language model shares on top of its encoders (FLAVA, CLIP, SigLIP).

A model that mixes in :class:`ContrastiveTowers` defines ``image_encoder`` / ``text_encoder``,
``image_projection`` / ``text_projection``, ``logit_scale`` (and ``logit_scale_max``, ``None`` for no
clamp) and the two feature readers ``image_features(EncoderOutput) -> (B, D)`` and
``text_features(EncoderOutput) -> (B, D)``; it then gets the embedding interface the evaluation code
uses for all of them, and the training conveniences the recipes call.

:class:`EmbeddingGrads` and :func:`gradient_term` are what a pretraining model's second pass needs when
its contrastive loss is taken over the whole accumulated batch (:mod:`mmkit.train.whole_batch`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.layers.attention import AttentionBackend, set_attention_backend
from mmkit.layers.init import no_weight_decay_names
from mmkit.layers.transformer import EncoderOutput
from mmkit.utils.errors import InputError


@dataclass
class EmbeddingGrads:
    """The whole-batch contrastive loss's gradient, handed to one micro-batch's second pass.

    Attributes:
        rows: ``{"image": (n, P), "text": (n, P)}``: with respect to this micro-batch's embeddings (absent:
            the batch has none, e.g. FLAVA's image-only batches).
        params: ``{"logit_scale": (1,), ...}``: with respect to the loss's own parameters; given on one
            micro-batch of a step (empty on the others).
    """

    rows: dict[str, Tensor] = field(default_factory=dict)
    params: dict[str, Tensor] = field(default_factory=dict)


def gradient_term(rows: dict[str, Tensor], params: dict[str, Tensor], grads: EmbeddingGrads) -> Tensor:
    """``sum(rows[k] * grads.rows[k]) + sum(params[k] * grads.params[k])`` in fp32: a scalar whose gradient
    is the whole-batch loss's, through this micro-batch's ``rows`` (``(n, P)`` each, with their graph) and
    the ``params`` (the loss's parameters as the forward sees them)."""
    terms = [(rows[k].float() * g).sum() for k, g in grads.rows.items()]
    terms += [(params[k].float() * g).sum() for k, g in grads.params.items()]
    if not terms:
        raise InputError("gradient_term: no gradient given (EmbeddingGrads is empty)")
    return torch.stack(terms).sum()


class ContrastiveTowers:
    """Mixin (before ``nn.Module`` in the bases): projections to the shared space and training helpers."""

    def project_image(self, features: Tensor) -> Tensor:
        """``(B, D)`` image features -> ``(B, P)`` L2-normalised embeddings."""
        return F.normalize(self.image_projection(features), dim=-1)

    def project_text(self, features: Tensor) -> Tensor:
        """``(B, D)`` text features -> ``(B, P)`` L2-normalised embeddings."""
        return F.normalize(self.text_projection(features), dim=-1)

    def embed_image(self, image: EncoderOutput) -> Tensor:
        """``(B, P)`` L2-normalised embedding from an image encoder output."""
        return self.project_image(self.image_features(image))

    def embed_text(self, text: EncoderOutput) -> Tensor:
        """``(B, P)`` L2-normalised embedding from a text encoder output."""
        return self.project_text(self.text_features(text))

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        """Clamp ``logit_scale`` to ``[0, logit_scale_max]`` (no-op without a maximum); call after each
        optimiser step."""
        if self.logit_scale_max is not None:
            self.logit_scale.clamp_(0.0, self.logit_scale_max)

    def set_attention_backend(self, backend: AttentionBackend) -> None:
        """Switch every attention layer to ``backend``."""
        set_attention_backend(self, backend)

    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (biases, norms, embeddings, tokens, logit scale/bias)."""
        return no_weight_decay_names(self)
