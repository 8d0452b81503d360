"""Does a checkpoint hold the model its config describes? Checked before the model is built.

Every loader that builds a model from a checkpoint's ``config.json`` (FLAVA, CLIP and SigLIP; mmkit
exports and transformers directories) first compares two lists of names and shapes:

* the model's, from building it on the meta device (:func:`meta_shapes`: no memory, whatever the sizes);
* the checkpoint's, from its file headers (:func:`mmkit.utils.weights.read_weight_shapes`), foreign names
  mapped through the model's key map on storage-less stand-ins (:func:`meta_tensors`).

:func:`check_fits` refuses, in one line, a checkpoint whose encoder, fusion or projection tensors the
model has no place for, lacks or holds at another shape, naming the tensors in compact groups
(``image_encoder.encoder.layers.1.* (12 tensors)``) and the config fields whose values the weights
contradict (``config.json says image.num_layers=1 but the weights hold 2 image layers``). Only what the
caller names (pretraining heads, a classifier head, a codebook) may go unused. So a config that
disagrees with its weights never yields a truncated model, and a config asking for huge sizes is
refused before anything of its size is allocated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.utils.weights import CheckpointMismatchError

__all__ = ["ConfigField", "check_fits", "config_fields", "group_names", "hf_label", "meta_shapes", "meta_tensors"]

Shapes = Mapping[str, torch.Size]


@dataclass(frozen=True)
class ConfigField:
    """A config field that decides shapes, and how to read its value back from a list of shapes.

    Attributes:
        label: the field as the config file spells it (``image.num_layers``, ``image_config.num_hidden_layers``).
        value: the config's value.
        noun: what a set of weights holds, with ``{n}`` for the measure (``"{n} image layers"``).
        measure: the number the field decides, read from names and shapes (None where they do not say).
    """

    label: str
    value: Any
    noun: str
    measure: Callable[[Shapes], int | None]


def meta_shapes(build: Callable[[], nn.Module]) -> dict[str, torch.Size]:
    """The state-dict names and shapes of the module ``build()`` makes, built on the meta device (no memory)."""
    with torch.device("meta"):
        return {k: v.shape for k, v in build().state_dict().items()}


def meta_tensors(shapes: Shapes) -> dict[str, Tensor]:
    """Storage-less tensors of the given shapes, to map a checkpoint's names through a key map unread."""
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


# ------------------------------------------------------------------------------------------
# The config fields every mmkit encoder shares (FLAVA, CLIP and SigLIP use the same module names)
# ------------------------------------------------------------------------------------------
def _layers(prefix: str) -> Callable[[Shapes], int | None]:
    """The number of ``<prefix>.encoder.layers.{i}`` (None when nothing of ``prefix`` is there)."""
    rx = re.compile(rf"^{re.escape(prefix)}\.encoder\.layers\.(\d+)\.")

    def measure(shapes: Shapes) -> int | None:
        if not any(k.startswith(prefix + ".") for k in shapes):
            return None
        return 1 + max((int(m.group(1)) for k in shapes if (m := rx.match(k))), default=-1)

    return measure


def _dim(names: Sequence[str], axis: int) -> Callable[[Shapes], int | None]:
    """The size along ``axis`` of the first of ``names`` present (None when none is)."""

    def measure(shapes: Shapes) -> int | None:
        shape = next((shapes[n] for n in names if n in shapes), None)
        return int(shape[axis]) if shape is not None and -len(shape) <= axis < len(shape) else None

    return measure


#: ``(field, noun, tensor names under <side>_encoder., axis)``: None names count the layers.
_SIDE_FIELDS: dict[str, tuple[tuple[str, str, tuple[str, ...] | None, int], ...]] = {
    "any": (
        ("num_layers", "{n} {side} layers", None, 0),
        ("hidden_size", "{n}-wide {side} layers", ("encoder.norm.weight", "encoder.layers.0.norm1.weight"), 0),
        ("mlp_dim", "{n}-wide {side} MLPs", ("encoder.layers.0.mlp.fc1.weight",), 0),
    ),
    "image": (
        ("patch_size", "{n}-pixel image patches", ("embeddings.proj.weight",), -1),
        ("image_size", "{n} image positions", ("embeddings.position_embeddings",), -2),
    ),
    "text": (
        ("vocab_size", "{n} text tokens", ("embeddings.word_embeddings.weight",), 0),
        ("max_positions", "{n} text positions", ("embeddings.position_embeddings.weight",), 0),
        ("type_vocab_size", "{n} token types", ("embeddings.token_type_embeddings.weight",), 0),
    ),
}


def config_fields(
    config: Any, sides: Iterable[str], label: Callable[[str], str] = str, projection: bool = True
) -> list[ConfigField]:
    """The shape-deciding fields of an mmkit encoder config: per side (``image``, ``text``, ``multimodal``)
    the layer count, widths and embedding tables, and the ``projection_dim``.

    Args:
        config: a :class:`~mmkit.models.FLAVAConfig` or dual-encoder config (sections named as ``sides``).
        sides: the sections, each the config of ``<side>_encoder``.
        label: our dotted field name -> the config file's (:func:`hf_label` for transformers directories).
        projection: whether the config has a ``projection_dim`` read from the projections.
    """
    out = []
    for side in sides:
        section = getattr(config, side)
        for field, noun, names, axis in (*_SIDE_FIELDS["any"], *_SIDE_FIELDS.get(side, ())):
            if not hasattr(section, field):
                continue
            prefix = f"{side}_encoder"
            measure = _layers(prefix) if names is None else _dim([f"{prefix}.{n}" for n in names], axis)
            out.append(
                ConfigField(label(f"{side}.{field}"), getattr(section, field), noun.replace("{side}", side), measure)
            )
    if projection and hasattr(config, "projection_dim"):
        measure = _dim(["image_projection.weight", "text_projection.weight"], 0)
        out.append(ConfigField(label("projection_dim"), config.projection_dim, "{n}-wide projections", measure))
    return out


#: mmkit field names that transformers spells otherwise (in every sub-config)
HF_FIELDS = {
    "num_layers": "num_hidden_layers",
    "mlp_dim": "intermediate_size",
    "max_positions": "max_position_embeddings",
}


def hf_label(sections: Mapping[str, str], top: Mapping[str, str] | None = None) -> Callable[[str], str]:
    """A ``label`` for :func:`config_fields` that spells fields as a transformers ``config.json`` does.

    Args:
        sections: our section -> theirs (``{"image": "vision_config", "text": "text_config"}``).
        top: whole names that differ otherwise (SigLIP: ``{"projection_dim": "text_config.projection_size"}``).
    """
    top = dict(top or {})

    def label(field: str) -> str:
        if field in top:
            return top[field]
        section, _, name = field.partition(".")
        return f"{sections[section]}.{HF_FIELDS.get(name, name)}" if name else field

    return label


# ------------------------------------------------------------------------------------------
# The check
# ------------------------------------------------------------------------------------------
_INDEXED = re.compile(r"^(.*?\.)(\d+)\.")  # a name up to its first index: "image_encoder.encoder.layers." 1


def _span(indices: Collection[int]) -> str:
    ordered = sorted(indices)
    if len(ordered) == 1:
        return str(ordered[0])
    if len(ordered) > 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{{{ordered[0]}..{ordered[-1]}}}"
    return "{" + ",".join(map(str, ordered)) + "}"


def group_names(names: Iterable[str], limit: int = 8) -> str:
    """Tensor names in compact groups, for a one-line message: ``image_encoder.encoder.layers.1.* (12 tensors),
    image_encoder.encoder.layers.{0..11}.* (48 tensors), image_projection.* (2 tensors), logit_scale``."""
    groups: dict[str, tuple[set[int], list[str]]] = {}
    for name in sorted(names):
        if m := _INDEXED.match(name):
            key, index = m.group(1), int(m.group(2))
        else:
            parts = name.split(".")
            key, index = ".".join(parts[: min(2, len(parts) - 1)]) + "." if len(parts) > 1 else name, None
        indices, members = groups.setdefault(key, (set(), []))
        members.append(name)
        if index is not None:
            indices.add(index)
    shown = []
    for key, (indices, members) in groups.items():
        if len(members) == 1:
            shown.append(members[0])
        else:
            shown.append(f"{key}{_span(indices) + '.' if indices else ''}* ({len(members)} tensors)")
    more = f", and {len(shown) - limit} more groups" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def _never(_: str) -> bool:
    return False


def check_fits(
    expected: Shapes,
    found: Shapes,
    *,
    source: str,
    target: str = "model",
    may_be_unused: Callable[[str], bool] = _never,
    fields: Sequence[ConfigField] = (),
    origin: str = "config.json",
) -> list[str]:
    """Refuse a checkpoint whose tensors do not fit the model its config describes; call it before building.

    Args:
        expected: the model's names and shapes (:func:`meta_shapes`).
        found: the checkpoint's, in the model's names (a name no key-map rule knows stays as it is).
        source: the checkpoint, for the message. target: the model (``"FLAVAModel"``), for the message.
        may_be_unused: which of the checkpoint's names the model may lack (heads the task does not need).
        fields: the config fields that decide shapes (:func:`config_fields`), named where the weights
            contradict them.
        origin: where the config came from (``"config.json"``, ``"the given config"``).

    Returns:
        The checkpoint's names the model has no place for, all allowed by ``may_be_unused``.

    Raises:
        CheckpointMismatchError: one line naming the fields that disagree and the tensors, grouped.
    """
    unused = sorted(k for k in found if k not in expected)
    refused = [k for k in unused if not may_be_unused(k)]
    missing = [k for k in expected if k not in found]
    wrong = [k for k in expected if k in found and tuple(found[k]) != tuple(expected[k])]
    if not (refused or missing or wrong):
        return unused
    parts = []
    for f in fields:
        want, got = f.measure(expected), f.measure(found)
        if want is not None and got is not None and want != got:
            parts.append(f"{origin} says {f.label}={f.value} but the weights hold {f.noun.format(n=got)}")
    if refused:
        parts.append(f"in the checkpoint, not in the model: {group_names(refused)}")
    if missing:
        parts.append(f"missing from the checkpoint: {group_names(missing)}")
    if wrong:
        k = wrong[0]
        example = f"{k}: checkpoint {tuple(found[k])} vs model {tuple(expected[k])}"
        parts.append(
            f"shape mismatch: {example}"
            if len(wrong) == 1
            else f"shape mismatch: {group_names(wrong)} (e.g. {example})"
        )
    raise CheckpointMismatchError(
        f"checkpoint {source} does not fit the {target} that {origin} describes: " + "; ".join(parts)
    )
