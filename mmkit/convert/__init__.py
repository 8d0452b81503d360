"""Checkpoint converters: one file per foreign format, each a declarative key map."""

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

__all__ = [
    "CheckpointMismatchError",
    "config_from_hf",
    "config_to_hf",
    "flava_from_hf",
    "flava_model_for_pretraining_from_hf",
    "flava_model_from_hf",
    "flava_pretraining_from_hf",
    "flava_pretraining_to_hf",
    "flava_to_hf",
    "load_flava_weights",
    "load_hf_checkpoint",
    "save_hf_checkpoint",
]
