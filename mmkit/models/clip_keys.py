"""CLIP's and SigLIP's transformers key maps: :class:`DualEncoderModel` state dicts to and from
transformers' ``CLIPModel`` / ``SiglipModel`` names (this module's one job; the config maps are
:mod:`mmkit.models.clip_config_map`, reading and writing directories :mod:`mmkit.models.dual_encoder_load`).

The key maps are declarative (engine: :class:`mmkit.utils.keymap.KeyMap`); ``{i}`` is a layer index
and ``{p}`` ``weight``/``bias``. Three tensors differ in shape only and are reshaped on the way:
CLIP's ``class_embedding`` ``(D,)`` is mmkit's ``cls_token`` ``(1, 1, D)``, a ``position_embedding``
table ``(N, D)`` is mmkit's ``position_embeddings`` ``(1, N, D)``, and CLIP's scalar ``logit_scale``
is mmkit's ``(1,)`` (FSDP2 cannot shard 0-d parameters). SigLIP's attention-pooling head keeps
:class:`torch.nn.MultiheadAttention`'s fused ``in_proj_weight`` (rows ``[q; k; v]``), which is
exactly mmkit's ``AttentionPool.qkv``. Key names come from transformers 4.x-5.x ``modeling_clip.py`` /
``modeling_siglip.py`` (see ``docs/CLIP_SIGLIP.md``).

Functions:
    clip_from_hf / clip_to_hf, siglip_from_hf / siglip_to_hf: state dicts, both directions.
    map_hf / dual_encoder_to_hf: the same by model type (``"clip"`` / ``"siglip"``), for the loader.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import Tensor

from mmkit.models.clip import CLIPConfig, DualEncoderConfig, SigLIPConfig, dual_encoder_model
from mmkit.models.fit_check import meta_shapes
from mmkit.utils.keymap import KeyMap
from mmkit.utils.weights import CheckpointMismatchError, format_keys

__all__ = [
    "CLIP_KEY_MAP",
    "KEY_MAPS",
    "SIGLIP_KEY_MAP",
    "clip_from_hf",
    "clip_to_hf",
    "dual_encoder_from_hf",
    "dual_encoder_to_hf",
    "expected_shapes",
    "map_hf",
    "siglip_from_hf",
    "siglip_to_hf",
]

_TOWERS = (("image_encoder", "vision_model"), ("text_encoder", "text_model"))
_LAYER = (
    ("norm1.{p}", ("layer_norm1.{p}",)),
    ("norm2.{p}", ("layer_norm2.{p}",)),
    ("attn.qkv.{p}", ("self_attn.q_proj.{p}", "self_attn.k_proj.{p}", "self_attn.v_proj.{p}")),
    ("attn.out_proj.{p}", ("self_attn.out_proj.{p}",)),
    ("mlp.fc1.{p}", ("mlp.fc1.{p}",)),
    ("mlp.fc2.{p}", ("mlp.fc2.{p}",)),
)


def _layers() -> list[tuple[str, tuple[str, ...]]]:
    return [
        (f"{ours}.encoder.layers.{{i}}.{a}", tuple(f"{hf}.encoder.layers.{{i}}.{x}" for x in b))
        for ours, hf in _TOWERS
        for a, b in _LAYER
    ]


_TEXT_EMBEDDINGS = [
    ("text_encoder.embeddings.word_embeddings.weight", ("text_model.embeddings.token_embedding.weight",)),
    ("text_encoder.embeddings.position_embeddings.weight", ("text_model.embeddings.position_embedding.weight",)),
    ("text_encoder.encoder.norm.{p}", ("text_model.final_layer_norm.{p}",)),
]

CLIP_KEY_MAP: list[tuple[str, tuple[str, ...]]] = [
    *_layers(),
    *_TEXT_EMBEDDINGS,
    ("image_encoder.embeddings.cls_token", ("vision_model.embeddings.class_embedding",)),
    ("image_encoder.embeddings.proj.weight", ("vision_model.embeddings.patch_embedding.weight",)),
    ("image_encoder.embeddings.position_embeddings", ("vision_model.embeddings.position_embedding.weight",)),
    ("image_encoder.encoder.input_norm.{p}", ("vision_model.pre_layrnorm.{p}",)),  # sic: transformers' name
    ("image_encoder.encoder.norm.{p}", ("vision_model.post_layernorm.{p}",)),
    ("image_projection.weight", ("visual_projection.weight",)),
    ("text_projection.weight", ("text_projection.weight",)),
    ("logit_scale", ("logit_scale",)),
]
"""``(mmkit template, transformers template(s))`` pairs for CLIP (``CLIPModel``)."""

SIGLIP_KEY_MAP: list[tuple[str, tuple[str, ...]]] = [
    *_layers(),
    *_TEXT_EMBEDDINGS,
    ("image_encoder.embeddings.proj.{p}", ("vision_model.embeddings.patch_embedding.{p}",)),
    ("image_encoder.embeddings.position_embeddings", ("vision_model.embeddings.position_embedding.weight",)),
    ("image_encoder.encoder.norm.{p}", ("vision_model.post_layernorm.{p}",)),
    ("image_encoder.pooler.probe", ("vision_model.head.probe",)),
    ("image_encoder.pooler.qkv.weight", ("vision_model.head.attention.in_proj_weight",)),
    ("image_encoder.pooler.qkv.bias", ("vision_model.head.attention.in_proj_bias",)),
    ("image_encoder.pooler.out_proj.{p}", ("vision_model.head.attention.out_proj.{p}",)),
    ("image_encoder.pooler.norm.{p}", ("vision_model.head.layernorm.{p}",)),
    ("image_encoder.pooler.mlp.fc1.{p}", ("vision_model.head.mlp.fc1.{p}",)),
    ("image_encoder.pooler.mlp.fc2.{p}", ("vision_model.head.mlp.fc2.{p}",)),
    ("text_projection.{p}", ("text_model.head.{p}",)),
    ("logit_scale", ("logit_scale",)),
    ("logit_bias", ("logit_bias",)),
]
"""``(mmkit template, transformers template(s))`` pairs for SigLIP (``SiglipModel``)."""

KEY_MAPS = {"clip": KeyMap(CLIP_KEY_MAP), "siglip": KeyMap(SIGLIP_KEY_MAP)}

#: derived buffers older transformers checkpoints saved: dropped on import.
IGNORED_HF_KEYS = re.compile(r"^(text_model|vision_model)\.embeddings\.position_ids$")


def expected_shapes(config: DualEncoderConfig) -> dict[str, torch.Size]:
    """The names and shapes of the :class:`DualEncoderModel` of ``config`` (built on the meta device)."""
    return meta_shapes(lambda: dual_encoder_model(config))


def map_hf(
    kind: str, hf_state_dict: Mapping[str, Tensor], expected: Mapping[str, torch.Size]
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """Their names -> ours, reshaped where only the layout differs (``(D,)`` -> ``(1, 1, D)``);
    ``(state, names no rule matches, missing members of fused q/k/v groups)``. Works on meta tensors."""
    src = {k: v for k, v in hf_state_dict.items() if not IGNORED_HF_KEYS.match(k)}
    state, unknown, incomplete = KEY_MAPS[kind].from_theirs(src)
    for key, value in list(state.items()):
        want = expected.get(key)
        if want is not None and value.shape != want and value.numel() == want.numel():
            state[key] = value.reshape(want)
    return state, unknown, incomplete


def dual_encoder_from_hf(
    kind: str, hf_state_dict: Mapping[str, Tensor], config: DualEncoderConfig
) -> dict[str, Tensor]:
    """transformers' ``CLIPModel`` (``kind="clip"``) or ``SiglipModel`` (``"siglip"``) state dict -> mmkit's,
    strictly: unknown or missing tensors and wrong shapes raise :class:`CheckpointMismatchError`."""
    expected = expected_shapes(config)
    state, unknown, incomplete = map_hf(kind, hf_state_dict, expected)
    problems = []
    if unknown:
        problems.append(format_keys(f"tensors no {kind} rule matches", unknown))
    if incomplete:
        problems.append(format_keys("missing parts of fused q/k/v groups", incomplete))
    missing = sorted(set(expected) - set(state))
    if missing:
        problems.append(format_keys("missing tensors (transformers names)", KEY_MAPS[kind].their_names(missing)))
    for key, value in state.items():
        want = expected.get(key)
        if want is not None and value.shape != want:
            problems.append(f"  {key}: checkpoint {tuple(value.shape)} vs config {tuple(want)}")
    if problems:
        raise CheckpointMismatchError(f"the {kind} checkpoint does not fit its config:\n" + "\n".join(problems))
    return state


def dual_encoder_to_hf(kind: str, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An mmkit CLIP (``kind="clip"``) or SigLIP (``"siglip"``) state dict in transformers' names and shapes."""
    out, unknown = KEY_MAPS[kind].to_theirs(state_dict)
    if unknown:
        raise CheckpointMismatchError(format_keys(f"mmkit tensors with no {kind} transformers name", unknown))
    for key in ("vision_model.embeddings.class_embedding",):
        if key in out:
            out[key] = out[key].reshape(-1)
    for key in ("vision_model.embeddings.position_embedding.weight", "text_model.embeddings.position_embedding.weight"):
        if key in out and out[key].ndim == 3:
            out[key] = out[key].squeeze(0)
    if kind == "clip":
        out["logit_scale"] = out["logit_scale"].reshape(())
    return out


def clip_from_hf(hf_state_dict: Mapping[str, Tensor], config: CLIPConfig) -> dict[str, Tensor]:
    """transformers ``CLIPModel`` state dict -> mmkit :class:`DualEncoderModel` state dict (strict:
    unknown or missing tensors and wrong shapes raise :class:`CheckpointMismatchError`)."""
    return dual_encoder_from_hf("clip", hf_state_dict, config)


def clip_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmkit CLIP state dict -> transformers ``CLIPModel`` names and shapes."""
    return dual_encoder_to_hf("clip", state_dict)


def siglip_from_hf(hf_state_dict: Mapping[str, Tensor], config: SigLIPConfig) -> dict[str, Tensor]:
    """transformers ``SiglipModel`` state dict -> mmkit :class:`DualEncoderModel` state dict (strict)."""
    return dual_encoder_from_hf("siglip", hf_state_dict, config)


def siglip_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """mmkit SigLIP state dict -> transformers ``SiglipModel`` names and shapes."""
    return dual_encoder_to_hf("siglip", state_dict)
