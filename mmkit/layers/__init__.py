"""Generic building blocks (FLAVA-free): attention, MLP, transformer layers, embeddings, poolers."""

from mmkit.layers.attention import (
    BACKENDS,
    MultiHeadSelfAttention,
    math_attention,
    resolve_attention_backend,
    set_attention_backend,
    xformers_available,
)
from mmkit.layers.embeddings import PatchEmbedding, TextEmbedding, interpolate_position_embeddings
from mmkit.layers.init import init_weights, no_weight_decay_names
from mmkit.layers.mlp import ACTIVATIONS, MLP, get_activation
from mmkit.layers.pooler import AttentionPool, Pooler, TokenPool
from mmkit.layers.transformer import EncoderOutput, TransformerEncoder, TransformerLayer, transformer_encoder

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "MLP",
    "AttentionPool",
    "EncoderOutput",
    "MultiHeadSelfAttention",
    "PatchEmbedding",
    "Pooler",
    "TextEmbedding",
    "TokenPool",
    "TransformerEncoder",
    "TransformerLayer",
    "get_activation",
    "init_weights",
    "interpolate_position_embeddings",
    "math_attention",
    "no_weight_decay_names",
    "resolve_attention_backend",
    "set_attention_backend",
    "transformer_encoder",
    "xformers_available",
]
