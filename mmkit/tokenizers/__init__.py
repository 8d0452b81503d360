"""Tokenizers: the DALL-E dVAE image tokenizer (MIM targets), a trainable dVAE, and WordPiece text tokenization."""

from mmkit.tokenizers.dalle import (
    DalleEncoder,
    ImageTokenizer,
    dalle_encoder_from_checkpoint,
    dalle_from_hf,
    dalle_from_openai,
    dalle_preprocess,
    dalle_to_hf,
    load_dalle_encoder,
    tokenizer_fingerprint,
)
from mmkit.tokenizers.dvae import (
    DalleDecoder,
    DiscreteVAE,
    DVAEOutput,
    codebook_usage,
    gumbel_temperature,
    kl_weight_schedule,
    load_dvae,
    save_dvae,
)
from mmkit.tokenizers.text import Encoding, TextTokenizer, train_wordpiece

__all__ = [
    "DVAEOutput",
    "DalleDecoder",
    "DalleEncoder",
    "DiscreteVAE",
    "Encoding",
    "ImageTokenizer",
    "TextTokenizer",
    "codebook_usage",
    "dalle_encoder_from_checkpoint",
    "dalle_from_hf",
    "dalle_from_openai",
    "dalle_preprocess",
    "dalle_to_hf",
    "gumbel_temperature",
    "kl_weight_schedule",
    "load_dalle_encoder",
    "load_dvae",
    "save_dvae",
    "tokenizer_fingerprint",
    "train_wordpiece",
]
