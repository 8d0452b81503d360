"""A checkpoint's ``config.json`` checked before any model code reads it.

Every loader (mmkit exports, transformers FLAVA, CLIP and SigLIP directories) maps ``config.json`` into a
model config, doing arithmetic on its sizes on the way (``image_size // patch_size``). A file whose value
is a string where a number belongs (``"hidden_size": "768"``), a list where a mapping belongs, or that is
not JSON, would fail there with a ``TypeError`` traceback; :func:`check_config_json` reads it first and
names the file, the field and what was expected in one line.

The rule is by field name, as transformers writes them: a field named like a size or count
(``*_size``, ``*_dim``, ``num_*``, ``*_layers``, ``*_heads``, ``*_eps``, ``*_range``, ``*_factor``,
``*_prob``, ``*_weight``, ``*_value``, ``*_token_id``) holds a number (``image_size`` and ``patch_size`` may
be a pair of numbers; a token id may be null); a field named ``*_config`` or ``*_config_dict`` holds a
mapping (or null). Other fields are left to the loaders.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mmkit.utils.bounded import parse_json, read_text_file
from mmkit.utils.errors import InputError

_NUMBER = re.compile(
    r"(_size|_dim|_layers|_heads|_eps|_range|_factor|_prob|_weight|_value|_groups|_group|_positions)$"
    r"|^num_|_token_id$|^(hidden|intermediate|projection)_size$"
)
_PAIR_OK = {"image_size", "patch_size"}
_NULL_OK = re.compile(r"_token_id$")
_MAPPING = re.compile(r"_config(_dict)?$")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _problems(node: Any, where: str) -> list[str]:
    """The wrongly typed fields under ``node`` (a mapping of ``config.json``), ``where`` naming it."""
    found = []
    for key, value in node.items():
        name = f"{where}.{key}" if where else str(key)
        if not isinstance(key, str):
            continue
        if _MAPPING.search(key):
            if value is not None and not isinstance(value, dict):
                found.append(f"{name} must be a mapping, got {type(value).__name__}")
            elif isinstance(value, dict):
                found += _problems(value, name)
        elif _NUMBER.search(key) and not _is_number(value):
            pair = key in _PAIR_OK and isinstance(value, list) and len(value) == 2 and all(map(_is_number, value))
            if not pair and not (value is None and _NULL_OK.search(key)):
                found.append(f"{name} must be a number, got {value!r:.40}")
        elif isinstance(value, dict) and key in ("image", "text", "multimodal", "codebook", "pretraining"):
            found += _problems(value, name)  # mmkit's own config.json: one section per tower
    return found


def read_config_json(path: str | Path) -> dict[str, Any]:
    """A ``config.json`` file's object, read bounded and checked (see the module docstring).

    Raises:
        InputError: one line naming the file, the fields and what each must be; MissingError: no such file.
    """
    path = Path(path)
    data = parse_json(read_text_file(path, "model config"), str(path))
    if not isinstance(data, dict):
        raise InputError(f"{path} must hold a JSON object (the model's config), got {type(data).__name__}")
    problems = _problems(data, "")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; ... ({len(problems)} fields)" if len(problems) > 5 else "")
        raise InputError(f"{path} is not a model config mmkit can read: {shown}")
    return data


def check_config_json(checkpoint: str | Path | None) -> None:
    """Refuse a checkpoint directory's ``config.json`` that is not JSON, not an object, or holds a field of
    the wrong type (:func:`read_config_json`); nothing to check without a directory or a ``config.json``."""
    if not checkpoint:
        return
    path = Path(checkpoint) / "config.json"
    if Path(checkpoint).is_dir() and path.exists():
        read_config_json(path)
