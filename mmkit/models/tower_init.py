"""Start FLAVA from pretrained CLIP or SigLIP towers: ``model.image.init_from`` / ``model.text.init_from``.

A tower is the image or text encoder of a CLIP or SigLIP checkpoint (an mmkit export of
``recipes/clip/pretrain.py`` or a transformers ``CLIPModel`` / ``SiglipModel`` directory). Two steps:

1. :func:`resolve_tower_configs` gives FLAVA's encoder the tower's architecture (sizes, activation,
   LayerNorm epsilon, CLIP's input LayerNorm and bias-free patch convolution, the plain text
   embedding) while keeping what FLAVA itself needs: a CLS token, a mask token for masked image
   modelling, the ``tanh(dense(CLS))`` pooler, and *bidirectional* text attention (FLAVA's masked
   language modelling and its ``[CLS]`` pooling need every token to see every other; CLIP's text
   tower was trained causal, so its features change).
2. :func:`init_towers` copies the tower's weights into the built model and returns a
   :class:`TowerLoadReport` per tower naming what was taken, what is new (initialised as usual)
   and what of the tower was not used (SigLIP's attention-pool head, the projections).

With a CLIP image tower nothing of the forward changes: before any step FLAVA's image features
equal the tower's. A SigLIP image tower has no CLS token, so FLAVA's CLS token and its position
are new and the features differ until trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.models.clip_hf import dual_encoder_config, load_dual_encoder
from mmkit.models.flava import FLAVAConfig, FLAVAModel
from mmkit.utils.keymap import CheckpointMismatchError

# Encoder fields a tower decides (everything else stays FLAVA's).
_SHARED = ("hidden_size", "num_layers", "num_heads", "mlp_dim", "activation", "norm_eps", "qkv_bias", "input_norm")
IMAGE_FIELDS = (*_SHARED, "image_size", "patch_size", "num_channels", "patch_bias")
TEXT_FIELDS = (*_SHARED, "vocab_size", "max_positions", "type_vocab_size", "pad_token_id", "embedding_norm")


@dataclass
class TowerLoadReport:
    """What :func:`init_towers` did for one encoder.

    Attributes:
        side: ``"image"`` or ``"text"``. source: the checkpoint. kind: ``"clip"`` or ``"siglip"``.
        taken: FLAVA parameter names filled from the tower.
        new: FLAVA parameter names left at their initialisation (or partly so, with a note).
        unused: the tower's tensors FLAVA has no place for.
        changes: how FLAVA's encoder differs in function from the tower.
    """

    side: str
    source: str
    kind: str
    taken: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        counts = f"{len(self.taken)} tensors taken, {len(self.new)} new, {len(self.unused)} of the tower unused"
        lines = [f"FLAVA {self.side} encoder from the {self.kind} {self.side} tower of {self.source}: {counts}"]
        lines += [f"  new: {name}" for name in self.new]
        lines += [f"  unused: {name}" for name in self.unused]
        lines += [f"  note: {c}" for c in self.changes]
        return "\n".join(lines)


def resolve_tower_configs(config: FLAVAConfig) -> FLAVAConfig:
    """``config`` with each encoder that names an ``init_from`` tower given that tower's architecture
    (:data:`IMAGE_FIELDS` / :data:`TEXT_FIELDS`); encoders without one are returned unchanged."""
    changes: dict[str, Any] = {}
    for side, names in (("image", IMAGE_FIELDS), ("text", TEXT_FIELDS)):
        path = getattr(config, side).init_from
        if path:
            tower = getattr(dual_encoder_config(path), side)
            changes[side] = {name: getattr(tower, name) for name in names}
    return config.replace(**changes) if changes else config


def init_towers(model: FLAVAModel, config: FLAVAConfig | None = None) -> list[TowerLoadReport]:
    """Copy the ``init_from`` towers of ``config`` (default ``model.config``) into ``model``'s encoders.

    The model must have been built from :func:`resolve_tower_configs`' output; a tensor whose shape
    does not fit raises :class:`~mmkit.utils.keymap.CheckpointMismatchError`, naming it.
    """
    config = config or model.config
    reports = []
    for side in ("image", "text"):
        path = getattr(config, side).init_from
        if not path:
            continue
        tower_model = load_dual_encoder(path)
        kind = type(tower_model.config).model_type
        encoder: nn.Module = getattr(model, f"{side}_encoder")
        tower: nn.Module = getattr(tower_model, f"{side}_encoder")
        report = TowerLoadReport(side, str(Path(path)), kind)
        _copy(encoder, tower.state_dict(), report, f"{side}_encoder.")
        for name in tower_model.state_dict():
            if not name.startswith(("image_encoder.", "text_encoder.")):
                report.unused.append(name)
        if side == "text" and tower_model.config.text.causal:
            report.changes.append("attention made bidirectional (the tower was trained causal): its features change")
        if side == "image" and not tower_model.config.image.use_cls_token:
            report.changes.append("the tower has no CLS token: FLAVA's CLS token and its position are new")
        reports.append(report)
    return reports


@torch.no_grad()
def _copy(encoder: nn.Module, tower: dict[str, Tensor], report: TowerLoadReport, prefix: str) -> None:
    """Check every shape first (a misfit leaves the encoder untouched), then copy."""
    own = encoder.state_dict()
    plan: list[tuple[Tensor, Tensor]] = []
    for name, value in tower.items():
        if name.startswith("pooler.") or name not in own:  # FLAVA keeps its own tanh(dense(CLS)) pooler
            report.unused.append(prefix + name)
            continue
        target = own[name]
        if name == "embeddings.position_embeddings" and target.shape[1] == value.shape[1] + 1:
            plan.append((target[:, 1:], value))  # a tower without CLS: every patch position, the CLS one new
            report.new.append(f"{prefix}{name}[:, 0] (the CLS position)")
        elif target.shape != value.shape:
            raise CheckpointMismatchError(
                f"{report.source}: {prefix}{name} has shape {tuple(value.shape)} in the {report.kind} tower but "
                f"{tuple(target.shape)} in FLAVA; build FLAVA from resolve_tower_configs(config)"
            )
        else:
            plan.append((target, value))
        report.taken.append(prefix + name)
    for target, value in plan:
        target.copy_(value)
    report.new += [prefix + n for n in own if n not in tower]
