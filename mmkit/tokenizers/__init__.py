"""Tokenizers: the DALL-E dVAE image tokenizer (MIM targets) and WordPiece text tokenization."""

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
from mmkit.tokenizers.text import Encoding, TextTokenizer, train_wordpiece

__all__ = [
    "DalleEncoder",
    "Encoding",
    "ImageTokenizer",
    "TextTokenizer",
    "dalle_encoder_from_checkpoint",
    "dalle_from_hf",
    "dalle_from_openai",
    "dalle_preprocess",
    "dalle_to_hf",
    "load_dalle_encoder",
    "train_wordpiece",
]
