"""Convert between mmkit FLAVA and Hugging Face transformers' FLAVA checkpoint directories.

This module loads and writes whole checkpoint directories (``config.json`` + weights) and builds
models from them. The declarative key map, the config map and the state-dict conversions it uses
live in :mod:`mmkit.models.flava_hf`, beside the models, because ``mmkit.models`` itself reads
transformers checkpoints (``flava_model_for_classification(checkpoint=...)``) and must not import
``mmkit.convert``, which builds on it. They are re-exported here, so ``mmkit.convert`` stays the
one place to look for every converter.

Functions:
    flava_from_hf / flava_to_hf: state-dict conversion, both directions.
    config_from_hf / config_to_hf: ``FlavaConfig`` dict <-> :class:`FLAVAConfig`.
    load_hf_checkpoint: read ``config.json`` + weights from a local directory.
    flava_model_from_hf: build a :class:`FLAVAModel` from such a directory.
    flava_pretraining_from_hf / flava_pretraining_to_hf: the same for ``FlavaForPreTraining``
        (heads, ``logit_scale`` and the image codebook included).
    flava_model_for_pretraining_from_hf: build a :class:`FLAVAForPreTraining` from a directory.
    save_hf_checkpoint: write a directory transformers' ``from_pretrained`` reads.
    load_flava_weights: :class:`FLAVAModel` weights from an mmkit export or a transformers directory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmkit.models.flava import FLAVAConfig, FLAVAModel, flava_model
from mmkit.models.flava_hf import (
    FLAVA_KEYS,
    HEAD_KEY_MAP,
    HEAD_KEYS,
    HF_PRETRAINING_PREFIXES,
    IGNORED_HF_KEYS,
    KEY_MAP,
    _split_hf,
    config_from_hf,
    config_to_hf,
    flava_from_hf,
    flava_pretraining_from_hf,
    flava_pretraining_to_hf,
    flava_to_hf,
    load_flava_weights,
)
from mmkit.models.flava_pretraining import FLAVAForPreTraining, build_to_load
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.io import read_weights
from mmkit.utils.keymap import CheckpointMismatchError, KeyMap, format_keys

__all__ = [
    "FLAVA_KEYS",
    "HEAD_KEYS",
    "HEAD_KEY_MAP",
    "HF_PRETRAINING_PREFIXES",
    "IGNORED_HF_KEYS",
    "KEY_MAP",
    "CheckpointMismatchError",
    "KeyMap",
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

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# Directories
# ------------------------------------------------------------------------------------------
def load_hf_checkpoint(path: str | Path) -> tuple[FLAVAConfig, dict[str, Tensor]]:
    """Read a local transformers FLAVA checkpoint directory.

    Args:
        path: a directory with ``config.json`` and ``model.safetensors`` (or a
            sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``).

    Returns:
        ``(config, hf_state_dict)``, the state dict still in transformers names.
    """
    path = Path(path)
    if not path.is_dir():
        raise MissingError(f"checkpoint directory {path} does not exist (or is not a directory)")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MissingError(f"{cfg_file} is missing; a transformers checkpoint directory needs its config.json")
    return config_from_hf(json.loads(cfg_file.read_text())), read_weights(path)


def flava_model_from_hf(path: str | Path, **overrides: Any) -> FLAVAModel:
    """Build a :class:`FLAVAModel` from a transformers ``FlavaModel`` / ``FlavaForPreTraining`` directory.

    Pretraining heads and the codebook of a ``FlavaForPreTraining`` checkpoint are
    not part of :class:`FLAVAModel`: they are skipped and named in a log warning.

    Args:
        path: checkpoint directory (see :func:`load_hf_checkpoint`).
        **overrides: :class:`FLAVAConfig` fields that do not change shapes
            (e.g. ``attention_backend="math"``, dropout).
    """
    config, hf_sd = load_hf_checkpoint(path)
    config = config.replace(**overrides)
    split = _split_hf(hf_sd)
    if split.pretraining:
        groups = sorted({k.split(".")[0] for k in split.pretraining})
        logger.warning(
            "skipping %d FlavaForPreTraining tensors not used by FLAVAModel (%s)",
            len(split.pretraining),
            ", ".join(groups),
        )
    state = flava_from_hf(split.model, config)
    model = flava_model(config)
    _load_exact(model, state, source=str(path))
    return model


def flava_model_for_pretraining_from_hf(path: str | Path, **overrides: Any) -> FLAVAForPreTraining:
    """Build a :class:`FLAVAForPreTraining` from a transformers ``FlavaForPreTraining`` directory
    (encoders, heads and codebook). A ``FlavaModel`` directory (no heads) raises, listing
    what is missing.

    Args:
        path: checkpoint directory (see :func:`load_hf_checkpoint`).
        **overrides: :class:`FLAVAConfig` fields that do not change shapes.
    """
    config, hf_sd = load_hf_checkpoint(path)
    config = config.replace(**overrides)
    state = flava_pretraining_from_hf(hf_sd, config)
    model = build_to_load(config)
    _load_exact(model, state, source=str(path))
    return model


def _load_exact(model: torch.nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    own = model.state_dict()
    bad = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    if bad:
        raise CheckpointMismatchError(f"shape mismatch loading {source}:\n" + format_keys("tensors", bad))
    model.load_state_dict(state, strict=True)


def save_hf_checkpoint(
    model: FLAVAModel | FLAVAForPreTraining, path: str | Path, config: FLAVAConfig | None = None
) -> Path:
    """Write ``model`` as a transformers checkpoint directory (``config.json`` + ``model.safetensors``).

    Args:
        model: a :class:`FLAVAModel` (written as ``FlavaModel``) or a
            :class:`FLAVAForPreTraining` (written as ``FlavaForPreTraining``, heads and codebook included).
        path: output directory (created).
        config: defaults to ``model.config``.

    Returns:
        The directory, loadable by transformers' ``from_pretrained``.
    """
    from safetensors.torch import save_file

    config = config or getattr(model, "config", None)
    if config is None:
        raise InputError("save_hf_checkpoint needs the model's FLAVAConfig (model.config or config=...)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pretraining = isinstance(model, FLAVAForPreTraining)
    convert = flava_pretraining_to_hf if pretraining else flava_to_hf
    tensors = {k: v.detach().cpu().contiguous() for k, v in convert(model.state_dict()).items()}
    hf_config = config_to_hf(config)
    if pretraining:
        hf_config["architectures"] = ["FlavaForPreTraining"]
        # tied decoder biases: write the tensor once under each name
        tensors = {k: v.clone() for k, v in tensors.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    return path
