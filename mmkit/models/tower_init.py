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
   :class:`~mmkit.utils.weights.LoadReport` per tower naming what was taken, what is new (initialised as usual)
   and what of the tower was not used (SigLIP's attention-pool head, the projections).

With a CLIP image tower nothing of the forward changes: before any step FLAVA's image features
equal the tower's. A SigLIP image tower has no CLS token, so FLAVA's CLS token and its position
are new and the features differ until trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.models.dual_encoder_load import dual_encoder_config, load_dual_encoder
from mmkit.models.flava import FLAVAConfig, FLAVAModel
from mmkit.utils.weights import LoadReport, load_strict

# Encoder fields a tower decides (everything else stays FLAVA's).
_SHARED = ("hidden_size", "num_layers", "num_heads", "mlp_dim", "activation", "norm_eps", "qkv_bias", "input_norm")
IMAGE_FIELDS = (*_SHARED, "image_size", "patch_size", "num_channels", "patch_bias")
TEXT_FIELDS = (*_SHARED, "vocab_size", "max_positions", "type_vocab_size", "pad_token_id", "embedding_norm")


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


def init_towers(model: FLAVAModel, config: FLAVAConfig | None = None) -> list[LoadReport]:
    """Copy the ``init_from`` towers of ``config`` (default ``model.config``) into ``model``'s encoders.

    The model must have been built from :func:`resolve_tower_configs`' output; a tensor whose shape
    does not fit raises :class:`~mmkit.utils.weights.CheckpointMismatchError`, naming it.
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
        report = _copy(encoder, tower.state_dict(), f"the {kind} {side} tower of {Path(path)}", f"FLAVA {side} encoder")
        report.kind = kind
        _prefix(report, f"{side}_encoder.")
        report.unused += [n for n in tower_model.state_dict() if not n.startswith(("image_encoder.", "text_encoder."))]
        if side == "text" and tower_model.config.text.causal:
            report.notes.append("attention made bidirectional (the tower was trained causal): its features change")
        if side == "image" and not tower_model.config.image.use_cls_token:
            report.notes.append("the tower has no CLS token: FLAVA's CLS token and its position are new")
        reports.append(report)
    return reports


def _copy(encoder: nn.Module, tower: dict[str, Tensor], source: str, target: str) -> LoadReport:
    """Load the tower's tensors that FLAVA's encoder has (every shape checked first: a misfit leaves the
    encoder untouched); FLAVA's pooler stays its own ``tanh(dense(CLS))``, the rest of FLAVA is new."""
    own = encoder.state_dict()
    taken = {name: value for name, value in tower.items() if name in own and not name.startswith("pooler.")}
    pos, cls_position = "embeddings.position_embeddings", False
    if pos in taken and own[pos].shape[1] == taken[pos].shape[1] + 1:  # a tower without CLS: its position is new
        taken[pos] = torch.cat([own[pos][:, :1], taken[pos]], dim=1)
        cls_position = True
    hint = "build FLAVA from resolve_tower_configs(config)"
    report = load_strict(encoder, taken, source, target=target, may_be_new=lambda _: True, hint=hint)
    report.unused = sorted(set(tower) - set(taken))
    if cls_position:
        report.new.append(f"{pos}[:, 0] (the CLS position)")
    return report


def _prefix(report: LoadReport, prefix: str) -> None:
    """Name the report's encoder tensors as FLAVA's model does (``image_encoder.…``)."""
    report.loaded = [prefix + n for n in report.loaded]
    report.new = [prefix + n for n in report.new]
    report.unused = [prefix + n for n in report.unused]
