"""Size/shape configs of the encoders.

Defaults are the released FLAVA sizes (paper Table A.1 and the published
``FlavaConfig``; see ``docs/FLAVA.md``): ViT-B/16 image encoder, 12-layer
pre-norm text encoder over the BERT uncased vocabulary, 6-layer fusion encoder;
width 768, 12 heads, MLP 3072, exact GELU, LayerNorm eps 1e-12, no dropout.

The options where CLIP and SigLIP differ from FLAVA (see ``docs/CLIP_SIGLIP.md``) are fields
here too: an input LayerNorm, a bias-free patch convolution, no CLS token, causal text
attention, text embeddings without LayerNorm or segment table, and the pooler kind.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmkit.utils.errors import InputError

IMAGE_POOLERS = ("tanh", "first", "attention", "none")
TEXT_POOLERS = ("tanh", "first", "eot", "last", "none")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass
class TransformerConfig:
    """Fields every encoder's transformer stack shares."""

    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072
    activation: str = "gelu"
    norm_eps: float = 1e-12
    dropout: float = 0.0
    attention_dropout: float = 0.0
    qkv_bias: bool = True
    # a LayerNorm on the stack's input (CLIP's image encoder: ``pre_layrnorm``)
    input_norm: bool = False


@dataclass
class ImageEncoderConfig(TransformerConfig):
    """ViT image encoder: ``image_size`` / ``patch_size`` give the token grid (224/16 -> 14x14).

    ``pooler``: ``"tanh"`` (``tanh(dense(CLS))``, FLAVA), ``"first"`` (the CLS token as it is,
    CLIP), ``"attention"`` (a learned query attends over all tokens, SigLIP) or ``"none"``.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    use_mask_token: bool = True
    # FLIP's patch dropout (Li et al., CVPR 2023): in training, keep a random (1 - p) of each image's
    # patch tokens (CLS always kept) for a cheaper step; nothing is dropped in eval mode.
    patch_dropout: float = 0.0
    use_cls_token: bool = True
    patch_bias: bool = True
    pooler: str = "tanh"
    # FLAVA only: start this encoder from a CLIP/SigLIP checkpoint's image tower (mmkit.models.tower_init)
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check_choice("image pooler", self.pooler, IMAGE_POOLERS)
        if self.pooler in ("tanh", "first") and not self.use_cls_token:
            raise InputError(f"image pooler {self.pooler!r} reads the CLS token, but use_cls_token is False")


@dataclass
class TextEncoderConfig(TransformerConfig):
    """Text encoder over a WordPiece vocabulary (bert-base-uncased: 30522 ids, pad id 0).

    ``pooler``: ``"tanh"`` (``tanh(dense([CLS]))``, FLAVA), ``"first"``, ``"eot"`` (the first
    ``eos_token_id`` position, CLIP; with ``eos_token_id=None`` the largest id's position),
    ``"last"`` (position ``L - 1``, SigLIP) or ``"none"``. ``pad_token_id=None``: no embedding row
    is frozen. ``type_vocab_size=0``: no segment table.
    """

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    pad_token_id: int | None = 0
    causal: bool = False
    embedding_norm: bool = True
    pooler: str = "tanh"
    eos_token_id: int | None = None
    # FLAVA only: start this encoder from a CLIP/SigLIP checkpoint's text tower (mmkit.models.tower_init)
    init_from: str | None = None

    def __post_init__(self) -> None:
        _check_choice("text pooler", self.pooler, TEXT_POOLERS)


@dataclass
class MultimodalEncoderConfig(TransformerConfig):
    """Fusion encoder over ``[CLS_M, image tokens, text tokens]``; 6 layers in FLAVA."""

    num_layers: int = 6
