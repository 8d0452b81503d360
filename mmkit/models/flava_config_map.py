"""FLAVA's transformers config map: a transformers ``FlavaConfig`` dict (``config.json``) to and from a
:class:`FLAVAConfig` (this module's one job; the key map is :mod:`mmkit.models.flava_keys`, reading and
writing directories :mod:`mmkit.models.flava_load`).

Functions:
    flava_config_from_hf / flava_config_to_hf: ``FlavaConfig`` dict <-> :class:`FLAVAConfig`.
    flava_hf_unsupported: what of a :class:`FLAVAConfig` transformers' FLAVA cannot express.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from mmkit.encoders import MultimodalEncoderConfig
from mmkit.layers.init import init_std_for
from mmkit.models.flava import FLAVAConfig
from mmkit.models.flava_objectives import FLAVA_OBJECTIVES
from mmkit.utils.errors import InputError

__all__ = ["flava_config_from_hf", "flava_config_to_hf", "flava_hf_unsupported"]

_ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
_COMMON = {  # mmkit field -> transformers field, in every sub-config
    "hidden_size": "hidden_size",
    "num_layers": "num_hidden_layers",
    "num_heads": "num_attention_heads",
    "mlp_dim": "intermediate_size",
    "norm_eps": "layer_norm_eps",
    "dropout": "hidden_dropout_prob",
    "attention_dropout": "attention_probs_dropout_prob",
    "qkv_bias": "qkv_bias",
}
_SPECIFIC = {
    "image": {
        "image_size": "image_size",
        "patch_size": "patch_size",
        "num_channels": "num_channels",
        "use_mask_token": "mask_token",
    },
    "text": {
        "vocab_size": "vocab_size",
        "max_positions": "max_position_embeddings",
        "type_vocab_size": "type_vocab_size",
        "pad_token_id": "pad_token_id",
    },
    "multimodal": {},
}


def _sub_config(hf: Mapping[str, Any], name: str) -> dict[str, Any]:
    # transformers <4.25 stored "<name>_config_dict"; when both exist, transformers prefers it.
    merged = dict(hf.get(f"{name}_config") or {})
    merged.update(hf.get(f"{name}_config_dict") or {})
    return merged


def flava_config_from_hf(hf_config: Mapping[str, Any]) -> FLAVAConfig:
    """Build a :class:`FLAVAConfig` from a transformers ``FlavaConfig`` dict (``config.json``).

    Missing fields take transformers' defaults (which equal ours). An activation
    mmkit does not implement, or a fusion encoder without CLS token, raises.
    """
    sections: dict[str, dict[str, Any]] = {}
    for name in ("image", "text", "multimodal"):
        hf = _sub_config(hf_config, name)
        section = {ours: hf[theirs] for ours, theirs in {**_COMMON, **_SPECIFIC[name]}.items() if theirs in hf}
        if "hidden_act" in hf:
            act = hf["hidden_act"]
            if act not in _ACT_FROM_HF:
                raise InputError(
                    f"{name}_config.hidden_act={act!r} is not supported; "
                    f"mmkit implements {', '.join(sorted(_ACT_FROM_HF))}"
                )
            section["activation"] = _ACT_FROM_HF[act]
        if isinstance(section.get("image_size"), list | tuple):
            section["image_size"] = tuple(section["image_size"])
        if isinstance(section.get("patch_size"), list | tuple):
            section["patch_size"] = tuple(section["patch_size"])
        if name == "multimodal" and hf.get("use_cls_token", True) is False:
            raise InputError("multimodal_config.use_cls_token=False is not supported (FLAVA uses CLS_M)")
        sections[name] = section
    top = {}
    if "projection_dim" in hf_config:
        top["projection_dim"] = hf_config["projection_dim"]
    if "logit_scale_init_value" in hf_config:
        top["logit_scale_init"] = hf_config["logit_scale_init_value"]
    if "initializer_range" in hf_config:  # None when it is the width rule's value (flava_config_to_hf writes that)
        width = sections["multimodal"].get("hidden_size", MultimodalEncoderConfig.hidden_size)
        std = hf_config["initializer_range"]
        top["init_std"] = None if math.isclose(std, init_std_for(width)) else std
    codebook = _codebook_from_hf(hf_config)
    image_vocab = _sub_config(hf_config, "image").get("vocab_size")
    if image_vocab is not None and image_vocab != codebook.get("vocab_size", image_vocab):
        raise InputError(
            f"image_config.vocab_size={image_vocab} differs from image_codebook_config.vocab_size="
            f"{codebook['vocab_size']}: the MIM heads must predict the codebook's ids"
        )
    if image_vocab is not None:
        codebook["vocab_size"] = image_vocab
    # transformers does not store the tokenizer's input size: it is one token per ViT patch.
    image_size = sections["image"].get("image_size", 224)
    patch_size = sections["image"].get("patch_size", 16)
    grid = (image_size[0] if isinstance(image_size, tuple) else image_size) // (
        patch_size[0] if isinstance(patch_size, tuple) else patch_size
    )
    codebook["image_size"] = grid * 2 ** (codebook.get("num_groups", 4) - 1)
    weights = {ours: hf_config[theirs] for ours, theirs in _WEIGHTS.items() if theirs in hf_config}
    pretraining: dict[str, Any] = {"weights": weights}
    if "global_backprop_contrastive" in hf_config:
        pretraining["contrastive_gather_with_grad"] = bool(hf_config["global_backprop_contrastive"])
    if "ce_ignore_index" in hf_config:
        pretraining["ignore_index"] = hf_config["ce_ignore_index"]
    return FLAVAConfig().replace(**sections, **top, codebook=codebook, pretraining=pretraining)


#: mmkit loss-weight field -> transformers FlavaConfig field: ``<objective>_weight`` for FLAVA's six objectives
_WEIGHTS = {objective.name: f"{objective.name}_weight" for objective in FLAVA_OBJECTIVES}
_CODEBOOK = {  # mmkit CodebookConfig field -> transformers FlavaImageCodebookConfig field
    "hidden_size": "hidden_size",
    "vocab_size": "vocab_size",
    "num_groups": "num_groups",
    "blocks_per_group": "num_blocks_per_group",
}


def _codebook_from_hf(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    hf = _sub_config(hf_config, "image_codebook")
    if hf.get("input_channels", 3) != 3:
        raise InputError("image_codebook_config.input_channels must be 3")
    return {ours: hf[theirs] for ours, theirs in _CODEBOOK.items() if theirs in hf}


def flava_hf_unsupported(config: FLAVAConfig) -> list[str]:
    """What of ``config`` transformers' FLAVA cannot express: encoder options (a FLAVA started from
    CLIP/SigLIP towers has some) and objectives added to FLAVA's six (their heads); empty when the
    config converts."""
    defaults = {
        "input_norm": False,
        "patch_bias": True,
        "use_cls_token": True,
        "pooler": "tanh",
        "causal": False,
        "embedding_norm": True,
        "pad_token_id": 0,
    }
    found = []
    for name in ("image", "text", "multimodal"):
        sub = getattr(config, name)
        found += [f"{name}.{k}={getattr(sub, k)!r}" for k, v in defaults.items() if getattr(sub, k, v) != v]
    if config.text.type_vocab_size == 0:
        found.append("text.type_vocab_size=0")
    found += [f"objective {name!r} (no head for it)" for name in config.pretraining.weights.extra]
    return found


def flava_config_to_hf(config: FLAVAConfig) -> dict[str, Any]:
    """The transformers ``FlavaConfig`` dict (``config.json``) of a :class:`FLAVAConfig`.

    Raises:
        InputError: for encoder options transformers' FLAVA lacks (see :func:`flava_hf_unsupported`).
    """
    unsupported = flava_hf_unsupported(config)
    if unsupported:
        raise InputError(f"transformers' FLAVA cannot express {', '.join(unsupported)}; keep the mmkit export")
    act_to_hf = {
        "gelu": "gelu",
        "gelu_tanh": "gelu_pytorch_tanh",
        "quick_gelu": "quick_gelu",
        "relu": "relu",
        "silu": "silu",
    }
    out: dict[str, Any] = {
        "model_type": "flava",
        "architectures": ["FlavaModel"],
        "projection_dim": config.projection_dim,
        "logit_scale_init_value": config.logit_scale_init,
        "initializer_range": init_std_for(config.multimodal.hidden_size, config.init_std),
    }
    for name in ("image", "text", "multimodal"):
        sub = getattr(config, name)
        d = {theirs: getattr(sub, ours) for ours, theirs in {**_COMMON, **_SPECIFIC[name]}.items()}
        d["hidden_act"] = act_to_hf[sub.activation]
        for k in ("image_size", "patch_size"):
            if isinstance(d.get(k), tuple):
                d[k] = list(d[k])
        if name == "multimodal":
            d["use_cls_token"] = True
        out[f"{name}_config"] = d
    out["hidden_size"] = config.multimodal.hidden_size
    out["image_config"]["vocab_size"] = config.codebook.vocab_size
    out["image_codebook_config"] = {theirs: getattr(config.codebook, ours) for ours, theirs in _CODEBOOK.items()}
    out["image_codebook_config"]["input_channels"] = 3
    out.update({theirs: getattr(config.pretraining.weights, ours) for ours, theirs in _WEIGHTS.items()})
    out["global_backprop_contrastive"] = config.pretraining.contrastive_gather_with_grad
    out["ce_ignore_index"] = config.pretraining.ignore_index
    return out
