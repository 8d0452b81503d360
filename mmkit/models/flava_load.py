"""The FLAVA encoders (:class:`FLAVAModel`) of any FLAVA checkpoint, checked against their config first.

Reads an mmkit pretraining export (``<run>/final``), a finetune export (``<run>/best``), a transformers
``FlavaModel`` / ``FlavaForPreTraining`` directory, or a lone weights file with the sizes given. Before
the model is built, the checkpoint's names and shapes (file headers only; transformers names mapped
through :data:`mmkit.models.flava_hf.FLAVA_KEYS`) are compared with those of the model its config
describes, built on the meta device (:mod:`mmkit.models.fit_check`): a config that disagrees with its
weights is refused in one line, never loaded as a truncated model, and a config asking for huge sizes is
refused before anything of its size is allocated. Only heads the encoders do not use (pretraining heads,
a classifier head, the codebook) may be left out; they are listed in ``model.load_report``.

Functions:
    inspect_flava_checkpoint: what a checkpoint holds (format, config, names and shapes), tensors unread.
    check_flava_fits: refuse a checkpoint that does not fit a config.
    load_flava_weights: :class:`FLAVAModel` weights (mmkit names) of any FLAVA checkpoint.
    load_flava_model: the :class:`FLAVAModel` itself, strictly loaded;
        flava_model_from_hf: the same for a transformers directory, with config overrides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmkit.models.fit_check import check_fits, config_fields, hf_label, meta_shapes, meta_tensors
from mmkit.models.flava import FLAVAConfig, FLAVAModel, flava_model
from mmkit.models.flava_hf import FLAVA_KEYS, _split_hf, config_from_hf, flava_from_hf
from mmkit.utils.config_json import read_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.weights import load_strict, read_weight_shapes, read_weights

__all__ = [
    "FlavaCheckpoint",
    "check_flava_fits",
    "flava_model_from_hf",
    "inspect_flava_checkpoint",
    "is_flava_head",
    "load_flava_model",
    "load_flava_weights",
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


def _is_transformers(names: Any) -> bool:
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
    split = _split_hf(meta_tensors(shapes))
    state, unknown, _ = FLAVA_KEYS.from_theirs(split.model)  # an incomplete q/k/v group: its qkv goes missing
    if "logit_scale" in state:  # transformers: a scalar; mmkit: (1,)
        state["logit_scale"] = state["logit_scale"].reshape(1)
    found = {k: v.shape for k, v in state.items()}
    found.update({k: split.model[k].shape for k in unknown})
    found.update({k: v.shape for k, v in split.pretraining.items()})
    return found


def inspect_flava_checkpoint(path: str | Path) -> FlavaCheckpoint:
    """Format, config and tensor shapes of a FLAVA checkpoint, from ``config.json`` and the weights' headers.

    Raises:
        MissingError: when ``path`` is neither a directory with ``config.json`` nor a file.
    """
    path = resolve_checkpoint(path)
    if path.is_dir() and (path / "config.json").exists():
        cfg_json = read_config_json(path / "config.json")
        shapes = read_weight_shapes(path)
        if _is_transformers(shapes):
            return FlavaCheckpoint(path, "transformers", config_from_hf(cfg_json), _hf_shapes(shapes))
        return FlavaCheckpoint(path, "mmkit", FLAVAConfig.from_dict(cfg_json), _mmkit_shapes(shapes))
    if path.is_file():
        return FlavaCheckpoint(path, "mmkit", None, _mmkit_shapes(read_weight_shapes(path)))
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
    hf = checkpoint.kind == "transformers" and origin == "config.json"
    fields = config_fields(config, _SIDES, hf_label(_HF_SECTIONS) if hf else str)
    return check_fits(meta_shapes(lambda: flava_model(config)), checkpoint.found, source=str(checkpoint.path),
                      target=target, may_be_unused=is_flava_head, fields=fields, origin=origin)  # fmt: skip


def load_flava_weights(path: str | Path) -> tuple[dict[str, Tensor], FLAVAConfig | None, str]:
    """:class:`FLAVAModel` weights (mmkit names) from any FLAVA checkpoint.

    Accepts an mmkit pretraining export (a directory with ``config.json`` + ``model.safetensors``,
    or the weights file alone) or a transformers ``FlavaModel`` / ``FlavaForPreTraining``
    directory. Returns ``(state, config or None, "mmkit" | "transformers")``; heads and the
    codebook of pretraining checkpoints are left out of ``state``. Nothing is checked against the config
    here: :func:`check_flava_fits` does that before a model is built.
    """
    state, config, kind, _ = _read_flava(resolve_checkpoint(path))
    return state, config, kind


def _read_flava(path: str | Path) -> tuple[dict[str, Tensor], FLAVAConfig | None, str, list[str]]:
    """:func:`load_flava_weights`, plus the checkpoint's names of the tensors it left out."""
    path = Path(path)
    if path.is_dir() and (path / "config.json").exists():
        cfg_json = read_config_json(path / "config.json")
        weights = read_weights(path)
        if _is_transformers(weights):
            split = _split_hf(weights)
            return flava_from_hf(split.model), config_from_hf(cfg_json), "transformers", sorted(split.pretraining)
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


def load_flava_model(
    path: str | Path, config: FLAVAConfig | None = None, device: str | torch.device | None = None
) -> FLAVAModel:
    """The FLAVA encoders (:class:`~mmkit.models.FLAVAModel`) of any FLAVA checkpoint, in eval mode.

    Reads, without running code from them (safetensors, or ``torch.load(weights_only=True)``):

    * an mmkit pretraining export (``<run>/final``: ``model.safetensors`` + ``config.json``);
    * a finetune export (``<run>/best``): its encoders, the classifier head left out;
    * a transformers ``FlavaModel`` / ``FlavaForPreTraining`` directory (``config.json`` +
      ``model.safetensors``, sharded safetensors or ``pytorch_model.bin``);
    * a lone weights file of mmkit names, with ``config`` giving the sizes.

    Before the model is built the checkpoint's tensors are checked against the config
    (:func:`check_flava_fits`): every encoder, fusion and projection tensor must be there at the shape
    the config gives, and nothing but heads may be left over, else
    :class:`~mmkit.utils.weights.CheckpointMismatchError` (a ``ValueError``, one line) names the tensors
    and the config fields that disagree — never a model with layers dropped or left random. The heads,
    classifier and codebook the encoders do not use are listed in ``model.load_report`` (a
    :class:`~mmkit.utils.weights.LoadReport`).

    Args:
        path: the checkpoint directory or file, or a Hugging Face hub name (``facebook/flava-full[@revision]``,
            :func:`~mmkit.utils.hub.resolve_checkpoint`).
        config: sizes, for a lone weights file; for a directory, its ``config.json`` wins unless given.
        device: where to put the model (default CPU).
    """
    path = resolve_checkpoint(path)
    checkpoint = inspect_flava_checkpoint(path)
    cfg = config or checkpoint.config
    if cfg is None:
        raise InputError(f"{path} has no config.json: pass config=FLAVAConfig(...) with the model's sizes")
    check_flava_fits(checkpoint, cfg, origin="config.json" if config is None else "the given config")
    return _load_checked(path, cfg, device)


def _load_checked(path: str | Path, config: FLAVAConfig, device: str | torch.device | None) -> FLAVAModel:
    """Build the model of ``config`` and load the checkpoint (checked by :func:`check_flava_fits`) strictly."""
    state, _, kind, left_out = _read_flava(path)
    model = flava_model(config)
    report = load_strict(model, state, str(path), target="FLAVAModel", kind=kind, may_be_unused=True)
    report.unused = sorted([*left_out, *report.unused])
    model.load_report = report
    return model.to(device or "cpu").eval()


def flava_model_from_hf(path: str | Path, **overrides: Any) -> FLAVAModel:
    """A :class:`FLAVAModel` (in train mode) from a transformers ``FlavaModel`` / ``FlavaForPreTraining``
    directory: :func:`load_flava_model` with config overrides. Pretraining heads and the codebook of a
    ``FlavaForPreTraining`` checkpoint are not part of :class:`FLAVAModel`: they are named in
    ``model.load_report.unused`` and in a log warning.

    Args:
        path: checkpoint directory or hub name (see :func:`mmkit.models.flava_hf.load_hf_checkpoint`).
        **overrides: :class:`FLAVAConfig` fields that do not change shapes
            (e.g. ``attention_backend="math"``, dropout).
    """
    path = resolve_checkpoint(path)
    if not (path / "config.json").is_file():
        raise MissingError(f"{path / 'config.json'} is missing; a transformers checkpoint directory needs it")
    checkpoint = inspect_flava_checkpoint(path)
    config = config_from_hf(read_config_json(path / "config.json")).replace(**overrides)
    check_flava_fits(checkpoint, config)
    model = _load_checked(path, config, None).train()
    if model.load_report.unused:
        logger.warning("%s", model.load_report)
    return model
