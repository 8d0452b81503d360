"""Reusable encoders built from :mod:`mmkit.layers`, with their builders and configs."""

from mmkit.encoders.builders import flava_multimodal_encoder, flava_text_encoder, vit_encoder
from mmkit.encoders.configs import ImageEncoderConfig, MultimodalEncoderConfig, TextEncoderConfig, TransformerConfig
from mmkit.encoders.encoders import ImageEncoder, MultimodalEncoder, TextEncoder

__all__ = [
    "ImageEncoder",
    "ImageEncoderConfig",
    "MultimodalEncoder",
    "MultimodalEncoderConfig",
    "TextEncoder",
    "TextEncoderConfig",
    "TransformerConfig",
    "flava_multimodal_encoder",
    "flava_text_encoder",
    "vit_encoder",
]
