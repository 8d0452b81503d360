"""CLIP and SigLIP checkpoints on disk: :func:`load_dual_encoder` reads any of them, :func:`save_dual_encoder_hf`
writes transformers'.

This module's one job is file I/O; the names and configs of transformers' layout are mapped by
:mod:`mmkit.models.clip_keys` and :mod:`mmkit.models.clip_config_map`. The layout is told by
``config.json``: an mmkit export names ``mmkit_model`` (``{"mmkit_model": "clip", "config": {...}}``,
see :func:`mmkit.models.export_config`), a transformers ``CLIPModel`` / ``SiglipModel`` directory its
``model_type``. A hub name is fetched through :func:`mmkit.utils.hub.resolve_checkpoint`. The checkpoint's
tensors (file headers; transformers names mapped on storage-less stand-ins) are compared with the model its
config describes, built on the meta device (:mod:`mmkit.models.fit_check`), before the model is built.

Functions:
    load_dual_encoder: a CLIP or SigLIP model from an mmkit export or a transformers directory.
    save_dual_encoder_hf: write a directory transformers' ``from_pretrained`` reads.
    dual_encoder_config: the config of such a checkpoint, from its ``config.json`` alone.
    dual_encoder_kind: ``"clip"``, ``"siglip"`` or None for what a ``config.json`` dict describes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mmkit.models.clip import CONFIGS, DualEncoderConfig, DualEncoderModel, dual_encoder_model
from mmkit.models.clip_config_map import CONFIG_FROM_HF, CONFIG_TO_HF
from mmkit.models.clip_keys import dual_encoder_from_hf, dual_encoder_to_hf, expected_shapes, map_hf
from mmkit.models.fit_check import check_fits, config_fields, hf_label, meta_tensors
from mmkit.utils.config_json import read_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.weights import load_strict, read_weight_shapes, read_weights

__all__ = ["dual_encoder_config", "dual_encoder_kind", "load_dual_encoder", "save_dual_encoder_hf"]


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise MissingError(f"checkpoint directory {path} does not exist (or is not a directory)")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MissingError(f"{cfg_file} is missing; a checkpoint directory needs its config.json")
    return read_config_json(cfg_file)


def dual_encoder_kind(cfg: Mapping[str, Any]) -> str | None:
    """``"clip"`` or ``"siglip"`` for the ``config.json`` dict of an mmkit export (``mmkit_model``) or of a
    transformers directory (``model_type``), else None."""
    for key in ("mmkit_model", "model_type"):
        if cfg.get(key) in CONFIGS:
            return cfg[key]
    return None


def _config(path: Path, cfg: Mapping[str, Any], overrides: dict[str, Any]) -> tuple[DualEncoderConfig, bool]:
    """``(config, whether the directory is in transformers' layout)`` of a checkpoint's ``config.json``."""
    if cfg.get("mmkit_model") in CONFIGS:
        return CONFIGS[cfg["mmkit_model"]].from_dict(cfg["config"]).replace(**overrides), False
    if cfg.get("model_type") in CONFIGS:
        return CONFIG_FROM_HF[cfg["model_type"]](cfg, **overrides), True
    raise InputError(
        f"{path}/config.json describes neither a CLIP nor a SigLIP model (no mmkit_model or model_type "
        f"{' / '.join(map(repr, CONFIGS))}); for FLAVA use mmkit.models.load_flava"
    )


def dual_encoder_config(path_or_name: str | Path) -> DualEncoderConfig:
    """The :class:`CLIPConfig` / :class:`SigLIPConfig` of a checkpoint directory (mmkit export or
    transformers, or a hub name), read from its ``config.json`` alone."""
    path = resolve_checkpoint(path_or_name)
    return _config(path, _read_json(path), {})[0]


def _check_fits(path: Path, config: DualEncoderConfig, hf: bool) -> None:
    """Refuse, in one line and before anything is built, a checkpoint whose tensors (file headers; transformers
    names mapped on meta tensors) do not fit the model of ``config`` (:mod:`mmkit.models.fit_check`)."""
    kind, expected, shapes = config.model_type, expected_shapes(config), read_weight_shapes(path)
    label = str
    if hf:
        state, unknown, _ = map_hf(kind, meta_tensors(shapes), expected)
        shapes = {**{k: v.shape for k, v in state.items()}, **{k: shapes[k] for k in unknown}}
        top = {"projection_dim": "projection_dim" if kind == "clip" else "text_config.projection_size"}
        label = hf_label({"image": "vision_config", "text": "text_config"}, top)
    fields = config_fields(config, ("image", "text"), label)
    check_fits(expected, shapes, source=str(path), target=f"{kind} model", fields=fields)


def load_dual_encoder(
    path_or_name: str | Path, *, device: str | torch.device | None = None, **overrides: Any
) -> DualEncoderModel:
    """A CLIP or SigLIP model, strictly loaded and in eval mode, from an mmkit export (``config.json``
    naming ``mmkit_model`` + ``model.safetensors``) or a transformers ``CLIPModel`` / ``SiglipModel``
    directory (``config.json`` + safetensors, sharded or not, or ``pytorch_model.bin``).

    Nothing in the files is executed (safetensors, ``weights_only=True``). The checkpoint's tensors are
    checked against its ``config.json`` before the model is built: every one must be there at the config's
    shape and nothing else (else a one-line :class:`~mmkit.utils.weights.CheckpointMismatchError` naming
    the tensors and the fields that disagree). ``model.load_report`` is the
    :class:`~mmkit.utils.weights.LoadReport`.

    Args:
        path_or_name: the directory, or a hub name (``openai/clip-vit-base-patch16[@revision]``).
        device: where to put the model (default CPU).
        **overrides: config fields that do not change shapes (``attention_backend="math"``,
            ``image={"patch_dropout": 0.5}``).
    """
    path = resolve_checkpoint(path_or_name)
    config, hf = _config(path, _read_json(path), overrides)
    kind = config.model_type
    _check_fits(path, config, hf)
    state = read_weights(path)
    if hf:
        state = dual_encoder_from_hf(kind, state, config)
    model = dual_encoder_model(config)
    layout = "transformers" if hf else "mmkit"
    model.load_report = load_strict(model, state, str(path), target=f"{kind} model", kind=layout)
    return model.to(device or "cpu").eval()


def save_dual_encoder_hf(model: DualEncoderModel, path: str | Path, config: DualEncoderConfig | None = None) -> Path:
    """Write a CLIP or SigLIP model as a transformers directory (``config.json`` + ``model.safetensors``)
    that ``CLIPModel.from_pretrained`` / ``SiglipModel.from_pretrained`` and :func:`load_dual_encoder` read.

    Args:
        model: a :class:`DualEncoderModel` built by :func:`clip_model` or :func:`siglip_model`.
        path: output directory (created). config: defaults to ``model.config``.
    """
    from safetensors.torch import save_file

    config = config or getattr(model, "config", None)
    if config is None:
        raise InputError("save_dual_encoder_hf needs the model's config (model.config or config=...)")
    kind = type(config).model_type
    if kind not in CONFIGS:
        raise InputError(f"{type(config).__name__} is neither a CLIPConfig nor a SigLIPConfig")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in dual_encoder_to_hf(kind, model.state_dict()).items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(CONFIG_TO_HF[kind](config), indent=2))
    return path
