"""Tokenizers: the DALL-E dVAE image tokenizer (MIM targets); text tokenization comes with the data pipeline."""

from mmkit.tokenizers.dalle import (
    DalleEncoder,
    ImageTokenizer,
    dalle_encoder_from_checkpoint,
    dalle_from_hf,
    dalle_from_openai,
    dalle_preprocess,
    dalle_to_hf,
    load_dalle_encoder,
)

__all__ = [
    "DalleEncoder",
    "ImageTokenizer",
    "dalle_encoder_from_checkpoint",
    "dalle_from_hf",
    "dalle_from_openai",
    "dalle_preprocess",
    "dalle_to_hf",
    "load_dalle_encoder",
]
