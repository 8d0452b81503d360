"""FLAVA: a foundational language and vision alignment model.

Singh et al., "FLAVA: A Foundational Language And Vision Alignment Model",
CVPR 2022 (arXiv 2112.04482). Sizes and the wiring below follow the paper and
the released checkpoint's configuration (see ``docs/FLAVA.md``):

* image encoder: ViT-B/16; text encoder: the same pre-norm transformer over BERT
  WordPiece ids; multimodal encoder: 6 layers over
  ``[CLS_M, proj(image states), proj(text states)]``;
* the fusion encoder reads each unimodal encoder's hidden states *before* its
  final LayerNorm, the contrastive embeddings use the states *after* it;
* contrastive embeddings are L2-normalised linear projections (768 -> 768) of
  ``CLS_I`` and ``CLS_T``; ``logit_scale`` starts at ln(1/0.07) = 2.6592 and is
  clamped to [0, ln 100] by the training loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.encoders import (
    ImageEncoder,
    ImageEncoderConfig,
    MultimodalEncoder,
    MultimodalEncoderConfig,
    TextEncoder,
    TextEncoderConfig,
    flava_multimodal_encoder,
    flava_text_encoder,
    vit_encoder,
)
from mmkit.layers.init import init_std_for, init_weights
from mmkit.layers.transformer import EncoderOutput
from mmkit.losses.flava import FLAVALossWeights
from mmkit.models.contrastive import ContrastiveTowers
from mmkit.utils.config import ConfigMethods, replace_config
from mmkit.utils.errors import InputError


@dataclass
class CodebookConfig:
    """The dVAE image tokenizer that makes MIM targets (DALL-E encoder sizes by default).

    Attributes:
        hidden_size, vocab_size, num_groups, blocks_per_group: :class:`~mmkit.tokenizers.DalleEncoder` sizes.
        image_size: side of the tokenizer's input (112 for FLAVA: ``image_size / 8`` must equal
            the ViT's patch grid).
        checkpoint: optional path to tokenizer weights (see
            :func:`~mmkit.tokenizers.dalle_encoder_from_checkpoint`); None keeps a random init.
        allow_random: accept a randomly initialised tokenizer for training. A random dVAE's ids carry
            almost nothing about the image: the MIM and MMM-image losses fall to ~0 within a few
            hundred steps while their gradients crowd out the other objectives'. The pretraining
            recipe refuses it unless this is set, and the builder warns.
        enabled: build the tokenizer into the pretraining model. Off: batches must carry
            precomputed ``image_token_ids``.
        channels_last: run the tokenizer's convolutions in channels-last layout.
    """

    hidden_size: int = 256
    vocab_size: int = 8192
    num_groups: int = 4
    blocks_per_group: int = 2
    image_size: int = 112
    checkpoint: str | None = None
    allow_random: bool = False
    enabled: bool = True
    channels_last: bool = True


@dataclass
class PretrainingConfig:
    """Objective weights and options of :class:`~mmkit.models.FLAVAForPreTraining`.

    Attributes:
        weights: per-objective loss weights (all 1.0 in FLAVA; 0 skips an objective).
        unimodal_losses_on_pairs: also compute MIM and MLM on paired batches (from the masked
            image and text passes the paired step runs anyway).
        contrastive_gather_with_grad: back-propagate through the cross-rank gather.
        contrastive_matched_only: with ITM negatives in a batch, drop the mismatched pairs'
            embeddings from the contrastive *columns* too. Off (the reference behaviour): only
            their rows are dropped, so a swapped caption can sit in the columns twice.
        ignore_index: label value of positions that are not predicted.
        mim_target: what the masked-image objectives (MIM and MMM image) predict: ``"tokens"`` (the
            dVAE codebook ids, FLAVA) or ``"pixels"`` (the masked patches' pixels, regressed with a
            mean squared error as in MAE, He et al. 2022: no tokenizer at all).
        pixel_norm: with ``"pixels"``, normalise each target patch by its own mean and variance (MAE's
            better-performing variant).
    """

    weights: FLAVALossWeights = field(default_factory=FLAVALossWeights)
    unimodal_losses_on_pairs: bool = False
    contrastive_gather_with_grad: bool = True
    contrastive_matched_only: bool = False
    ignore_index: int = -100
    mim_target: str = "tokens"
    pixel_norm: bool = True

    def __post_init__(self) -> None:
        if self.mim_target not in ("tokens", "pixels"):
            raise InputError(f"pretraining.mim_target must be 'tokens' or 'pixels', got {self.mim_target!r}")


@dataclass
class FLAVAConfig(ConfigMethods):
    """Every size and switch of a FLAVA model. Defaults = the released FLAVA.

    Attributes:
        image: image encoder sizes (ViT-B/16 at 224²).
        text: text encoder sizes (12 layers, BERT uncased vocabulary).
        multimodal: fusion encoder sizes (6 layers).
        projection_dim: width of the contrastive embeddings (768 in the release;
            the supplement's 512 is not what was released).
        logit_scale_init: initial ``log(1/temperature)``.
        logit_scale_max: upper clamp of ``logit_scale`` (ln 100).
        attention_backend: ``"sdpa" | "xformers" | "math" | "auto"``.
        init_std: std of the weight initialisation. None (default): by width, ``0.02 * sqrt(768 / width)``
            for each encoder, projection and head (:func:`~mmkit.layers.init.init_std_for`): the released
            model's 0.02 at width 768, 0.098 at the tiny preset's 32. A number applies everywhere.
        codebook: the image tokenizer (pretraining only).
        pretraining: objective weights and options (pretraining only).
    """

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    multimodal: MultimodalEncoderConfig = field(default_factory=MultimodalEncoderConfig)
    projection_dim: int = 768
    logit_scale_init: float = 2.6592
    logit_scale_max: float = math.log(100.0)
    attention_backend: str = "sdpa"
    init_std: float | None = None
    codebook: CodebookConfig = field(default_factory=CodebookConfig)
    pretraining: PretrainingConfig = field(default_factory=PretrainingConfig)

    @classmethod
    def tiny(cls, **overrides: Any) -> FLAVAConfig:
        """A ~1M-parameter FLAVA (mostly the word-embedding table) for tests and CPU demos.

        Width 32, 2 heads, 2 image/text layers and 1 fusion layer, 32² images in
        8² patches (16 patches), 30522-word vocabulary (so a BERT tokenizer works),
        64 text positions; a 16-wide, 512-code tokenizer on 32² inputs (4 x 4 tokens).
        """
        small = dict(hidden_size=32, num_heads=2, mlp_dim=64)
        cfg = cls(
            image=ImageEncoderConfig(**small, num_layers=2, image_size=32, patch_size=8),
            text=TextEncoderConfig(**small, num_layers=2, max_positions=64),
            multimodal=MultimodalEncoderConfig(**small, num_layers=1),
            projection_dim=32,
            codebook=CodebookConfig(hidden_size=16, vocab_size=512, image_size=32),
        )
        return replace_config(cfg, overrides)


@dataclass
class FLAVAOutput:
    """What :meth:`FLAVAModel.forward` returns; a field is ``None`` when its input was not given.

    Attributes:
        image: image encoder output over ``1 + Np`` tokens.
        text: text encoder output over ``L`` tokens.
        multimodal: fusion encoder output over ``1 + (1 + Np) + L`` tokens.
        image_embedding: ``(B, P)`` L2-normalised contrastive embedding of ``CLS_I``.
        text_embedding: ``(B, P)`` L2-normalised contrastive embedding of ``CLS_T``.
    """

    image: EncoderOutput | None = None
    text: EncoderOutput | None = None
    multimodal: EncoderOutput | None = None
    image_embedding: Tensor | None = None
    text_embedding: Tensor | None = None


class FLAVAModel(ContrastiveTowers, nn.Module):
    """The FLAVA encoders, fusion and contrastive projections (no pretraining heads).

    Args:
        image_encoder, text_encoder, multimodal_encoder: the three encoders.
        projection_dim: contrastive embedding width ``P``.
        logit_scale_init: initial value of the learnable ``logit_scale``.
        logit_scale_max: the clamp's upper bound, kept for the training loop.
        init_std: the projections' initialisation std; None: by their input width
            (:func:`~mmkit.layers.init.init_std_for`).

    Build it with :func:`flava_model`.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        multimodal_encoder: MultimodalEncoder,
        projection_dim: int = 768,
        logit_scale_init: float = 2.6592,
        logit_scale_max: float = math.log(100.0),
        init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.multimodal_encoder = multimodal_encoder
        di, dt, dm = image_encoder.width, text_encoder.width, multimodal_encoder.width
        self.image_projection = nn.Linear(di, projection_dim)
        self.text_projection = nn.Linear(dt, projection_dim)
        self.image_to_mm_projection = nn.Linear(di, dm)
        self.text_to_mm_projection = nn.Linear(dt, dm)
        # shape (1,) rather than a scalar: FSDP2 cannot shard 0-d parameters (transformers stores a scalar)
        self.logit_scale = nn.Parameter(torch.full((1,), float(logit_scale_init)))
        self.logit_scale_max = logit_scale_max
        self.logit_scale_init, self.init_std = float(logit_scale_init), init_std

    @torch.no_grad()
    def reset_parameters(self, encoders: bool = True) -> None:
        """Initialise as :func:`flava_model` does: each encoder by its own ``reset_parameters()`` (unless
        ``encoders`` is False), then the four projections (:func:`~mmkit.layers.init.init_weights` with their
        input width's std) and ``logit_scale``. Works on FSDP2's sharded parameters (each rank its shard)."""
        if encoders:
            for encoder in (self.image_encoder, self.text_encoder, self.multimodal_encoder):
                encoder.reset_parameters()
        for proj in (
            self.image_projection,
            self.text_projection,
            self.image_to_mm_projection,
            self.text_to_mm_projection,
        ):
            init_weights(proj, std=init_std_for(proj.in_features, self.init_std))
        self.logit_scale.fill_(self.logit_scale_init)

    # -- unimodal -----------------------------------------------------------------
    def encode_image(
        self, pixel_values: Tensor, patch_mask: Tensor | None = None, *, output_hidden_states: bool = False
    ) -> EncoderOutput:
        """Image encoder alone. ``pixel_values`` ``(B, C, H, W)``; ``patch_mask`` optional bool
        ``(B, Np)``, True = masked. Returns an :class:`EncoderOutput` over ``1 + Np`` tokens."""
        return self.image_encoder(pixel_values, patch_mask, output_hidden_states=output_hidden_states)

    def encode_text(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Text encoder alone. ``input_ids`` ``(B, L)``; ``attention_mask`` ``(B, L)``, True/1 =
        real token. Returns an :class:`EncoderOutput` over ``L`` tokens."""
        return self.text_encoder(
            input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states
        )

    def image_features(self, image: EncoderOutput) -> Tensor:
        """``(B, D)`` image feature before the projection: ``CLS_I`` after the final norm (the
        linear-probe feature)."""
        return image.last_hidden_state[:, 0]

    def text_features(self, text: EncoderOutput) -> Tensor:
        """``(B, D)`` text feature before the projection: ``CLS_T`` after the final norm."""
        return text.last_hidden_state[:, 0]

    # -- fusion -------------------------------------------------------------------
    def encode_multimodal(
        self, image: EncoderOutput, text: EncoderOutput, *, output_hidden_states: bool = False
    ) -> EncoderOutput:
        """Fuse an image and a text encoder output (same batch).

        Projects both encoders' *pre-norm* states to the fusion width, concatenates
        ``[image tokens, text tokens]`` and runs the fusion encoder, which prepends
        ``CLS_M``. Text padding (``text.attention_mask``) stays masked.

        Returns:
            :class:`EncoderOutput` over ``1 + (1 + Np) + L`` tokens.
        """
        img = self.image_to_mm_projection(image.pre_norm_hidden_state)
        txt = self.text_to_mm_projection(text.pre_norm_hidden_state)
        if img.shape[0] != txt.shape[0]:
            raise InputError(f"image batch ({img.shape[0]}) and text batch ({txt.shape[0]}) differ")
        mask = None
        if text.attention_mask is not None:
            keep_img = torch.ones(img.shape[:2], dtype=torch.bool, device=img.device)
            mask = torch.cat([keep_img, text.attention_mask], dim=1)
        return self.multimodal_encoder(torch.cat([img, txt], dim=1), mask, output_hidden_states=output_hidden_states)

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        patch_mask: Tensor | None = None,
        *,
        skip_multimodal: bool = False,
        output_hidden_states: bool = False,
    ) -> FLAVAOutput:
        """Encode whatever is given: images, text, or both (then also fused).

        Args:
            pixel_values: optional ``(B, C, H, W)``.
            input_ids: optional ``(B, L)``.
            attention_mask: optional ``(B, L)`` text mask, True/1 = real token.
            token_type_ids, position_ids: optional ``(B, L)``.
            patch_mask: optional bool ``(B, Np)``, True = patch replaced by the mask token.
            skip_multimodal: do not run the fusion encoder even with both inputs.
            output_hidden_states: keep every layer's hidden states.

        Returns:
            :class:`FLAVAOutput`.
        """
        if pixel_values is None and input_ids is None:
            raise InputError("FLAVAModel needs pixel_values, input_ids or both")
        out = FLAVAOutput()
        if pixel_values is not None:
            out.image = self.encode_image(pixel_values, patch_mask, output_hidden_states=output_hidden_states)
            out.image_embedding = self.embed_image(out.image)
        if input_ids is not None:
            out.text = self.encode_text(
                input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states
            )
            out.text_embedding = self.embed_text(out.text)
        if out.image is not None and out.text is not None and not skip_multimodal:
            out.multimodal = self.encode_multimodal(out.image, out.text, output_hidden_states=output_hidden_states)
        return out

    # -- training conveniences (clamp_logit_scale, set_attention_backend, no_weight_decay: ContrastiveTowers)
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-layer activation checkpointing in all three encoders."""
        for enc in (self.image_encoder, self.text_encoder, self.multimodal_encoder):
            enc.set_grad_checkpointing(enable)

    # -- what the training runtime asks (mmkit.train.Parallelizable) -------------------------------
    def shard_units(self) -> list[nn.Module]:
        """The transformer layers of the three encoders: each a unit of activation checkpointing and FSDP2 sharding."""
        encoders = (self.image_encoder, self.text_encoder, self.multimodal_encoder)
        return [layer for enc in encoders for layer in enc.encoder.layers]

    def gathering_losses(self) -> list[nn.Module]:
        """None: the encoders hold no loss (:class:`~mmkit.models.FLAVAForPreTraining` holds the contrastive one)."""
        return []


def flava_model(config: FLAVAConfig | None = None, **overrides: Any) -> FLAVAModel:
    """Build FLAVA (Singh et al., CVPR 2022). With no arguments: the released sizes (≈241.4M parameters).

    Args:
        config: a :class:`FLAVAConfig`; default ``FLAVAConfig()``.
        **overrides: fields of :class:`FLAVAConfig`; nested ones as dicts or dotted
            keys, e.g. ``flava_model(FLAVAConfig.tiny(), attention_backend="math",
            image={"num_layers": 4})``.

    Example::

        model = flava_model(FLAVAConfig.tiny())
        out = model(pixel_values=torch.randn(2, 3, 32, 32), input_ids=torch.randint(1, 100, (2, 7)))
        out.multimodal.last_hidden_state.shape  # (2, 1 + 17 + 7, 32)
    """
    cfg = replace_config(config or FLAVAConfig(), overrides)
    backend = cfg.attention_backend
    model = FLAVAModel(
        vit_encoder(cfg.image, attention_backend=backend, init_std=cfg.init_std),
        flava_text_encoder(cfg.text, attention_backend=backend, init_std=cfg.init_std),
        flava_multimodal_encoder(cfg.multimodal, attention_backend=backend, init_std=cfg.init_std),
        projection_dim=cfg.projection_dim,
        logit_scale_init=cfg.logit_scale_init,
        logit_scale_max=cfg.logit_scale_max,
        init_std=cfg.init_std,
    )
    model.reset_parameters(encoders=False)  # the encoder builders initialised theirs
    model.config = cfg
    return model
