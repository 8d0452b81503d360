"""Size/shape configs of the three FLAVA encoders.

Defaults are the released FLAVA sizes (paper Table A.1 and the published
``FlavaConfig``; see ``docs/FLAVA.md``): ViT-B/16 image encoder, 12-layer
pre-norm text encoder over the BERT uncased vocabulary, 6-layer fusion encoder;
width 768, 12 heads, MLP 3072, exact GELU, LayerNorm eps 1e-12, no dropout.
"""

from __future__ import annotations

from dataclasses import dataclass


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


@dataclass
class ImageEncoderConfig(TransformerConfig):
    """ViT image encoder: ``image_size`` / ``patch_size`` give the token grid (224/16 -> 14x14)."""

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    use_mask_token: bool = True
    # FLIP's patch dropout (Li et al., CVPR 2023): in training, keep a random (1 - p) of each image's
    # patch tokens (CLS always kept) for a cheaper step; nothing is dropped in eval mode.
    patch_dropout: float = 0.0


@dataclass
class TextEncoderConfig(TransformerConfig):
    """Text encoder over a WordPiece vocabulary (bert-base-uncased: 30522 ids, pad id 0)."""

    vocab_size: int = 30522
    max_positions: int = 512
    type_vocab_size: int = 2
    pad_token_id: int = 0


@dataclass
class MultimodalEncoderConfig(TransformerConfig):
    """Fusion encoder over ``[CLS_M, image tokens, text tokens]``; 6 layers in FLAVA."""

    num_layers: int = 6
