"""CLIP's and SigLIP's transformers config maps: a transformers ``CLIPConfig`` / ``SiglipConfig`` dict
(``config.json``) to and from :class:`CLIPConfig` / :class:`SigLIPConfig` (this module's one job; the key
maps are :mod:`mmkit.models.clip_keys`, reading and writing directories :mod:`mmkit.models.dual_encoder_load`).
Config names come from transformers 4.x-5.x ``configuration_clip.py`` / ``configuration_siglip.py``.

Functions:
    clip_config_from_hf / clip_config_to_hf, siglip_config_from_hf / siglip_config_to_hf: configs.
    CONFIG_FROM_HF / CONFIG_TO_HF: the same by ``model_type`` (``"clip"`` / ``"siglip"``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mmkit.models.clip import CLIPConfig, DualEncoderConfig, SigLIPConfig
from mmkit.utils.errors import InputError

__all__ = [
    "CONFIG_FROM_HF",
    "CONFIG_TO_HF",
    "clip_config_from_hf",
    "clip_config_to_hf",
    "siglip_config_from_hf",
    "siglip_config_to_hf",
]

_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
}
_ACTIVATION_TO_HF = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}
_ACTIVATION_TO_HF["silu"] = "silu"

# transformers' defaults, for keys a hand-written config.json leaves out
_HF_DEFAULTS = {
    "clip": (
        dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_channels=3,
            image_size=224,
            patch_size=32,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
        ),
        dict(
            vocab_size=49408,
            hidden_size=512,
            intermediate_size=2048,
            num_hidden_layers=12,
            num_attention_heads=8,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
            eos_token_id=49407,
        ),
    ),
    "siglip": (
        dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            num_channels=3,
            image_size=224,
            patch_size=16,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
            attention_dropout=0.0,
            vision_use_head=True,
        ),
        dict(
            vocab_size=32000,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=64,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
            attention_dropout=0.0,
            projection_size=None,
        ),
    ),
}


def _activation(name: str, where: str) -> str:
    if name not in _ACTIVATIONS:
        raise InputError(f"{where}.hidden_act={name!r} is not supported; mmkit knows {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]


def _tower_fields(hf: Mapping[str, Any], where: str) -> dict[str, Any]:
    return dict(
        hidden_size=hf["hidden_size"],
        mlp_dim=hf["intermediate_size"],
        num_layers=hf["num_hidden_layers"],
        num_heads=hf["num_attention_heads"],
        activation=_activation(hf["hidden_act"], where),
        norm_eps=hf["layer_norm_eps"],
        attention_dropout=float(hf.get("attention_dropout") or 0.0),
    )


def _sub_configs(hf_config: Mapping[str, Any], kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    vision_defaults, text_defaults = _HF_DEFAULTS[kind]
    vision = {**vision_defaults, **{k: v for k, v in (hf_config.get("vision_config") or {}).items() if v is not None}}
    text = {**text_defaults, **(hf_config.get("text_config") or {})}
    for key in ("eos_token_id", "projection_size"):
        if text.get(key) is None:
            text[key] = text_defaults.get(key)
    for sub in (vision, text):
        for key in ("image_size", "patch_size"):
            if isinstance(sub.get(key), list | tuple):
                if len(set(sub[key])) != 1:
                    raise InputError(f"non-square {key}={sub[key]} is not supported")
                sub[key] = sub[key][0]
    return vision, text


def _image_fields(vision: Mapping[str, Any]) -> dict[str, Any]:
    return dict(
        _tower_fields(vision, "vision_config"),
        image_size=vision["image_size"],
        patch_size=vision["patch_size"],
        num_channels=vision["num_channels"],
    )


def _text_fields(text: Mapping[str, Any]) -> dict[str, Any]:
    return dict(
        _tower_fields(text, "text_config"), vocab_size=text["vocab_size"], max_positions=text["max_position_embeddings"]
    )


def clip_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> CLIPConfig:
    """A transformers ``CLIPConfig`` dict (``config.json``) -> :class:`CLIPConfig`.

    The text ``eos_token_id`` 2 of checkpoints converted before transformers PR #24773 means OpenAI's
    rule (pool at the largest id); mmkit writes that as ``eos_token_id=None``.
    """
    vision, text = _sub_configs(hf_config, "clip")
    eos = text["eos_token_id"]
    cfg = CLIPConfig().replace(
        image=_image_fields(vision),
        text=dict(_text_fields(text), eos_token_id=None if eos == 2 else eos),
        projection_dim=hf_config.get("projection_dim") or 512,
        logit_scale_init=float(hf_config.get("logit_scale_init_value", 2.6592)),
    )
    return cfg.replace(**overrides)


def siglip_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any) -> SigLIPConfig:
    """A transformers ``SiglipConfig`` dict (``config.json``) -> :class:`SigLIPConfig`."""
    vision, text = _sub_configs(hf_config, "siglip")
    if not vision.get("vision_use_head", True):
        raise InputError("vision_config.vision_use_head=False: SiglipModel needs the attention-pooling head")
    cfg = SigLIPConfig().replace(
        image=_image_fields(vision),
        text=_text_fields(text),
        projection_dim=text["projection_size"] or text["hidden_size"],
    )
    return cfg.replace(**overrides)


def _tower_to_hf(cfg: Any) -> dict[str, Any]:
    if cfg.activation not in _ACTIVATION_TO_HF:
        raise InputError(f"activation {cfg.activation!r} has no transformers name")
    return dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.mlp_dim,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        hidden_act=_ACTIVATION_TO_HF[cfg.activation],
        layer_norm_eps=cfg.norm_eps,
        attention_dropout=cfg.attention_dropout,
    )


def clip_config_to_hf(cfg: CLIPConfig) -> dict[str, Any]:
    """:class:`CLIPConfig` -> a transformers ``CLIPConfig`` dict."""
    vision = dict(
        _tower_to_hf(cfg.image),
        image_size=cfg.image.image_size,
        patch_size=cfg.image.patch_size,
        num_channels=cfg.image.num_channels,
        projection_dim=cfg.projection_dim,
    )
    eos = 2 if cfg.text.eos_token_id is None else cfg.text.eos_token_id
    text = dict(
        _tower_to_hf(cfg.text),
        vocab_size=cfg.text.vocab_size,
        projection_dim=cfg.projection_dim,
        max_position_embeddings=cfg.text.max_positions,
        eos_token_id=eos,
    )
    return dict(
        architectures=["CLIPModel"],
        model_type="clip",
        projection_dim=cfg.projection_dim,
        logit_scale_init_value=cfg.logit_scale_init,
        vision_config=vision,
        text_config=text,
    )


def siglip_config_to_hf(cfg: SigLIPConfig) -> dict[str, Any]:
    """:class:`SigLIPConfig` -> a transformers ``SiglipConfig`` dict."""
    vision = dict(
        _tower_to_hf(cfg.image),
        image_size=cfg.image.image_size,
        patch_size=cfg.image.patch_size,
        num_channels=cfg.image.num_channels,
        vision_use_head=True,
    )
    text = dict(
        _tower_to_hf(cfg.text),
        vocab_size=cfg.text.vocab_size,
        max_position_embeddings=cfg.text.max_positions,
        projection_size=cfg.projection_dim,
    )
    return dict(architectures=["SiglipModel"], model_type="siglip", vision_config=vision, text_config=text)


#: ``model_type`` -> transformers ``config.json`` dict to mmkit config
CONFIG_FROM_HF: dict[str, Callable[..., DualEncoderConfig]] = {
    "clip": clip_config_from_hf,
    "siglip": siglip_config_from_hf,
}
#: ``model_type`` -> mmkit config to transformers ``config.json`` dict
CONFIG_TO_HF: dict[str, Callable[[Any], dict[str, Any]]] = {"clip": clip_config_to_hf, "siglip": siglip_config_to_hf}
