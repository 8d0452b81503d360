"""Tokenizers: the DALL-E dVAE image tokenizer (MIM targets), a trainable dVAE, and WordPiece text tokenization.

Layering: ``mmkit.tokenizers`` builds on ``mmkit.data`` (the dVAE's input map
:func:`dalle_preprocess`, re-exported here, and the token-cache format of
``python -m mmkit.tokenizers.cache`` live there) and never the other way round.
"""

from mmkit.data.transforms import dalle_preprocess
from mmkit.tokenizers.dalle import (
    DalleEncoder,
    ImageTokenizer,
    dalle_encoder_from_checkpoint,
    load_dalle_encoder,
    tokenizer_fingerprint,
)
from mmkit.tokenizers.dalle_keys import dalle_from_hf, dalle_from_openai, dalle_to_hf
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
from mmkit.tokenizers.text import Encoding, TextTokenizer, tokenizer_for_run, train_wordpiece

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
    "tokenizer_for_run",
    "train_wordpiece",
]
