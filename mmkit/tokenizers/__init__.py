"""Tokenizers: the DALL-E dVAE image tokenizer (MIM targets), a trainable dVAE, and WordPiece text tokenization.

Layering: importing ``mmkit.tokenizers`` loads nothing of ``mmkit.data`` (the dVAE's input map
:func:`dalle_preprocess`, re-exported here, lives in :mod:`mmkit.utils.pixels`). Only the token-cache
command, ``python -m mmkit.tokenizers.cache``, reads data shards through ``mmkit.data``; ``mmkit.data``
never imports ``mmkit.tokenizers``.
"""

from mmkit.tokenizers.dalle import (
    DalleEncoder,
    ImageTokenizer,
    check_cached_ids,
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
from mmkit.utils.pixels import dalle_preprocess

__all__ = [
    "DVAEOutput",
    "DalleDecoder",
    "DalleEncoder",
    "DiscreteVAE",
    "Encoding",
    "ImageTokenizer",
    "TextTokenizer",
    "check_cached_ids",
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
