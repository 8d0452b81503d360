"""Checkpoint converters: one file per foreign format, each a declarative key map.

FLAVA: :mod:`mmkit.convert.hf`. CLIP and SigLIP (transformers ``CLIPModel`` / ``SiglipModel``): the maps
live beside the model in :mod:`mmkit.models.clip_hf` and are re-exported here.
"""

from mmkit.convert.hf import (
    CheckpointMismatchError,
    config_from_hf,
    config_to_hf,
    flava_from_hf,
    flava_model_for_pretraining_from_hf,
    flava_model_from_hf,
    flava_pretraining_from_hf,
    flava_pretraining_to_hf,
    flava_to_hf,
    load_flava_weights,
    load_hf_checkpoint,
    save_hf_checkpoint,
)
from mmkit.models.clip_hf import (
    clip_config_from_hf,
    clip_config_to_hf,
    clip_from_hf,
    clip_model_from_hf,
    clip_to_hf,
    load_dual_encoder,
    save_dual_encoder_hf,
    siglip_config_from_hf,
    siglip_config_to_hf,
    siglip_from_hf,
    siglip_model_from_hf,
    siglip_to_hf,
)

__all__ = [
    "CheckpointMismatchError",
    "clip_config_from_hf",
    "clip_config_to_hf",
    "clip_from_hf",
    "clip_model_from_hf",
    "clip_to_hf",
    "config_from_hf",
    "config_to_hf",
    "flava_from_hf",
    "flava_model_for_pretraining_from_hf",
    "flava_model_from_hf",
    "flava_pretraining_from_hf",
    "flava_pretraining_to_hf",
    "flava_to_hf",
    "load_dual_encoder",
    "load_flava_weights",
    "load_hf_checkpoint",
    "save_dual_encoder_hf",
    "save_hf_checkpoint",
    "siglip_config_from_hf",
    "siglip_config_to_hf",
    "siglip_from_hf",
    "siglip_model_from_hf",
    "siglip_to_hf",
]
