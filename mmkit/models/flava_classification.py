"""FLAVA with a classification head, for finetuning on vision, language or multimodal tasks.

The paper (§4, supplement B) finetunes a two-layer head (hidden 1536) on ``CLS_I`` (vision),
``CLS_T`` (language) or ``CLS_M`` (multimodal) — the token-0 states after each encoder's
final LayerNorm. ``problem_type`` picks the loss: ``single_label`` (cross-entropy),
``multi_label`` (binary cross-entropy on soft targets, e.g. VQA answer scores) or
``regression`` (mean squared error, one output, e.g. STS-B).

``checkpoint=`` reads an mmkit pretraining export or a transformers FLAVA directory with
:func:`mmkit.models.flava_load.read_flava_weights`, after checking that its tensors fit the config
(:func:`mmkit.models.flava_load.check_flava_fits`), and loads it with :func:`mmkit.utils.weights.load_strict`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.layers.init import init_std_for, init_weights
from mmkit.layers.mlp import get_activation
from mmkit.models.fit_check import check_fits, meta_shapes
from mmkit.models.flava import FLAVAConfig, FLAVAModel, flava_model
from mmkit.models.flava_load import check_flava_fits, inspect_flava_checkpoint, read_flava_weights
from mmkit.utils.config_json import read_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.weights import LoadReport, load_strict, read_weight_shapes, read_weights

logger = logging.getLogger(__name__)

MODALITIES = ("image", "text", "multimodal")
PROBLEM_TYPES = ("single_label", "multi_label", "regression")


class ClassificationHead(nn.Module):
    """``Linear(D, hidden) -> act -> dropout -> Linear(hidden, C)``. Shapes: ``(B, D) -> (B, C)``."""

    def __init__(
        self, dim: int, num_outputs: int, hidden_dim: int = 1536, activation: str = "gelu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_dim, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


@dataclass
class ClassificationOutput:
    """``logits`` ``(B, C)`` (``(B,)`` for regression), ``loss`` when labels were given, ``features`` ``(B, D)``."""

    logits: Tensor
    loss: Tensor | None = None
    features: Tensor | None = None


class FLAVAForClassification(nn.Module):
    """A :class:`FLAVAModel` and a :class:`ClassificationHead` on one modality's CLS state.

    Args:
        model: the FLAVA encoders. head: the classifier.
        modality: ``"image"`` (CLS_I), ``"text"`` (CLS_T) or ``"multimodal"`` (CLS_M).
        problem_type: ``"single_label"``, ``"multi_label"`` or ``"regression"``.
    """

    def __init__(self, model: FLAVAModel, head: ClassificationHead, modality: str, problem_type: str) -> None:
        super().__init__()
        if modality not in MODALITIES:
            raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
        if problem_type not in PROBLEM_TYPES:
            raise InputError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
        self.model = model
        self.head = head
        self.modality = modality
        self.problem_type = problem_type
        self.load_report: LoadReport | None = None
        self.classes: tuple[str, ...] = ()  # class names, when known (set by load_classifier)

    def features(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
    ) -> Tensor:
        """``(B, D)``: the CLS state of the head's modality, after its encoder's final LayerNorm."""
        m = self.model
        if self.modality == "image":
            if pixel_values is None:
                raise InputError("an image classifier needs pixel_values")
            return m.encode_image(pixel_values).last_hidden_state[:, 0]
        if input_ids is None:
            raise InputError(f"a {self.modality} classifier needs input_ids")
        text = m.encode_text(input_ids, attention_mask, token_type_ids)
        if self.modality == "text":
            return text.last_hidden_state[:, 0]
        if pixel_values is None:
            raise InputError("a multimodal classifier needs pixel_values and input_ids")
        return m.encode_multimodal(m.encode_image(pixel_values), text).last_hidden_state[:, 0]

    def forward(
        self,
        pixel_values: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        labels: Tensor | None = None,
    ) -> ClassificationOutput:
        """Classify.

        Args:
            pixel_values: ``(B, 3, H, W)`` (image and multimodal heads; other resolutions interpolate
                the position embeddings). input_ids, attention_mask, token_type_ids: ``(B, L)``.
            labels: ``(B,)`` class ids (single_label), ``(B, C)`` soft targets in [0, 1]
                (multi_label) or ``(B,)`` floats (regression).
        """
        feats = self.features(pixel_values, input_ids, attention_mask, token_type_ids)
        logits = self.head(feats)
        if self.problem_type == "regression":
            logits = logits.squeeze(-1)
        loss = None
        if labels is not None:
            if self.problem_type == "single_label":
                loss = F.cross_entropy(logits, labels.long())
            elif self.problem_type == "multi_label":
                # the VQA convention: BCE summed over answers, averaged over questions
                loss = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="sum") / len(labels)
            else:
                loss = F.mse_loss(logits, labels.float())
        return ClassificationOutput(logits=logits, loss=loss, features=feats)

    # -- what the training runtime asks (mmkit.train.Parallelizable) -------------------------------
    def shard_units(self) -> list[nn.Module]:
        """The FLAVA encoders' transformer layers (:meth:`FLAVAModel.shard_units`)."""
        return self.model.shard_units()

    def gathering_losses(self) -> list[nn.Module]:
        """None: the classification loss is per sample."""
        return []


def _checkpoint_image_size(shapes: Mapping[str, torch.Size], cfg: FLAVAConfig) -> int | None:
    """The (square) image size the checkpoint's position embeddings ``(1, 1 + N, D)`` were trained at, or None."""
    pos = shapes.get("image_encoder.embeddings.position_embeddings")
    if pos is None or len(pos) != 3:
        return None
    n = pos[1] - 1
    side = math.isqrt(max(n, 0))
    patch = cfg.image.patch_size if isinstance(cfg.image.patch_size, int) else cfg.image.patch_size[0]
    return side * patch if side * side == n else None


def _checked_weights(
    checkpoint: str | Path, config: FLAVAConfig | None, overrides: dict[str, Any]
) -> tuple[dict[str, Tensor], FLAVAConfig, FLAVAConfig, str]:
    """``(encoder weights, config, config to load at, format)`` of a checkpoint, after checking that its
    tensors fit (:func:`~mmkit.models.flava_load.check_flava_fits`: refused in one line, nothing allocated).

    The config to load at is the config at the image size the checkpoint was trained at (its position
    table is resampled to ``config``'s after loading)."""
    checkpoint = resolve_checkpoint(checkpoint)  # a path, or a hub name
    found = inspect_flava_checkpoint(checkpoint)
    cfg = (config or found.config or FLAVAConfig()).replace(**overrides)
    size = _checkpoint_image_size(found.found, cfg)
    at = cfg if size in (None, cfg.image.image_size) else cfg.replace(**{"image.image_size": size})
    origin = "the given config" if config is not None else "config.json"
    origin += f" with {', '.join(sorted(overrides))}" if overrides else ""
    check_flava_fits(found, at, origin=origin, target="FLAVA encoders")
    state, _, kind = read_flava_weights(checkpoint)
    return state, cfg, at, kind


def flava_model_for_classification(
    num_classes: int,
    modality: str = "image",
    config: FLAVAConfig | None = None,
    *,
    checkpoint: str | Path | None = None,
    problem_type: str = "single_label",
    hidden_dim: int = 1536,
    dropout: float = 0.0,
    **overrides: Any,
) -> FLAVAForClassification:
    """Build a FLAVA classifier, optionally initialised from a pretraining checkpoint.

    Args:
        num_classes: outputs of the head (1 for regression).
        modality: ``"image"``, ``"text"`` or ``"multimodal"``.
        config: model sizes; taken from the checkpoint when it has one.
        checkpoint: an mmkit pretraining export (``final/`` dir or ``model.safetensors``) or a
            transformers ``FlavaModel`` / ``FlavaForPreTraining`` directory. Its tensors are checked
            against the config before anything is built: encoders, fusion and projections must all be
            there at the config's shapes (else one-line :class:`~mmkit.utils.weights.CheckpointMismatchError`);
            only heads and the codebook are left out.
        problem_type, hidden_dim, dropout: see :class:`FLAVAForClassification` / :class:`ClassificationHead`.
        **overrides: :class:`FLAVAConfig` fields. An ``image.image_size`` other than the checkpoint's
            (e.g. 480 for VQA from a 224 checkpoint) resamples the checkpoint's position embeddings
            once, bicubically, to the new grid; they are then finetuned at that size.

    The returned model's ``load_report`` names loaded, new and unused tensors; it is logged too.
    """
    if modality not in MODALITIES:
        raise InputError(f"modality must be one of {MODALITIES}, got {modality!r}")
    state, kind = None, ""
    if checkpoint is not None:  # built at the checkpoint's resolution, loaded, then resampled once
        state, cfg, load_cfg, kind = _checked_weights(checkpoint, config, overrides)
    else:
        cfg = load_cfg = (config or FLAVAConfig()).replace(**overrides)
    base = flava_model(load_cfg)
    width = {"image": cfg.image.hidden_size, "text": cfg.text.hidden_size, "multimodal": cfg.multimodal.hidden_size}
    head = ClassificationHead(
        width[modality], 1 if problem_type == "regression" else num_classes, hidden_dim, dropout=dropout
    )
    std = init_std_for(width[modality], cfg.init_std)
    head.apply(lambda m: init_weights(m, std=std))
    model = FLAVAForClassification(base, head, modality, problem_type)
    if state is not None:
        model.load_report = _load_encoders(base, head, cfg, state, str(checkpoint), kind)
        logger.warning("%s", model.load_report)
    return model


def _load_encoders(
    base: FLAVAModel, head: nn.Module, cfg: FLAVAConfig, state: dict, source: str, kind: str
) -> LoadReport:
    """Load ``state`` into ``base`` strictly (every encoder weight, each of its shape), then resample the
    image position embeddings when ``cfg`` asks for another image size; the report of what was done."""
    report = load_strict(base, state, source, target="FLAVA encoders", kind=kind, may_be_unused=True)
    notes = []
    if base.config.image.image_size != cfg.image.image_size:
        old_grid = base.image_encoder.embeddings.grid_size
        base.image_encoder.embeddings.resize_position_embeddings(cfg.image.image_size)
        base.config = cfg
        new_grid = base.image_encoder.embeddings.grid_size
        notes.append(
            f"image position embeddings resampled from {old_grid[0]}x{old_grid[1]} to "
            f"{new_grid[0]}x{new_grid[1]} patches (image size {cfg.image.image_size})"
        )
    report.new = sorted(f"head.{k}" for k in head.state_dict())
    report.notes = notes
    return report


def load_classifier(path: str | Path) -> FLAVAForClassification:
    """Load a finetuned classifier exported by ``recipes/flava/finetune.py`` (its ``best/`` folder:
    ``model.safetensors``, ``config.json``, ``classifier.json``), in eval mode.

    The class names are in ``model.classes``; a text or multimodal classifier's tokenizer is in
    ``<path>/tokenizer`` (load it with :meth:`mmkit.tokenizers.TextTokenizer.from_pretrained`). Its
    tensors are checked against ``config.json`` and ``classifier.json`` before the model is built (one-line
    :class:`~mmkit.utils.weights.CheckpointMismatchError` when they do not fit).
    """

    path = Path(path)
    for name in ("model.safetensors", "config.json", "classifier.json"):
        if not (path / name).is_file():
            raise MissingError(f"{path / name} does not exist: expected a finetune export (<run_dir>/best)")
    info = read_config_json(path / "classifier.json")
    cfg = FLAVAConfig.from_dict(read_config_json(path / "config.json"))

    def build() -> FLAVAForClassification:
        kwargs = {"problem_type": info["problem_type"], "hidden_dim": info["hidden_dim"]}
        return flava_model_for_classification(info["num_classes"], info["modality"], cfg, **kwargs)

    check_fits(
        meta_shapes(build),
        read_weight_shapes(path / "model.safetensors"),
        source=str(path),
        target="classifier",
        origin="config.json and classifier.json",
    )
    model = build()
    state = read_weights(path / "model.safetensors")
    model.load_report = load_strict(model, state, str(path), target="classifier", kind="mmkit")
    model.classes = tuple(info.get("classes", ()))
    return model.eval()
