"""CLIP and SigLIP: dual encoders built from the same blocks as FLAVA.

* CLIP (Radford et al., "Learning Transferable Visual Models From Natural Language Supervision",
  ICML 2021): a ViT with an input LayerNorm and a bias-free patch convolution, pooled at CLS; a
  causal text transformer pooled at the end-of-text token; bias-free linear projections to a
  shared space; the softmax contrastive loss with a learned temperature.
* SigLIP (Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023): a ViT without
  CLS token, pooled by multi-head attention with a learned probe ("MAP" head); a bidirectional text
  transformer pooled at its last position, then a linear head with bias; no image projection; the
  pairwise sigmoid loss with a learned temperature *and bias*.

Both are one class, :class:`DualEncoderModel`, configured by :class:`CLIPConfig` or
:class:`SigLIPConfig`, whose defaults are the released ViT-B/16 sizes (transformers'
``openai/clip-vit-base-patch16`` and ``google/siglip-base-patch16-224`` configurations; facts in
``docs/CLIP_SIGLIP.md``). The model shares :class:`~mmkit.models.FLAVAModel`'s interface
(``encode_image``, ``encode_text``, ``image_features``, ``project_image``, ``embed_image``, ...), so
the evaluation code runs on any of the three.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.encoders import ImageEncoder, ImageEncoderConfig, TextEncoder, TextEncoderConfig, vit_encoder
from mmkit.encoders import flava_text_encoder as build_text_encoder
from mmkit.layers.init import init_std_for, init_weights
from mmkit.layers.transformer import EncoderOutput
from mmkit.losses.contrastive import ContrastiveLoss
from mmkit.losses.sigmoid import SigmoidContrastiveLoss
from mmkit.models.contrastive import ContrastiveTowers, EmbeddingGrads, gradient_term
from mmkit.utils.config import ConfigMethods, replace_config
from mmkit.utils.errors import InputError

LOSSES = ("softmax", "sigmoid")


def _clip_image() -> ImageEncoderConfig:
    return ImageEncoderConfig(
        activation="quick_gelu",
        norm_eps=1e-5,
        patch_size=16,
        use_mask_token=False,
        input_norm=True,
        patch_bias=False,
        pooler="first",
    )


def _clip_text() -> TextEncoderConfig:
    return TextEncoderConfig(
        hidden_size=512,
        num_heads=8,
        mlp_dim=2048,
        activation="quick_gelu",
        norm_eps=1e-5,
        vocab_size=49408,
        max_positions=77,
        type_vocab_size=0,
        pad_token_id=None,
        causal=True,
        embedding_norm=False,
        pooler="eot",
        eos_token_id=49407,
    )


def _siglip_image() -> ImageEncoderConfig:
    return ImageEncoderConfig(
        activation="gelu_tanh",
        norm_eps=1e-6,
        use_mask_token=False,
        use_cls_token=False,
        pooler="attention",
    )


def _siglip_text() -> TextEncoderConfig:
    return TextEncoderConfig(
        activation="gelu_tanh",
        norm_eps=1e-6,
        vocab_size=32000,
        max_positions=64,
        type_vocab_size=0,
        pad_token_id=None,
        embedding_norm=False,
        pooler="last",
    )


@dataclass
class DualEncoderConfig(ConfigMethods):
    """Every size and switch of a dual encoder; use :class:`CLIPConfig` or :class:`SigLIPConfig`.

    Attributes:
        image, text: the encoders (their ``pooler`` picks the feature each side projects).
        projection_dim: width ``P`` of the shared embedding space.
        image_projection, text_projection: a linear map from the encoder's pooled feature to ``P``
            (SigLIP has none on the image side: its attention pool is the head).
        projection_bias: the projections have a bias (SigLIP's text head does, CLIP's do not).
        logit_scale_init: initial ``log`` of the logit scale (temperature's inverse).
        logit_scale_max: upper clamp of ``logit_scale`` (``ln 100`` for CLIP; ``None``: no clamp).
        logit_bias_init: initial logit bias (SigLIP: -10); ``None``: no bias parameter.
        loss: ``"softmax"`` (CLIP's symmetric cross-entropy) or ``"sigmoid"`` (SigLIP's).
        attention_backend: ``"sdpa" | "xformers" | "math" | "auto"``.
        init_std: std of the weight initialisation (training from scratch). None (default): by width,
            ``0.02 * sqrt(768 / width)`` per tower and projection, as FLAVA's
            (:func:`~mmkit.layers.init.init_std_for`); a number applies everywhere.
    """

    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    projection_dim: int = 512
    image_projection: bool = True
    text_projection: bool = True
    projection_bias: bool = False
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float | None = math.log(100.0)
    logit_bias_init: float | None = None
    loss: str = "softmax"
    attention_backend: str = "sdpa"
    init_std: float | None = None

    model_type = "dual_encoder"

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {self.loss!r}")
        if not self.image_projection and self.image.hidden_size != self.projection_dim:
            raise InputError(
                f"without an image projection the image width ({self.image.hidden_size}) must equal "
                f"projection_dim ({self.projection_dim})"
            )
        if not self.text_projection and self.text.hidden_size != self.projection_dim:
            raise InputError(
                f"without a text projection the text width ({self.text.hidden_size}) must equal "
                f"projection_dim ({self.projection_dim})"
            )
        for side, cfg in (("image", self.image), ("text", self.text)):
            if cfg.pooler == "none" or cfg.pooler == "tanh":
                raise InputError(
                    f"{side}.pooler={cfg.pooler!r}: a dual encoder projects the pooled feature as it is; "
                    "use 'first', 'eot', 'last' or 'attention'"
                )

    @property
    def text_length(self) -> int | None:
        """The one length every caption is padded to, when the text pooler needs it (``"last"``: SigLIP
        pools the last position), else None (each batch padded to its longest caption)."""
        return self.text.max_positions if self.text.pooler == "last" else None

    def for_tokenizer(self, vocab_size: int, eos_token_id: int, max_length: int) -> DualEncoderConfig:
        """This config fitted to a run's tokenizer: its vocabulary; its end-of-text id (``[SEP]`` for
        WordPiece) as the ``"eot"`` pooler's; and, for a fixed-length pooler (:attr:`text_length`),
        ``max_length`` positions.

        Raises:
            InputError: ``max_length`` exceeds the text encoder's positions.
        """
        text: dict[str, Any] = {"vocab_size": vocab_size}
        if self.text.pooler == "eot":
            text["eos_token_id"] = eos_token_id
        if self.text.pooler == "last":
            text["max_positions"] = max_length
        out = self.replace(text=text)
        if max_length > out.text.max_positions:
            positions = out.text.max_positions
            raise InputError(f"data.max_length={max_length} exceeds the text encoder's {positions} positions")
        return out


_TINY = dict(hidden_size=32, num_heads=2, mlp_dim=64, num_layers=2)


@dataclass
class CLIPConfig(DualEncoderConfig):
    """CLIP ViT-B/16 (149.6M parameters): 768-wide 12-layer ViT at 224² in 16² patches, 512-wide
    12-layer causal text transformer over a 49408-id BPE vocabulary and 77 positions, 512-d embeddings,
    quick-GELU, LayerNorm eps 1e-5, ``logit_scale`` from ln(1/0.07) clamped to ln 100."""

    image: ImageEncoderConfig = field(default_factory=_clip_image)
    text: TextEncoderConfig = field(default_factory=_clip_text)

    model_type = "clip"

    @classmethod
    def tiny(cls, **overrides: Any) -> CLIPConfig:
        """A CLIP of FLAVA's tiny sizes (width 32, 2 layers, 32² images in 8² patches), over the BERT
        uncased vocabulary (30522 ids, end-of-text = ``[SEP]`` = 102) so mmkit's tokenizer works."""
        cfg = cls(
            image=replace_config(_clip_image(), dict(_TINY, image_size=32, patch_size=8)),
            text=replace_config(_clip_text(), dict(_TINY, vocab_size=30522, max_positions=64, eos_token_id=102)),
            projection_dim=32,
        )
        return replace_config(cfg, overrides)


@dataclass
class SigLIPConfig(DualEncoderConfig):
    """SigLIP B/16 at 224² (203.2M parameters): 768-wide 12-layer ViT without CLS, attention-pooled;
    768-wide 12-layer text transformer over a 32000-id vocabulary and 64 positions, pooled at the last
    position, then a 768 -> 768 head with bias; tanh-GELU, LayerNorm eps 1e-6; the sigmoid loss with
    ``logit_scale`` from ln 10 and ``logit_bias`` from -10 (paper §3.2)."""

    image: ImageEncoderConfig = field(default_factory=_siglip_image)
    text: TextEncoderConfig = field(default_factory=_siglip_text)
    projection_dim: int = 768
    image_projection: bool = False
    projection_bias: bool = True
    logit_scale_init: float = math.log(10.0)
    logit_scale_max: float | None = None
    logit_bias_init: float | None = -10.0
    loss: str = "sigmoid"

    model_type = "siglip"

    @classmethod
    def tiny(cls, **overrides: Any) -> SigLIPConfig:
        """A SigLIP of FLAVA's tiny sizes (width 32, 2 layers, 32² images in 8² patches), over the BERT
        uncased vocabulary (30522 ids) so mmkit's tokenizer works."""
        cfg = cls(
            image=replace_config(_siglip_image(), dict(_TINY, image_size=32, patch_size=8)),
            text=replace_config(_siglip_text(), dict(_TINY, vocab_size=30522, max_positions=64)),
            projection_dim=32,
        )
        return replace_config(cfg, overrides)


CONFIGS: dict[str, type[DualEncoderConfig]] = {"clip": CLIPConfig, "siglip": SigLIPConfig}


@dataclass
class DualEncoderOutput:
    """What :meth:`DualEncoderModel.forward` returns; a field is ``None`` when its input was not given.

    Attributes:
        image, text: the encoder outputs.
        image_embedding, text_embedding: ``(B, P)`` L2-normalised embeddings.
        logits_per_image: ``(B_image, B_text)`` scaled (and, for SigLIP, biased) similarities, when both
            inputs are given; ``logits_per_text`` is its transpose.
    """

    image: EncoderOutput | None = None
    text: EncoderOutput | None = None
    image_embedding: Tensor | None = None
    text_embedding: Tensor | None = None
    logits_per_image: Tensor | None = None
    logits_per_text: Tensor | None = None


class DualEncoderModel(ContrastiveTowers, nn.Module):
    """An image encoder and a text encoder meeting in one embedding space (CLIP, SigLIP).

    Args:
        image_encoder, text_encoder: encoders with a pooler (their ``pooler_output`` is projected).
        image_projection, text_projection: ``(B, D) -> (B, P)`` maps (``nn.Identity`` for none).
        logit_scale_init: initial ``logit_scale`` (the logits are ``exp(logit_scale) * cos``).
        logit_scale_max: its clamp's upper bound, for the training loop (``None``: no clamp).
        logit_bias_init: initial ``logit_bias`` added to every logit; ``None``: no bias.

    Build it with :func:`clip_model` or :func:`siglip_model`.
    """

    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        image_projection: nn.Module,
        text_projection: nn.Module,
        logit_scale_init: float,
        logit_scale_max: float | None = None,
        logit_bias_init: float | None = None,
    ) -> None:
        super().__init__()
        for side, enc in (("image", image_encoder), ("text", text_encoder)):
            if enc.pooler is None:
                raise InputError(f"the {side} encoder has no pooler; a dual encoder projects its pooled feature")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_projection = image_projection
        self.text_projection = text_projection
        # shape (1,), not a scalar: FSDP2 cannot shard 0-d parameters
        self.logit_scale = nn.Parameter(torch.full((1,), float(logit_scale_init)))
        self.logit_bias = None if logit_bias_init is None else nn.Parameter(torch.full((1,), float(logit_bias_init)))
        self.logit_scale_max = logit_scale_max

    # -- the interface FLAVAModel shares ---------------------------------------------------------
    def encode_image(self, pixel_values: Tensor, *, output_hidden_states: bool = False) -> EncoderOutput:
        """Image encoder alone. ``pixel_values`` ``(B, C, H, W)``; ``pooler_output`` is the ``(B, D)``
        feature the projection reads."""
        return self.image_encoder(pixel_values, output_hidden_states=output_hidden_states)

    def encode_text(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Text encoder alone. ``input_ids`` ``(B, L)``; ``attention_mask`` ``(B, L)``, True/1 = real token
        (SigLIP was trained on texts padded to full length without a mask)."""
        return self.text_encoder(
            input_ids, attention_mask, token_type_ids, position_ids, output_hidden_states=output_hidden_states
        )

    def image_features(self, image: EncoderOutput) -> Tensor:
        """``(B, D)`` pooled image feature (before the projection): the linear-probe feature."""
        return image.pooler_output

    def text_features(self, text: EncoderOutput) -> Tensor:
        """``(B, D)`` pooled text feature (before the projection)."""
        return text.pooler_output

    def logits(self, image_embedding: Tensor, text_embedding: Tensor) -> Tensor:
        """``(B_image, B_text)`` logits ``exp(logit_scale) * <image, text> (+ logit_bias)``."""
        logits = image_embedding @ text_embedding.t() * self.logit_scale.exp()
        return logits if self.logit_bias is None else logits + self.logit_bias

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> DualEncoderOutput:
        """Encode whatever is given: images, text, or both (then also the logits).

        Args:
            pixel_values: optional ``(B, C, H, W)``.
            input_ids: optional ``(B, L)``. attention_mask: optional ``(B, L)``, True/1 = real token.
            position_ids: optional ``(B, L)``.
            output_hidden_states: keep every layer's hidden states.
        """
        if pixel_values is None and input_ids is None:
            raise InputError(f"{type(self).__name__} needs pixel_values, input_ids or both")
        out = DualEncoderOutput()
        if pixel_values is not None:
            out.image = self.encode_image(pixel_values, output_hidden_states=output_hidden_states)
            out.image_embedding = self.embed_image(out.image)
        if input_ids is not None:
            out.text = self.encode_text(
                input_ids, attention_mask, position_ids=position_ids, output_hidden_states=output_hidden_states
            )
            out.text_embedding = self.embed_text(out.text)
        if out.image_embedding is not None and out.text_embedding is not None:
            out.logits_per_image = self.logits(out.image_embedding, out.text_embedding)
            out.logits_per_text = out.logits_per_image.t()
        return out

    # -- training conveniences (clamp_logit_scale, set_attention_backend, no_weight_decay: ContrastiveTowers)
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Per-layer activation checkpointing in both encoders."""
        self.image_encoder.set_grad_checkpointing(enable)
        self.text_encoder.set_grad_checkpointing(enable)

    # -- what the training runtime asks (mmkit.train.Parallelizable) -------------------------------
    def shard_units(self) -> list[nn.Module]:
        """The transformer layers of both encoders: each a unit of activation checkpointing and FSDP2 sharding."""
        return [*self.image_encoder.encoder.layers, *self.text_encoder.encoder.layers]

    def gathering_losses(self) -> list[nn.Module]:
        """None: the dual encoder holds no loss (:class:`DualEncoderForPreTraining` holds it)."""
        return []


def _projection(enabled: bool, width: int, dim: int, bias: bool, init_std: float | None) -> nn.Module:
    if not enabled:
        return nn.Identity()
    proj = nn.Linear(width, dim, bias=bias)
    init_weights(proj, std=init_std_for(width, init_std))
    return proj


def dual_encoder_model(config: DualEncoderConfig, **overrides: Any) -> DualEncoderModel:
    """Build a :class:`DualEncoderModel` from any :class:`DualEncoderConfig` (CLIP or SigLIP)."""
    cfg = replace_config(config, overrides)
    backend, std = cfg.attention_backend, cfg.init_std
    model = DualEncoderModel(
        # CLIP and SigLIP draw their class token, position table and probe (no zeros, unlike FLAVA)
        vit_encoder(cfg.image, attention_backend=backend, init_std=std, zero_init_tokens=False),
        build_text_encoder(cfg.text, attention_backend=backend, init_std=std, zero_init_tokens=False),
        _projection(cfg.image_projection, cfg.image.hidden_size, cfg.projection_dim, cfg.projection_bias, std),
        _projection(cfg.text_projection, cfg.text.hidden_size, cfg.projection_dim, cfg.projection_bias, std),
        logit_scale_init=cfg.logit_scale_init,
        logit_scale_max=cfg.logit_scale_max,
        logit_bias_init=cfg.logit_bias_init,
    )
    model.config = cfg
    return model


def clip_model(config: CLIPConfig | None = None, **overrides: Any) -> DualEncoderModel:
    """Build CLIP (Radford et al. 2021). No arguments: ViT-B/16, exactly transformers' 149,620,737 parameters.

    Example::

        model = clip_model(CLIPConfig.tiny())
        out = model(pixel_values=torch.randn(2, 3, 32, 32), input_ids=torch.tensor([[101, 7, 102], [101, 102, 0]]))
        out.logits_per_image.shape  # (2, 2)
    """
    return dual_encoder_model(config or CLIPConfig(), **overrides)


def siglip_model(config: SigLIPConfig | None = None, **overrides: Any) -> DualEncoderModel:
    """Build SigLIP (Zhai et al. 2023). No arguments: B/16 at 224², exactly transformers' 203,155,970 parameters."""
    return dual_encoder_model(config or SigLIPConfig(), **overrides)


@dataclass
class DualEncoderPretrainingOutput:
    """What :meth:`DualEncoderForPreTraining.forward` returns.

    Attributes:
        loss: the scalar training loss (0 in the two passes of whole-batch accumulation: the step takes the
            contrastive loss itself). losses: ``{"contrastive": loss}`` (the recipes log every entry; empty
            in the two passes).
        image_embedding, text_embedding: ``(B, P)`` L2-normalised embeddings of this rank's pairs.
        contrastive_rows: ``{"image": (B, P), "text": (B, P)}``: what the batch gives a contrastive loss
            over the whole accumulated batch (:meth:`DualEncoderForPreTraining.whole_batch_loss`).
        gradient_term: given ``embedding_grads``, the scalar whose gradient is that loss's through this
            batch (:func:`~mmkit.models.contrastive.gradient_term`), else None.
    """

    loss: Tensor
    losses: dict[str, Tensor]
    image_embedding: Tensor
    text_embedding: Tensor
    contrastive_rows: dict[str, Tensor] = field(default_factory=dict)
    gradient_term: Tensor | None = None


class DualEncoderForPreTraining(nn.Module):
    """A :class:`DualEncoderModel` with its loss: CLIP's symmetric cross-entropy over the global batch
    (:class:`~mmkit.losses.ContrastiveLoss`, gathered with gradient) or SigLIP's pairwise sigmoid loss
    with the texts passed around the ranks (:class:`~mmkit.losses.SigmoidContrastiveLoss`).

    Args:
        model: the dual encoder. loss: ``"softmax"`` or ``"sigmoid"`` (default ``model.config.loss``).
    """

    def __init__(self, model: DualEncoderModel, loss: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.loss_kind = loss or model.config.loss
        if self.loss_kind not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {self.loss_kind!r}")
        if self.loss_kind == "sigmoid" and model.logit_bias is None:
            raise InputError("the sigmoid loss needs a logit bias: set logit_bias_init (SigLIP: -10)")
        self.contrastive = ContrastiveLoss() if self.loss_kind == "softmax" else SigmoidContrastiveLoss()
        #: the loss whose chance level is ``ln(batch)`` (a health check's reference); the sigmoid loss has none
        self.chance_loss = "contrastive" if self.loss_kind == "softmax" else None
        self.config = getattr(model, "config", None)

    def set_cross_rank(self, enabled: bool) -> None:
        """Score against every rank's batch (training) or this rank's only (evaluation on identical data)."""
        self.contrastive.cross_rank = enabled

    def shard_units(self) -> list[nn.Module]:
        """The dual encoder's transformer layers (:meth:`DualEncoderModel.shard_units`)."""
        return self.model.shard_units()

    def gathering_losses(self) -> list[nn.Module]:
        """CLIP's softmax loss, which gathers the embeddings across ranks; none for SigLIP's sigmoid loss (it
        passes the texts around the ranks)."""
        return [self.contrastive] if isinstance(self.contrastive, ContrastiveLoss) else []

    def loss_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the loss reads: ``logit_scale`` (and SigLIP's ``logit_bias``)."""
        bias = {} if self.loss_kind == "softmax" else {"logit_bias": self.model.logit_bias}
        return {"logit_scale": self.model.logit_scale, **bias}

    def whole_batch_loss(self, rows: dict[str, Tensor], params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss over ``rows`` (``{"image": (n, P), "text": (n, P)}``, every micro-batch of a step or one
        batch) with ``params`` (:meth:`loss_parameters`' values): ``(loss, {"contrastive": loss})``."""
        if self.loss_kind == "softmax":
            loss = self.contrastive(rows["image"], rows["text"], params["logit_scale"]).loss
        else:
            loss = self.contrastive(rows["image"], rows["text"], params["logit_scale"], params["logit_bias"])
        return loss, {"contrastive": loss}

    def forward(
        self,
        pixel_values: Tensor,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        *,
        embed_only: bool = False,
        embedding_grads: EmbeddingGrads | None = None,
        **_: Tensor,
    ) -> DualEncoderPretrainingOutput:
        """Args: ``pixel_values`` ``(B, C, H, W)``, ``input_ids`` ``(B, L)``, ``attention_mask`` ``(B, L)``
        (row ``i`` of the text is the caption of image ``i``). Other batch fields are ignored.

        Whole-batch accumulation (:mod:`mmkit.train.whole_batch`): ``embed_only`` returns the embeddings
        (``contrastive_rows``) and no loss (the first pass); ``embedding_grads`` computes no loss either but
        the ``gradient_term`` of the loss over the whole batch (the second pass)."""
        image = self.model.embed_image(self.model.encode_image(pixel_values))
        text = self.model.embed_text(self.model.encode_text(input_ids, attention_mask))
        rows = {"image": image, "text": text}
        if embed_only or embedding_grads is not None:
            term = None if embedding_grads is None else gradient_term(rows, self.loss_parameters(), embedding_grads)
            return DualEncoderPretrainingOutput(image.new_zeros(()), {}, image, text, rows, term)
        loss, losses = self.whole_batch_loss(rows, self.loss_parameters())
        return DualEncoderPretrainingOutput(loss, losses, image, text, rows)


def dual_encoder_for_pretraining(config: DualEncoderConfig, **overrides: Any) -> DualEncoderForPreTraining:
    """A CLIP or SigLIP model with its training loss (see :class:`DualEncoderForPreTraining`)."""
    return DualEncoderForPreTraining(dual_encoder_model(config, **overrides))
