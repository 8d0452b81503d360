"""Typed, nested dataclass configs with strict overrides.

``replace_config(cfg, {"image": {"num_layers": 2}, "projection_dim": 64})`` returns a
new config; an unknown key raises ``ValueError`` naming the key and the nearest
valid one, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def _unknown_key_error(key: str, valid: list[str], where: str) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ValueError(f"unknown config key '{where}{key}'{hint} (valid keys: {', '.join(sorted(valid))})")


def replace_config(cfg: T, overrides: Mapping[str, Any] | None = None, *, _where: str = "", **kwargs: Any) -> T:
    """Return a copy of dataclass ``cfg`` with ``overrides`` (and ``kwargs``) applied.

    Nested dataclass fields accept a mapping (merged recursively) or an instance
    of their type (used as is). Keys may also be dotted (``"image.num_layers"``).

    Raises:
        ValueError: on an unknown key, naming it and the nearest valid key.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"replace_config needs a dataclass instance, got {type(cfg).__name__}")
    merged: dict[str, Any] = {}
    for key, value in {**(overrides or {}), **kwargs}.items():
        head, _, rest = key.partition(".")
        if rest:
            value = {rest: value}
            if isinstance(merged.get(head), dict):
                merged[head] = {**merged[head], **value}
                continue
        merged[head] = value
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    changes: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in fields:
            raise _unknown_key_error(key, list(fields), _where)
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, Mapping):
            value = replace_config(current, value, _where=f"{_where}{key}.")
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


def parse_override(item: str) -> tuple[str, Any]:
    """``"optim.lr=3e-4"`` -> ``("optim.lr", 0.0003)``: the value is read as YAML, and numbers YAML 1.1
    leaves as strings (``3e-4``, ``1e5``) become floats.

    Raises:
        ValueError: when ``item`` has no ``=``.
    """
    import yaml

    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
    key, raw = item.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return key, value


def load_config(
    cls: type[T], path: str | None, overrides: list[str] = (), dict_fields: tuple[str, ...] = ("model",)
) -> T:
    """A recipe config: dataclass defaults, then a YAML file, then ``key=value`` overrides.

    Args:
        cls: the recipe's config dataclass.
        path: YAML file or None.
        overrides: ``key=value`` strings (see :func:`parse_override`); unknown keys raise.
        dict_fields: fields that are free-form dicts (e.g. ``model``, checked later by their
            own config): ``model.image.num_layers=4`` merges into them instead of being
            looked up as a dataclass field.

    Raises:
        FileNotFoundError: ``path`` does not exist. ValueError: an unknown key.
    """
    from pathlib import Path

    import yaml

    data: dict[str, Any] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        data = yaml.safe_load(p.read_text()) or {}
    cfg = replace_config(cls(), data)
    for item in overrides:
        key, value = parse_override(item)
        head, _, rest = key.partition(".")
        if head in dict_fields and rest and isinstance(getattr(cfg, head, None), dict):
            setattr(cfg, head, {**getattr(cfg, head), rest: value})
        else:
            cfg = replace_config(cfg, {key: value})
    return cfg


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict of a dataclass config (tuples become lists), for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build ``cls`` (a dataclass with all-default fields) from a nested dict, strictly."""
    return replace_config(cls(), data)
