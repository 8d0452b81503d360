"""Any mmkit model from any checkpoint: which family a checkpoint holds, its loader, and the ``config.json``
an mmkit export writes (this module's one job is to pick by family; each family's loader is in its own
module: :mod:`mmkit.models.flava_load`, :mod:`mmkit.models.dual_encoder_load`).

Functions:
    checkpoint_family: ``"flava"``, ``"clip"`` or ``"siglip"``, from the checkpoint's ``config.json``.
    load: the model of any checkpoint (:func:`~mmkit.models.load_flava` or
        :func:`~mmkit.models.load_dual_encoder`, by family).
    export_config: the ``config.json`` of an mmkit export of a model of any family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from mmkit.models.clip import CONFIGS, DualEncoderConfig
from mmkit.models.dual_encoder_load import dual_encoder_kind, load_dual_encoder
from mmkit.models.flava import FLAVAConfig
from mmkit.models.flava_load import load_flava
from mmkit.utils.config_json import read_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint

__all__ = ["FAMILIES", "checkpoint_family", "export_config", "load"]

#: every model family mmkit loads: FLAVA's and the dual encoders'
FAMILIES = ("flava", *CONFIGS)


def checkpoint_family(path_or_name: str | Path) -> str:
    """Which model family a checkpoint holds: ``"clip"`` / ``"siglip"`` where its ``config.json`` says so
    (``mmkit_model`` of an mmkit export, ``model_type`` of a transformers directory), else ``"flava"``
    (an mmkit FLAVA export, whose ``config.json`` is a :class:`FLAVAConfig`; a transformers directory of
    ``model_type`` ``"flava"``; a lone weights file).

    Raises:
        MissingError: no such file or directory. InputError: a ``model_type`` mmkit has no model for.
    """
    path = resolve_checkpoint(path_or_name)
    if path.is_file() or (path.is_dir() and not (path / "config.json").is_file()):
        return "flava"  # only FLAVA reads a lone weights file; a directory without config.json fails there
    if not path.exists():
        raise MissingError(f"checkpoint {path} does not exist (expected a directory with config.json or a file)")
    cfg = read_config_json(path / "config.json")
    kind = dual_encoder_kind(cfg)
    if kind is not None:
        return kind
    model_type = cfg.get("model_type")
    if model_type not in (None, "flava"):
        raise InputError(
            f"{path}/config.json has model_type={model_type!r}; mmkit loads {', '.join(FAMILIES)} checkpoints"
        )
    return "flava"


def load(path_or_name: str | Path, **options: Any) -> nn.Module:
    """The model of any checkpoint mmkit reads, strictly loaded and in eval mode: FLAVA's encoders
    (:func:`~mmkit.models.load_flava`) or a CLIP / SigLIP model (:func:`~mmkit.models.load_dual_encoder`),
    by :func:`checkpoint_family`.

    Args:
        path_or_name: a checkpoint directory or file, or a Hugging Face hub name (``org/name[@revision]``).
        **options: passed to the family's loader (``device``; config overrides such as
            ``attention_backend="math"``; for FLAVA also ``pretraining`` and ``config``).
    """
    if checkpoint_family(path_or_name) == "flava":
        return load_flava(path_or_name, **options)
    return load_dual_encoder(path_or_name, **options)


def export_config(config: FLAVAConfig | DualEncoderConfig) -> dict[str, Any]:
    """The ``config.json`` of an mmkit export (``final/``) of a model of ``config``, which :func:`load` reads
    back: a FLAVA config as it is, a CLIP / SigLIP config as ``{"mmkit_model": kind, "config": {...}}``."""
    if isinstance(config, FLAVAConfig):
        return config.to_dict()
    kind = getattr(type(config), "model_type", None)
    if kind not in CONFIGS:
        raise InputError(f"export_config takes a FLAVAConfig, CLIPConfig or SigLIPConfig, got {type(config).__name__}")
    return {"mmkit_model": kind, "config": config.to_dict()}
