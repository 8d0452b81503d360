"""CLIP's curated class names and zero-shot prompt templates, shipped with mmkit as data.

CLIP (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision") chose
its own class names (ImageNet's 1000 hand-edited names instead of the first WordNet lemma, which names two
classes "crane" and two "maillot"; kept verbatim, CLIP's list still names two pairs alike, "missile" and
"sunglasses") and a template set per dataset (80 for ImageNet, 18 for CIFAR, one for
MNIST, ...). ``clip.json`` beside this module holds them for the 22 classification tasks of
``suites/flava_vision.yaml``, extracted by script from openai/CLIP (``data/prompts.md`` and
``notebooks/Prompt_Engineering_for_ImageNet.ipynb``) and LAION-AI/CLIP_benchmark
(``clip_benchmark/datasets/en_classnames.json``, ``en_zeroshot_classification_templates.json``); the
file's ``source`` records the commits read, and each dataset says where its names and templates came from
and which label order its names follow (``label_order``: check it against the layout you read the set in).

Templates use ``{}`` for the class name (CLIP_benchmark's ``{c}`` is rewritten), as
:func:`mmkit.eval.zero_shot.class_embeddings` expects.

Names are mmkit's task names (:data:`CLIP_PROMPT_DATASETS`). :func:`clip_prompts` also takes, case-folded:

* CLIP_benchmark's dataset names, with or without a ``vtab/`` or ``wds/`` prefix: ``imagenet1k``,
  ``fgvc_aircraft``, ``flowers``, ``renderedsst2``, ``clevr_count_all``, ``kitti_closest_vehicle_distance``
  (``vtab/pets``, ``wds/cars``, ... resolve through the prefix);
* common long names: ``imagenet-1k``, ``stanford_cars``, ``oxford_pets``, ``oxford_iiit_pet``,
  ``oxford_flowers102``, ``patch_camelyon``, ``describable_textures``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = [
    "CLIP_PROMPT_ALIASES",
    "CLIP_PROMPT_DATASETS",
    "ClipPrompts",
    "canonical_name",
    "clip_prompts",
    "clip_prompts_source",
]

#: mmkit's task names with CLIP prompts, in the order of ``suites/flava_vision.yaml``.
CLIP_PROMPT_DATASETS: tuple[str, ...] = (
    "imagenet",
    "food101",
    "cifar10",
    "cifar100",
    "cars",
    "aircraft",
    "dtd",
    "pets",
    "flowers102",
    "mnist",
    "stl10",
    "eurosat",
    "gtsrb",
    "kitti",
    "pcam",
    "ucf101",
    "clevr",
    "fer2013",
    "sun397",
    "rendered_sst2",
    "country211",
    "caltech101",
)

#: other names for the same datasets (CLIP_benchmark's, and common long forms) -> mmkit's task name.
CLIP_PROMPT_ALIASES: dict[str, str] = {
    "imagenet1k": "imagenet",
    "imagenet-1k": "imagenet",
    "fgvc_aircraft": "aircraft",
    "stanford_cars": "cars",
    "oxford_pets": "pets",
    "oxford_iiit_pet": "pets",
    "flowers": "flowers102",
    "oxford_flowers102": "flowers102",
    "describable_textures": "dtd",
    "patch_camelyon": "pcam",
    "renderedsst2": "rendered_sst2",
    "clevr_count_all": "clevr",
    "kitti_closest_vehicle_distance": "kitti",
    "caltech101_vtab": "caltech101",
}

_PREFIXES = ("wds/", "vtab/")  # CLIP_benchmark writes wds/vtab/pets


@dataclass(frozen=True)
class ClipPrompts:
    """One dataset's CLIP prompts.

    Attributes:
        classnames: class names in ``label_order``; None where no curated names exist.
        templates: prompt templates, each with one ``{}`` for the class name; None where none exist
            (use :data:`mmkit.eval.zero_shot.DEFAULT_TEMPLATES`).
        source: where the names and the templates came from (repository, file, key).
        label_order: which label numbering ``classnames`` follows, and any layout where it would not hold.
    """

    classnames: tuple[str, ...] | None
    templates: tuple[str, ...] | None
    source: str
    label_order: str


def canonical_name(name: str) -> str | None:
    """mmkit's task name for ``name`` (a task name, an alias, or either behind ``vtab/``/``wds/``), or None."""
    key = name.strip().lower()
    for prefix in _PREFIXES:
        key = key.removeprefix(prefix)
    key = CLIP_PROMPT_ALIASES.get(key, key)
    return key if key in CLIP_PROMPT_DATASETS else None


@cache
def _load() -> dict[str, Any]:
    """The parsed ``clip.json`` (read once, through the installed package)."""
    text = resources.files(__name__).joinpath("clip.json").read_text(encoding="utf-8")
    return json.loads(text)


def clip_prompts_source() -> dict[str, Any]:
    """The data file's ``source`` record: the repositories, files and commits it was extracted from."""
    return _load()["source"]


@cache
def clip_prompts(name: str) -> ClipPrompts | None:
    """CLIP's class names and templates for the dataset ``name`` (see the module docstring for the names
    accepted), or None when mmkit ships none for it."""
    key = canonical_name(name)
    if key is None:
        return None
    entry = _load()["datasets"][key]
    names, templates = entry.get("classnames"), entry.get("templates")
    return ClipPrompts(
        classnames=tuple(names) if names is not None else None,
        templates=tuple(templates) if templates is not None else None,
        source=entry["source"],
        label_order=entry["label_order"],
    )
