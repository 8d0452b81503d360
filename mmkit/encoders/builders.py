"""Builders for the encoders: the ViT (:func:`vit_encoder`, FLAVA's, CLIP's and SigLIP's image encoder), the
text encoder and FLAVA's fusion encoder (Singh et al., CVPR 2022, arXiv 2112.04482, Table A.1).

Each builder takes an optional config and keyword overrides of its fields, e.g.
``vit_encoder(num_layers=4, hidden_size=256, num_heads=4, mlp_dim=1024)``;
with no arguments it returns the released FLAVA size. Unknown keywords raise, naming the
nearest valid field. Each initialises what it built by the encoder's own ``reset_parameters()``.
"""

from __future__ import annotations

from typing import Any, TypeVar

from torch import nn

from mmkit.encoders.configs import ImageEncoderConfig, MultimodalEncoderConfig, TextEncoderConfig, TransformerConfig
from mmkit.encoders.encoders import ImageEncoder, MultimodalEncoder, TextEncoder
from mmkit.layers.attention import AttentionBackend
from mmkit.layers.embeddings import PatchEmbedding, TextEmbedding
from mmkit.layers.init import init_std_for
from mmkit.layers.pooler import AttentionPool, Pooler, TokenPool
from mmkit.layers.transformer import AttentionOptions, TransformerEncoder, transformer_encoder
from mmkit.utils.config import replace_config

_Built = TypeVar("_Built", ImageEncoder, TextEncoder, MultimodalEncoder)


def _stack(cfg: TransformerConfig, attention_backend: AttentionBackend, causal: bool = False) -> TransformerEncoder:
    return transformer_encoder(
        dim=cfg.hidden_size,
        num_layers=cfg.num_layers,
        num_heads=cfg.num_heads,
        mlp_dim=cfg.mlp_dim,
        activation=cfg.activation,
        norm_eps=cfg.norm_eps,
        dropout=cfg.dropout,
        input_norm=cfg.input_norm,
        attention=AttentionOptions(cfg.qkv_bias, cfg.attention_dropout, attention_backend, causal),
    )


def _pooler(cfg: ImageEncoderConfig | TextEncoderConfig, with_pooler: bool) -> nn.Module | None:
    kind = cfg.pooler if with_pooler else "none"
    if kind == "none":
        return None
    if kind == "tanh":
        return Pooler(cfg.hidden_size)
    if kind == "attention":
        return AttentionPool(cfg.hidden_size, cfg.num_heads, cfg.mlp_dim, cfg.activation, cfg.norm_eps)
    return TokenPool(kind, getattr(cfg, "eos_token_id", None))


def _finish(encoder: _Built, width: int, init_std: float | None, zero_tokens: bool) -> _Built:
    """Give a built encoder its initialisation rule (the std of its width, zero or drawn tokens) and apply it."""
    encoder.init_std, encoder.zero_init_tokens = init_std_for(width, init_std), zero_tokens
    encoder.reset_parameters()
    return encoder


def vit_encoder(
    config: ImageEncoderConfig | None = None,
    *,
    with_pooler: bool = True,
    attention_backend: AttentionBackend = "sdpa",
    init_std: float | None = None,
    zero_init_tokens: bool = True,
    **overrides: Any,
) -> ImageEncoder:
    """A ViT image encoder: FLAVA's by default (ViT-B/16 at 224²; 86.4M parameters with pooler), CLIP's and
    SigLIP's with their config's options (input norm, bias-free patches, no CLS token, their pooler).

    Args:
        config: sizes; defaults to :class:`ImageEncoderConfig` (FLAVA's released sizes).
        with_pooler: add the pooler ``config.pooler`` names (``tanh(dense(CLS))`` for FLAVA).
        attention_backend: ``"sdpa" | "xformers" | "math" | "auto"``.
        init_std: std of the weight initialisation; None: ``0.02 * sqrt(768 / hidden_size)``
            (:func:`~mmkit.layers.init.init_std_for`: 0.02 at the released width).
        zero_init_tokens: start ``[CLS]``, the mask token and the position table at 0 (the released
            FLAVA); False draws them with the weights' std (CLIP, SigLIP).
        **overrides: any :class:`ImageEncoderConfig` field.
    """
    cfg = replace_config(config or ImageEncoderConfig(), overrides)
    embeddings = PatchEmbedding(
        cfg.image_size,
        cfg.patch_size,
        cfg.num_channels,
        cfg.hidden_size,
        use_cls_token=cfg.use_cls_token,
        use_mask_token=cfg.use_mask_token,
        dropout=cfg.dropout,
        bias=cfg.patch_bias,
    )
    pooler = _pooler(cfg, with_pooler)
    encoder = ImageEncoder(embeddings, _stack(cfg, attention_backend), pooler, patch_dropout=cfg.patch_dropout)
    return _finish(encoder, cfg.hidden_size, init_std, zero_init_tokens)


def flava_text_encoder(
    config: TextEncoderConfig | None = None,
    *,
    with_pooler: bool = True,
    attention_backend: AttentionBackend = "sdpa",
    init_std: float | None = None,
    zero_init_tokens: bool = True,
    **overrides: Any,
) -> TextEncoder:
    """FLAVA's text encoder: a *pre-norm* 12-layer transformer over the BERT uncased vocabulary.

    Args:
        config: sizes; defaults to :class:`TextEncoderConfig` (the released sizes).
        with_pooler: add the pooler ``config.pooler`` names (``tanh(dense([CLS]))`` for FLAVA).
        attention_backend: ``"sdpa" | "xformers" | "math" | "auto"``.
        init_std: std of the weight initialisation; None: ``0.02 * sqrt(768 / hidden_size)``.
        zero_init_tokens: start learned tokens (an attention pool's probe; FLAVA's text encoder has
            none) at 0; False draws them with the weights' std.
        **overrides: any :class:`TextEncoderConfig` field.
    """
    cfg = replace_config(config or TextEncoderConfig(), overrides)
    embeddings = TextEmbedding(
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.max_positions,
        cfg.type_vocab_size,
        cfg.pad_token_id,
        norm_eps=cfg.norm_eps,
        dropout=cfg.dropout,
        use_norm=cfg.embedding_norm,
    )
    stack = _stack(cfg, attention_backend, causal=cfg.causal)
    encoder = TextEncoder(embeddings, stack, _pooler(cfg, with_pooler))
    return _finish(encoder, cfg.hidden_size, init_std, zero_init_tokens)


def flava_multimodal_encoder(
    config: MultimodalEncoderConfig | None = None,
    *,
    with_pooler: bool = True,
    use_cls_token: bool = True,
    attention_backend: AttentionBackend = "sdpa",
    init_std: float | None = None,
    zero_init_tokens: bool = True,
    **overrides: Any,
) -> MultimodalEncoder:
    """FLAVA's fusion encoder: 6 pre-norm layers with a learned ``CLS_M`` token.

    Args:
        config: sizes; defaults to :class:`MultimodalEncoderConfig` (the released sizes).
        with_pooler: add the ``tanh(dense(CLS))`` pooler.
        use_cls_token: prepend the learned ``CLS_M``.
        attention_backend: ``"sdpa" | "xformers" | "math" | "auto"``.
        init_std: std of the weight initialisation; None: ``0.02 * sqrt(768 / hidden_size)``.
        zero_init_tokens: start the learned tokens at 0 (the released FLAVA's ``CLS_M``; its
            text encoder has none); False draws them with the weights' std.
        **overrides: any :class:`MultimodalEncoderConfig` field.
    """
    cfg = replace_config(config or MultimodalEncoderConfig(), overrides)
    pooler = Pooler(cfg.hidden_size) if with_pooler else None
    encoder = MultimodalEncoder(_stack(cfg, attention_backend), pooler, use_cls_token=use_cls_token)
    return _finish(encoder, cfg.hidden_size, init_std, zero_init_tokens)
