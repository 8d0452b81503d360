"""FLAVA checkpoints on disk: :func:`load_flava` reads any of them, :func:`save_flava_hf` writes transformers'.

This module's one job is file I/O; the names and configs of transformers' layout are mapped by
:mod:`mmkit.models.flava_keys` and :mod:`mmkit.models.flava_config_map`. :func:`load_flava` detects the
layout: an mmkit pretraining export (``<run>/final``), a finetune export (``<run>/best``), a transformers
``FlavaModel`` / ``FlavaForPreTraining`` directory, or a lone weights file with the sizes given; a hub
name is fetched through :func:`mmkit.utils.hub.resolve_checkpoint`. Before the model is built, the
checkpoint's names and shapes (file headers only; transformers names mapped through
:data:`mmkit.models.flava_keys.FLAVA_KEYS`) are compared with those of the model its config describes,
built on the meta device (:mod:`mmkit.models.fit_check`): a config that disagrees with its weights is
refused in one line, never loaded as a truncated model, and a config asking for huge sizes is refused
before anything of its size is allocated. Only parts the model does not use (pretraining heads, a
classifier head, the codebook) may be left out; they are listed in ``model.load_report``.

Functions:
    load_flava: the :class:`FLAVAModel` (or, ``pretraining=True``, :class:`FLAVAForPreTraining`) of any
        FLAVA checkpoint, strictly loaded.
    save_flava_hf: write a directory transformers' ``from_pretrained`` reads.
    inspect_flava_checkpoint: what a checkpoint holds (layout, config, names and shapes), tensors unread.
    check_flava_fits: refuse a checkpoint that does not fit a config.
    read_flava_weights: the :class:`FLAVAModel` tensors (mmkit names) of any FLAVA checkpoint, unchecked.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmkit.models.fit_check import check_fits, config_fields, hf_label, meta_shapes, meta_tensors
from mmkit.models.flava import FLAVAConfig, FLAVAModel, flava_model
from mmkit.models.flava_config_map import flava_config_from_hf, flava_config_to_hf
from mmkit.models.flava_keys import (
    FLAVA_KEYS,
    flava_from_hf,
    flava_pretraining_from_hf,
    flava_pretraining_to_hf,
    flava_to_hf,
    split_hf,
)
from mmkit.models.flava_pretraining import FLAVAForPreTraining, build_to_load
from mmkit.utils.config_json import read_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.weights import load_strict, read_weight_shapes, read_weights

__all__ = [
    "FlavaCheckpoint",
    "check_flava_fits",
    "inspect_flava_checkpoint",
    "is_flava_head",
    "is_transformers_flava",
    "load_flava",
    "read_flava_weights",
    "save_flava_hf",
]

logger = logging.getLogger(__name__)

#: transformers ``config.json`` sections of FLAVA's three encoders, for naming fields in errors
_HF_SECTIONS = {"image": "image_config", "text": "text_config", "multimodal": "multimodal_config"}
_SIDES = tuple(_HF_SECTIONS)
#: top-level modules that are not the encoders: a classifier head, the codebook (pretraining heads end in _head)
_NOT_ENCODERS = ("head", "image_tokenizer", "image_codebook", "codebook")


def is_flava_head(name: str) -> bool:
    """Whether a checkpoint tensor belongs to a part :class:`FLAVAModel` leaves out: a pretraining head
    (``mim_head``, ``mlm_head``, ``mmm_*_head``, ``itm_head``, an added objective's ``<name>_head``), a
    finetune classifier ``head`` or the codebook (``image_tokenizer`` / ``image_codebook``)."""
    first = name.split(".", 1)[0]
    return first.endswith("_head") or first in _NOT_ENCODERS


def is_transformers_flava(names: Any) -> bool:
    """Whether tensor ``names`` are in transformers' FLAVA layout (``flava.*``, ``text_model.*``, ...)."""
    return any(k.startswith(("flava.", "text_model.", "image_model.")) for k in names)


@dataclass
class FlavaCheckpoint:
    """What a FLAVA checkpoint holds, read without its tensors.

    Attributes:
        path: the directory or file. kind: ``"mmkit"`` or ``"transformers"``.
        config: from its ``config.json`` (None for a lone weights file).
        found: every tensor's shape: :class:`FLAVAModel`'s in mmkit names (a name no rule knows as it is),
            the parts it leaves out (heads, codebook) in the checkpoint's names.
    """

    path: Path
    kind: str
    config: FLAVAConfig | None
    found: dict[str, torch.Size]


def _mmkit_shapes(shapes: dict[str, torch.Size]) -> dict[str, torch.Size]:
    """A pretraining or finetune export's ``model.*`` in :class:`FLAVAModel` names, the rest as it is."""
    if not any(k.startswith("model.") for k in shapes):
        return dict(shapes)
    return {k.removeprefix("model."): v for k, v in shapes.items()}


def _hf_shapes(shapes: dict[str, torch.Size]) -> dict[str, torch.Size]:
    """A transformers checkpoint's shapes in mmkit names (through the key map, on storage-less tensors)."""
    split = split_hf(meta_tensors(shapes))
    state, unknown, _ = FLAVA_KEYS.from_theirs(split.model)  # an incomplete q/k/v group: its qkv goes missing
    if "logit_scale" in state:  # transformers: a scalar; mmkit: (1,)
        state["logit_scale"] = state["logit_scale"].reshape(1)
    found = {k: v.shape for k, v in state.items()}
    found.update({k: split.model[k].shape for k in unknown})
    found.update({k: v.shape for k, v in split.pretraining.items()})
    return found


def inspect_flava_checkpoint(path: str | Path) -> FlavaCheckpoint:
    """Layout, config and tensor shapes of a FLAVA checkpoint, from ``config.json`` and the weights' headers.

    Raises:
        MissingError: when ``path`` is neither a directory with ``config.json`` nor a file.
    """
    path = resolve_checkpoint(path)
    if path.is_dir() and (path / "config.json").exists():
        cfg_json = read_config_json(path / "config.json")
        shapes = read_weight_shapes(path)
        if is_transformers_flava(shapes):
            return FlavaCheckpoint(path, "transformers", flava_config_from_hf(cfg_json), _hf_shapes(shapes))
        return FlavaCheckpoint(path, "mmkit", FLAVAConfig.from_dict(cfg_json), _mmkit_shapes(shapes))
    if path.is_file():
        return FlavaCheckpoint(path, "mmkit", None, _mmkit_shapes(read_weight_shapes(path)))
    if path.is_dir():
        raise MissingError(
            f"{path / 'config.json'} is missing; a checkpoint directory needs its config.json "
            "(for a lone weights file, pass the file and config=FLAVAConfig(...))"
        )
    raise MissingError(f"checkpoint {path} does not exist (expected a directory with config.json or a file)")


def check_flava_fits(
    checkpoint: FlavaCheckpoint, config: FLAVAConfig, origin: str = "config.json", target: str = "FLAVAModel"
) -> list[str]:
    """Refuse ``checkpoint`` unless it holds every tensor of a :class:`FLAVAModel` of ``config``, each at its
    shape, and nothing else but heads (:func:`is_flava_head`); nothing is allocated.

    Args:
        checkpoint: from :func:`inspect_flava_checkpoint`.
        config: the sizes to check against.
        origin: where ``config`` came from, for the message (a transformers ``config.json`` has its own
            field names: ``image_config.num_hidden_layers``).
        target: the model, for the message.

    Returns:
        The checkpoint's names the encoders leave out (heads, codebook).

    Raises:
        CheckpointMismatchError: one line naming the tensors and the config fields that disagree.
    """
    fields = config_fields(config, _SIDES, _field_label(checkpoint, origin))
    return check_fits(
        meta_shapes(lambda: flava_model(config)),
        checkpoint.found,
        source=str(checkpoint.path),
        target=target,
        may_be_unused=is_flava_head,
        fields=fields,
        origin=origin,
    )


def _field_label(checkpoint: FlavaCheckpoint, origin: str) -> Any:
    """How the config's fields are spelled in messages: transformers' names for its own ``config.json``."""
    return hf_label(_HF_SECTIONS) if checkpoint.kind == "transformers" and origin == "config.json" else str


def read_flava_weights(path: str | Path) -> tuple[dict[str, Tensor], FLAVAConfig | None, str]:
    """:class:`FLAVAModel` weights (mmkit names) from any FLAVA checkpoint (see :func:`load_flava`).

    Returns ``(state, config or None, "mmkit" | "transformers")``; heads and the codebook of pretraining
    checkpoints are left out of ``state``. Nothing is checked against the config here:
    :func:`check_flava_fits` does that before a model is built.
    """
    state, config, kind, _ = _read_encoders(resolve_checkpoint(path))
    return state, config, kind


def _read_encoders(path: Path) -> tuple[dict[str, Tensor], FLAVAConfig | None, str, list[str]]:
    """:func:`read_flava_weights`, plus the checkpoint's names of the tensors it left out."""
    if path.is_dir() and (path / "config.json").exists():
        cfg_json = read_config_json(path / "config.json")
        weights = read_weights(path)
        if is_transformers_flava(weights):
            split = split_hf(weights)
            return flava_from_hf(split.model), flava_config_from_hf(cfg_json), "transformers", sorted(split.pretraining)
        state, left = _model_part(weights)
        return state, FLAVAConfig.from_dict(cfg_json), "mmkit", left
    if path.is_file():
        state, left = _model_part(read_weights(path))
        return state, None, "mmkit", left
    raise MissingError(f"checkpoint {path} does not exist (expected a directory with config.json or a file)")


def _model_part(weights: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """The ``model.*`` tensors of a pretraining or classifier state dict (prefix removed) and the other
    names; a bare :class:`FLAVAModel` state dict is returned whole."""
    if not any(k.startswith("model.") for k in weights):
        return dict(weights), []
    state = {k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")}
    return state, sorted(k for k in weights if not k.startswith("model."))


def load_flava(
    path_or_name: str | Path,
    *,
    pretraining: bool = False,
    config: FLAVAConfig | None = None,
    device: str | torch.device | None = None,
    **overrides: Any,
) -> FLAVAModel | FLAVAForPreTraining:
    """The FLAVA model of any FLAVA checkpoint, strictly loaded, in eval mode.

    Reads, without running code from them (safetensors, or ``torch.load(weights_only=True)``), and
    telling the layouts apart by the tensors' names:

    * an mmkit pretraining export (``<run>/final``: ``model.safetensors`` + ``config.json``);
    * a finetune export (``<run>/best``): its encoders, the classifier head left out;
    * a transformers ``FlavaModel`` / ``FlavaForPreTraining`` directory (``config.json`` +
      ``model.safetensors``, sharded safetensors or ``pytorch_model.bin``);
    * a lone weights file of mmkit names, with ``config`` giving the sizes.

    Before the model is built the checkpoint's tensors are checked against the config
    (:func:`check_flava_fits`): every tensor of the model must be there at the shape the config gives,
    and nothing but heads may be left over, else :class:`~mmkit.utils.weights.CheckpointMismatchError`
    (a ``ValueError``, one line) names the tensors and the config fields that disagree — never a model
    with layers dropped or left random. What the model does not use (heads, classifier, codebook) is
    listed in ``model.load_report`` (a :class:`~mmkit.utils.weights.LoadReport`) and a log warning.

    Args:
        path_or_name: the checkpoint directory or file, or a Hugging Face hub name
            (``facebook/flava-full[@revision]``, :func:`~mmkit.utils.hub.resolve_checkpoint`).
        pretraining: build :class:`FLAVAForPreTraining` (encoders, heads and codebook, all of which the
            checkpoint must hold: a pretraining export or a ``FlavaForPreTraining`` directory) instead of
            the encoders alone (:class:`FLAVAModel`).
        config: sizes, for a lone weights file; for a directory, its ``config.json`` wins unless given.
        device: where to put the model (default CPU).
        **overrides: :class:`FLAVAConfig` fields that do not change shapes (``attention_backend="math"``,
            dropout).

    Raises:
        InputError: a lone weights file without ``config``. MissingError: no such checkpoint.
    """
    path = resolve_checkpoint(path_or_name)
    checkpoint = inspect_flava_checkpoint(path)
    cfg = config or checkpoint.config
    if cfg is None:
        raise InputError(f"{path} has no config.json: pass config=FLAVAConfig(...) with the model's sizes")
    cfg = cfg.replace(**overrides) if overrides else cfg
    origin = "config.json" if config is None else "the given config"
    if pretraining:
        model = _load_pretraining(checkpoint, cfg, origin)
    else:
        check_flava_fits(checkpoint, cfg, origin=origin)
        model = _load_encoders(path, cfg)
    if model.load_report.unused:
        logger.warning("%s", model.load_report)
    return model.to(device or "cpu").eval()


def _load_encoders(path: Path, config: FLAVAConfig) -> FLAVAModel:
    """Build the model of ``config`` and load the checkpoint (checked by :func:`check_flava_fits`) strictly."""
    state, _, kind, left_out = _read_encoders(path)
    model = flava_model(config)
    report = load_strict(model, state, str(path), target="FLAVAModel", kind=kind, may_be_unused=True)
    report.unused = sorted([*left_out, *report.unused])
    model.load_report = report
    return model


def _load_pretraining(checkpoint: FlavaCheckpoint, config: FLAVAConfig, origin: str) -> FLAVAForPreTraining:
    """:class:`FLAVAForPreTraining` of ``config`` from a pretraining export or a ``FlavaForPreTraining``
    directory, its every tensor checked against the model built on the meta device before it is built."""
    target = "FLAVAForPreTraining"
    fields = config_fields(config, _SIDES, _field_label(checkpoint, origin))
    expected = _mmkit_shapes(meta_shapes(lambda: build_to_load(config)))  # encoders in FLAVAModel names
    state = None
    found = checkpoint.found
    if checkpoint.kind == "transformers":
        state = flava_pretraining_from_hf(read_weights(checkpoint.path))  # names mapped; check_fits checks them
        found = _mmkit_shapes({k: v.shape for k, v in state.items()})
    check_fits(expected, found, source=str(checkpoint.path), target=target, fields=fields, origin=origin)
    model = build_to_load(config)
    state = read_weights(checkpoint.path) if state is None else state
    model.load_report = load_strict(model, state, str(checkpoint.path), target=target, kind=checkpoint.kind)
    return model


def save_flava_hf(model: FLAVAModel | FLAVAForPreTraining, path: str | Path, config: FLAVAConfig | None = None) -> Path:
    """Write ``model`` as a transformers checkpoint directory (``config.json`` + ``model.safetensors``).

    Args:
        model: a :class:`FLAVAModel` (written as ``FlavaModel``) or a
            :class:`FLAVAForPreTraining` (written as ``FlavaForPreTraining``, heads and codebook included).
        path: output directory (created).
        config: defaults to ``model.config``.

    Returns:
        The directory, loadable by transformers' ``from_pretrained`` and by :func:`load_flava`.
    """
    from safetensors.torch import save_file

    config = config or getattr(model, "config", None)
    if config is None:
        raise InputError("save_flava_hf needs the model's FLAVAConfig (model.config or config=...)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pretraining = isinstance(model, FLAVAForPreTraining)
    convert = flava_pretraining_to_hf if pretraining else flava_to_hf
    tensors = {k: v.detach().cpu().contiguous() for k, v in convert(model.state_dict()).items()}
    hf_config = flava_config_to_hf(config)
    if pretraining:
        hf_config["architectures"] = ["FlavaForPreTraining"]
        # tied decoder biases: write the tensor once under each name
        tensors = {k: v.clone() for k, v in tensors.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    return path
