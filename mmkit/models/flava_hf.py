"""FLAVA in Hugging Face transformers' layout: the declarative key map, the config map and the
state-dict conversions, both ways (``FlavaModel`` and ``FlavaForPreTraining``).

:data:`KEY_MAP` lists ``(mmkit key, transformers key(s))`` templates, where ``{i}`` stands for a
layer index and ``{p}`` for ``weight``/``bias`` (the engine is :class:`mmkit.utils.keymap.KeyMap`).
A rule with three transformers keys is a fused projection: mmkit's ``qkv`` is the row-wise
concatenation ``[query; key; value]``. Key names of the transformers format come from
``FlavaModel`` / ``FlavaForPreTraining`` (transformers 4.x-5.x; see ``docs/FLAVA.md``);
``FlavaForPreTraining`` checkpoints hold the same keys under the prefix ``flava.``.

Functions:
    flava_from_hf / flava_to_hf: :class:`FLAVAModel` state dicts, both directions.
    flava_pretraining_from_hf / flava_pretraining_to_hf: the same for :class:`FLAVAForPreTraining`
        (heads, ``logit_scale`` and the image codebook included).
    config_from_hf / config_to_hf: ``FlavaConfig`` dict <-> :class:`FLAVAConfig`.
    load_hf_checkpoint: ``(config, tensors)`` of a transformers directory.
    flava_model_for_pretraining_from_hf: a :class:`FLAVAForPreTraining` from a transformers directory.
    save_hf_checkpoint: write a directory transformers' ``from_pretrained`` reads.

Files are read and loaded through :mod:`mmkit.utils.weights` (strict, one report and error type). The
:class:`FLAVAModel` of any FLAVA checkpoint (``load_flava_model``) is in :mod:`mmkit.models.flava_load`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mmkit.encoders import MultimodalEncoderConfig
from mmkit.layers.init import init_std_for
from mmkit.models.flava import FLAVAConfig, FLAVAModel, flava_model
from mmkit.models.flava_pretraining import FLAVAForPreTraining, build_to_load
from mmkit.tokenizers.dalle_keys import dalle_from_hf, dalle_to_hf
from mmkit.utils.config_json import read_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.keymap import KeyMap
from mmkit.utils.weights import CheckpointMismatchError, format_keys, load_strict, read_weights

# ------------------------------------------------------------------------------------------
# The key map
# ------------------------------------------------------------------------------------------
_ENCODERS = (
    ("image_encoder", "image_model"),
    ("text_encoder", "text_model"),
    ("multimodal_encoder", "multimodal_model"),
)
_LAYER = (
    ("norm1.{p}", ("layernorm_before.{p}",)),
    ("norm2.{p}", ("layernorm_after.{p}",)),
    ("attn.qkv.{p}", ("attention.attention.query.{p}", "attention.attention.key.{p}", "attention.attention.value.{p}")),
    ("attn.out_proj.{p}", ("attention.output.dense.{p}",)),
    ("mlp.fc1.{p}", ("intermediate.dense.{p}",)),
    ("mlp.fc2.{p}", ("output.dense.{p}",)),
)


def _base_rules() -> list[tuple[str, tuple[str, ...]]]:
    rules: list[tuple[str, tuple[str, ...]]] = []
    for ours, hf in _ENCODERS:
        rules += [
            (f"{ours}.encoder.layers.{{i}}.{a}", tuple(f"{hf}.encoder.layer.{{i}}.{x}" for x in b)) for a, b in _LAYER
        ]
        rules += [
            (f"{ours}.encoder.norm.{{p}}", (f"{hf}.layernorm.{{p}}",)),
            (f"{ours}.pooler.dense.{{p}}", (f"{hf}.pooler.dense.{{p}}",)),
        ]
    rules += [
        ("image_encoder.embeddings.cls_token", ("image_model.embeddings.cls_token",)),
        ("image_encoder.embeddings.mask_token", ("image_model.embeddings.mask_token",)),
        ("image_encoder.embeddings.position_embeddings", ("image_model.embeddings.position_embeddings",)),
        ("image_encoder.embeddings.proj.{p}", ("image_model.embeddings.patch_embeddings.projection.{p}",)),
        ("text_encoder.embeddings.word_embeddings.weight", ("text_model.embeddings.word_embeddings.weight",)),
        ("text_encoder.embeddings.position_embeddings.weight", ("text_model.embeddings.position_embeddings.weight",)),
        (
            "text_encoder.embeddings.token_type_embeddings.weight",
            ("text_model.embeddings.token_type_embeddings.weight",),
        ),
        ("text_encoder.embeddings.norm.{p}", ("text_model.embeddings.LayerNorm.{p}",)),
        ("multimodal_encoder.cls_token", ("multimodal_model.cls_token",)),
        ("logit_scale", ("logit_scale",)),
    ]
    rules += [
        (f"{n}.{{p}}", (f"{n}.{{p}}",))
        for n in ("image_projection", "text_projection", "image_to_mm_projection", "text_to_mm_projection")
    ]
    return rules


KEY_MAP: list[tuple[str, tuple[str, ...]]] = _base_rules()
"""``(mmkit template, transformers template(s))`` pairs for :class:`FLAVAModel`."""
FLAVA_KEYS = KeyMap(KEY_MAP)

_MASKED_HEADS = ("mim_head", "mlm_head", "mmm_image_head", "mmm_text_head")
HEAD_KEY_MAP: list[tuple[str, tuple[str, ...]]] = [
    rule
    for h in _MASKED_HEADS
    for rule in (
        (f"{h}.transform.dense.{{p}}", (f"{h}.transform.dense.{{p}}",)),
        (f"{h}.transform.norm.{{p}}", (f"{h}.transform.LayerNorm.{{p}}",)),
        (f"{h}.decoder.{{p}}", (f"{h}.decoder.{{p}}",)),
    )
] + [
    ("itm_head.pooler.dense.{p}", ("itm_head.pooler.dense.{p}",)),
    ("itm_head.classifier.{p}", ("itm_head.seq_relationship.{p}",)),
]
"""Pretraining heads; transformers also keeps ``<head>.bias``, tied to ``<head>.decoder.bias``."""
HEAD_KEYS = KeyMap(HEAD_KEY_MAP)

#: transformers buffers that older checkpoints saved; derived, never learned: dropped on import.
IGNORED_HF_KEYS = re.compile(r"^(flava\.)?text_model\.embeddings\.(position_ids|token_type_ids)$")
#: prefixes of ``FlavaForPreTraining`` parts that are not in :class:`FLAVAModel`.
HF_PRETRAINING_PREFIXES = (*(f"{h}." for h in _MASKED_HEADS), "itm_head.", "image_codebook.")


@dataclass
class _Split:
    model: dict[str, Tensor]
    pretraining: dict[str, Tensor]
    ignored: list[str]


def _split_hf(hf_state_dict: Mapping[str, Tensor]) -> _Split:
    """Strip the ``flava.`` prefix and set aside pretraining heads and ignorable buffers."""
    out = _Split({}, {}, [])
    for key, value in hf_state_dict.items():
        if IGNORED_HF_KEYS.match(key):
            out.ignored.append(key)
        elif key.startswith(HF_PRETRAINING_PREFIXES):
            out.pretraining[key] = value
        else:
            out.model[key.removeprefix("flava.")] = value
    return out


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise CheckpointMismatchError(f"cannot convert {what}:\n" + "\n".join(problems))


def _check_expected(out: Mapping[str, Tensor], expected: set[str], keymap: KeyMap) -> list[str]:
    problems = []
    if expected - out.keys():
        problems.append(
            format_keys("keys the model needs but the checkpoint lacks", keymap.their_names(expected - out.keys()))
        )
    if out.keys() - expected:
        problems.append(
            format_keys("checkpoint keys the model does not have", keymap.their_names(out.keys() - expected))
        )
    return problems


def flava_from_hf(hf_state_dict: Mapping[str, Tensor], config: FLAVAConfig | None = None) -> dict[str, Tensor]:
    """Convert a transformers ``FlavaModel`` (or the ``flava.*`` part of a
    ``FlavaForPreTraining``) state dict to :class:`FLAVAModel` keys.

    Args:
        hf_state_dict: transformers tensors by name.
        config: when given, the result is also checked against the keys a
            :class:`FLAVAModel` of this config has.

    Returns:
        mmkit tensors by name (Q/K/V fused into ``qkv``).

    Raises:
        CheckpointMismatchError: listing unknown keys, incomplete Q/K/V groups and,
            with ``config``, missing keys. Pretraining-head keys (``mim_head.*``, ...,
            ``image_codebook.*``) are reported as belonging to the pretraining model.
    """
    split = _split_hf(hf_state_dict)
    if split.pretraining:
        raise CheckpointMismatchError(
            "the state dict holds FlavaForPreTraining heads/codebook, which FLAVAModel has no place for:\n"
            + format_keys("pretraining keys", split.pretraining)
            + "\nUse flava_pretraining_from_hf, or flava_model_from_hf (which reports and skips them)."
        )
    out, unknown, incomplete = FLAVA_KEYS.from_theirs(split.model)
    problems = []
    if unknown:
        problems.append(format_keys("unknown transformers keys", unknown))
    if incomplete:
        problems.append(format_keys("missing members of fused query/key/value groups", incomplete))
    if config is not None:
        problems += _check_expected(out, set(_expected_keys(config)), FLAVA_KEYS)
    _raise_if(problems, "transformers FLAVA state dict")
    if "logit_scale" in out:  # transformers: a scalar; mmkit: shape (1,) so that FSDP2 can shard it
        out["logit_scale"] = out["logit_scale"].reshape(1)
    return out


def flava_to_hf(state_dict: Mapping[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Convert :class:`FLAVAModel` tensors to transformers ``FlavaModel`` names.

    Args:
        state_dict: mmkit tensors by name.
        prefix: prepended to every key; ``"flava."`` gives the ``FlavaForPreTraining`` layout.

    Raises:
        CheckpointMismatchError: listing keys the map does not know.
    """
    out, unknown = FLAVA_KEYS.to_theirs(state_dict, prefix)
    if unknown:
        _raise_if([format_keys("keys with no transformers name", unknown)], "mmkit FLAVA state dict")
    if prefix + "logit_scale" in out:
        out[prefix + "logit_scale"] = out[prefix + "logit_scale"].reshape(())
    return out


def _expected_keys(config: FLAVAConfig) -> list[str]:
    with torch.device("meta"):
        return list(flava_model(config).state_dict().keys())


def flava_pretraining_from_hf(
    hf_state_dict: Mapping[str, Tensor], config: FLAVAConfig | None = None
) -> dict[str, Tensor]:
    """Convert a transformers ``FlavaForPreTraining`` state dict to :class:`FLAVAForPreTraining` keys.

    ``flava.*`` becomes ``model.*`` (see :func:`flava_from_hf`), the heads keep their names
    (``itm_head.seq_relationship`` -> ``itm_head.classifier``, ``transform.LayerNorm`` ->
    ``transform.norm``; the tied ``<head>.bias`` and ``<head>.decoder.bias`` must agree),
    ``image_codebook.*`` becomes ``image_tokenizer.encoder.*``.

    Args:
        hf_state_dict: transformers tensors by name.
        config: when given, the result is checked against a model of this config.

    Raises:
        CheckpointMismatchError: listing unknown, missing or inconsistent keys.
    """
    base: dict[str, Tensor] = {}
    heads: dict[str, Tensor] = {}
    codebook: dict[str, Tensor] = {}
    tied_bias: dict[str, Tensor] = {}
    problems: list[str] = []
    for key, value in hf_state_dict.items():
        if key.startswith("image_codebook."):
            codebook[key] = value
        elif key.startswith(HF_PRETRAINING_PREFIXES):
            head = key.split(".")[0]
            if key == f"{head}.bias" and head in _MASKED_HEADS:
                tied_bias[head] = value
            else:
                heads[key] = value
        else:
            base[key] = value
    for head, bias in tied_bias.items():
        dec = heads.get(f"{head}.decoder.bias")
        if dec is None:
            heads[f"{head}.decoder.bias"] = bias
        elif not torch.equal(dec, bias):
            problems.append(f"  {head}.bias and {head}.decoder.bias are tied in transformers but differ here")
    out = {f"model.{k}": v for k, v in flava_from_hf(base).items()}
    converted, unknown, _ = HEAD_KEYS.from_theirs(heads)
    out.update(converted)
    if unknown:
        problems.append(format_keys("unknown transformers head keys", unknown))
    out.update({f"image_tokenizer.encoder.{k}": v for k, v in dalle_from_hf(codebook).items()})
    if config is not None:
        with torch.device("meta"):
            expected = set(build_to_load(config).state_dict())
        problems += _check_expected(out, expected, KeyMap([]))
    _raise_if(problems, "transformers FlavaForPreTraining state dict")
    return out


def flava_pretraining_to_hf(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Convert :class:`FLAVAForPreTraining` tensors to transformers ``FlavaForPreTraining`` names
    (writing both tied names of each decoder bias)."""
    base = {k.removeprefix("model."): v for k, v in state_dict.items() if k.startswith("model.")}
    codebook = {
        k.removeprefix("image_tokenizer.encoder."): v
        for k, v in state_dict.items()
        if k.startswith("image_tokenizer.encoder.")
    }
    rest = {k: v for k, v in state_dict.items() if not k.startswith(("model.", "image_tokenizer."))}
    out = flava_to_hf(base, prefix="flava.")
    heads, unknown = HEAD_KEYS.to_theirs(rest)
    if unknown:
        _raise_if([format_keys("keys with no transformers name", unknown)], "mmkit FLAVA pretraining state dict")
    out.update(heads)
    for h in _MASKED_HEADS:
        if f"{h}.decoder.bias" in heads:
            out[f"{h}.bias"] = heads[f"{h}.decoder.bias"]
    out.update({k: v.contiguous() for k, v in dalle_to_hf(codebook, prefix="image_codebook.").items()})
    return out


# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------
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


def config_from_hf(hf_config: Mapping[str, Any]) -> FLAVAConfig:
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
    if "initializer_range" in hf_config:  # None when it is the width rule's value (config_to_hf writes that)
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


_WEIGHTS = {  # mmkit loss-weight field -> transformers FlavaConfig field
    "global_contrastive": "global_contrastive_weight",
    "itm": "itm_weight",
    "mmm_image": "mmm_image_weight",
    "mmm_text": "mmm_text_weight",
    "mim": "mim_weight",
    "mlm": "mlm_weight",
}
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


def hf_unsupported(config: FLAVAConfig) -> list[str]:
    """What of ``config`` transformers' FLAVA cannot express: encoder options (a FLAVA started from
    CLIP/SigLIP towers has some) and objectives added to FLAVA's six (their heads); empty when the
    config converts."""
    defaults = {"input_norm": False, "patch_bias": True, "use_cls_token": True, "pooler": "tanh", "causal": False,
                "embedding_norm": True, "pad_token_id": 0}  # fmt: skip
    found = []
    for name in ("image", "text", "multimodal"):
        sub = getattr(config, name)
        found += [f"{name}.{k}={getattr(sub, k)!r}" for k, v in defaults.items() if getattr(sub, k, v) != v]
    if config.text.type_vocab_size == 0:
        found.append("text.type_vocab_size=0")
    found += [f"objective {name!r} (no head for it)" for name in config.pretraining.weights.extra]
    return found


def config_to_hf(config: FLAVAConfig) -> dict[str, Any]:
    """The transformers ``FlavaConfig`` dict (``config.json``) of a :class:`FLAVAConfig`.

    Raises:
        ValueError: for encoder options transformers' FLAVA lacks (see :func:`hf_unsupported`).
    """
    unsupported = hf_unsupported(config)
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


# ------------------------------------------------------------------------------------------
# Checkpoint directories and files
# ------------------------------------------------------------------------------------------
def load_hf_checkpoint(path: str | Path) -> tuple[FLAVAConfig, dict[str, Tensor]]:
    """Read a transformers FLAVA checkpoint directory.

    Args:
        path: a directory with ``config.json`` and ``model.safetensors`` (or a
            sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``), or a hub name
            (:func:`~mmkit.utils.hub.resolve_checkpoint`).

    Returns:
        ``(config, hf_state_dict)``, the state dict still in transformers names.
    """
    path = resolve_checkpoint(path)
    if not path.is_dir():
        raise MissingError(f"checkpoint directory {path} does not exist (or is not a directory)")
    cfg_file = path / "config.json"
    if not cfg_file.exists():
        raise MissingError(f"{cfg_file} is missing; a transformers checkpoint directory needs its config.json")
    return config_from_hf(read_config_json(cfg_file)), read_weights(path)


def flava_model_for_pretraining_from_hf(path: str | Path, **overrides: Any) -> FLAVAForPreTraining:
    """Build a :class:`FLAVAForPreTraining` from a transformers ``FlavaForPreTraining`` directory
    (encoders, heads and codebook). A ``FlavaModel`` directory (no heads) raises, listing
    what is missing.

    Args:
        path: checkpoint directory (see :func:`load_hf_checkpoint`).
        **overrides: :class:`FLAVAConfig` fields that do not change shapes.
    """
    config, hf_sd = load_hf_checkpoint(path)
    config = config.replace(**overrides)
    state = flava_pretraining_from_hf(hf_sd, config)
    model = build_to_load(config)
    model.load_report = load_strict(model, state, str(path), target="FLAVAForPreTraining", kind="transformers")
    return model


def save_hf_checkpoint(
    model: FLAVAModel | FLAVAForPreTraining, path: str | Path, config: FLAVAConfig | None = None
) -> Path:
    """Write ``model`` as a transformers checkpoint directory (``config.json`` + ``model.safetensors``).

    Args:
        model: a :class:`FLAVAModel` (written as ``FlavaModel``) or a
            :class:`FLAVAForPreTraining` (written as ``FlavaForPreTraining``, heads and codebook included).
        path: output directory (created).
        config: defaults to ``model.config``.

    Returns:
        The directory, loadable by transformers' ``from_pretrained``.
    """
    from safetensors.torch import save_file

    config = config or getattr(model, "config", None)
    if config is None:
        raise InputError("save_hf_checkpoint needs the model's FLAVAConfig (model.config or config=...)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pretraining = isinstance(model, FLAVAForPreTraining)
    convert = flava_pretraining_to_hf if pretraining else flava_to_hf
    tensors = {k: v.detach().cpu().contiguous() for k, v in convert(model.state_dict()).items()}
    hf_config = config_to_hf(config)
    if pretraining:
        hf_config["architectures"] = ["FlavaForPreTraining"]
        # tied decoder biases: write the tensor once under each name
        tensors = {k: v.clone() for k, v in tensors.items()}
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config, indent=2))
    return path
