"""What every mmkit vision-language model shares on top of its encoders (FLAVA, CLIP, SigLIP).

A model that mixes in :class:`ContrastiveTowers` defines ``image_encoder`` / ``text_encoder``,
``image_projection`` / ``text_projection``, ``logit_scale`` (and ``logit_scale_max``, ``None`` for no
clamp) and the two feature readers ``image_features(EncoderOutput) -> (B, D)`` and
``text_features(EncoderOutput) -> (B, D)``; it then gets the embedding interface the evaluation code
uses for all of them, and the training conveniences the recipes call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.layers.attention import AttentionBackend, set_attention_backend
from mmkit.layers.init import no_weight_decay_names
from mmkit.layers.transformer import EncoderOutput


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
