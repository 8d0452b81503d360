"""Tokenizers: the DALL-E dVAE image tokenizer (MIM targets), a trainable dVAE, and WordPiece text tokenization.

Layering: the tokenizers need nothing of the data pipeline, and importing ``mmkit.tokenizers`` loads none
of it (the dVAE's input map :func:`dalle_preprocess`, re-exported here, lives in :mod:`mmkit.utils.pixels`).
The data side builds on them: the token-cache command that writes each image's ids into its shard runs the
image tokenizer from there.
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
