"""FLAVA's transformers key map: :class:`FLAVAModel` / :class:`FLAVAForPreTraining` state dicts to and from
transformers' ``FlavaModel`` / ``FlavaForPreTraining`` names (this module's one job; the config map is
:mod:`mmkit.models.flava_config_map`, reading and writing directories :mod:`mmkit.models.flava_load`).

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
    split_hf: a transformers state dict's :class:`FLAVAModel` part, pretraining part and ignored buffers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from mmkit.models.flava import FLAVAConfig, flava_model
from mmkit.models.flava_pretraining import build_to_load
from mmkit.tokenizers.dalle_keys import dalle_from_hf, dalle_to_hf
from mmkit.utils.keymap import KeyMap
from mmkit.utils.weights import CheckpointMismatchError, format_keys

__all__ = [
    "FLAVA_KEYS",
    "HEAD_KEYS",
    "HEAD_KEY_MAP",
    "KEY_MAP",
    "HFSplit",
    "flava_from_hf",
    "flava_pretraining_from_hf",
    "flava_pretraining_to_hf",
    "flava_to_hf",
    "split_hf",
]

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
class HFSplit:
    """A transformers state dict in three parts: the :class:`FLAVAModel` tensors (``flava.`` prefix removed),
    the ``FlavaForPreTraining`` heads and codebook, and the names of derived buffers dropped on import."""

    model: dict[str, Tensor]
    pretraining: dict[str, Tensor]
    ignored: list[str]


def split_hf(hf_state_dict: Mapping[str, Tensor]) -> HFSplit:
    """Strip the ``flava.`` prefix and set aside pretraining heads and ignorable buffers."""
    out = HFSplit({}, {}, [])
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
    split = split_hf(hf_state_dict)
    if split.pretraining:
        raise CheckpointMismatchError(
            "the state dict holds FlavaForPreTraining heads/codebook, which FLAVAModel has no place for:\n"
            + format_keys("pretraining keys", split.pretraining)
            + "\nUse flava_pretraining_from_hf, or mmkit.models.load_flava (which reports and skips them)."
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
