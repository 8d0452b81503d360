"""Typed, nested dataclass configs with strict overrides and checked values.

``replace_config(cfg, {"image": {"num_layers": 2}, "projection_dim": 64})`` returns a
new config; an unknown key raises :class:`ConfigError` (a ``ValueError``) naming the key
and the nearest valid one, so a typo never silently falls back to a default.

:func:`load_config` (dataclass defaults, then a YAML file, then ``key=value`` overrides)
also checks every value against its field's annotation and the ranges/choices in the
field's metadata (see :func:`check_config`, :func:`positive`, :func:`at_least`,
:func:`fraction`, :func:`choice`), and reports every problem in one message::

    invalid config: optim.total_steps: expected an integer, got 'abc' (str); data.batch_size: must be >= 1, got 0
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import operator
import re
import sys
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import PurePath
from typing import Any, Literal, TypeVar, Union

from mmkit.utils.errors import InputError, MissingError

T = TypeVar("T")

__all__ = [
    "ConfigError",
    "ConfigMethods",
    "at_least",
    "check_config",
    "choice",
    "config_from_dict",
    "config_to_dict",
    "fraction",
    "load_config",
    "parse_override",
    "positive",
    "replace_config",
]


class ConfigError(InputError):
    """A config that cannot be used: unknown keys, values of the wrong type or out of range, a bad file.

    The message is one line, ``invalid config: <problem>; <problem>; ...``, each problem naming its
    key by its dotted path (``optim.total_steps: expected an integer, got 'abc' (str)``).
    ``problems`` holds the problems one by one (a single entry for a bad file).
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems) if problems is not None else [message]


def _raise_problems(problems: list[str]) -> None:
    if problems:
        problems = list(dict.fromkeys(problems))  # a problem found both while merging and while checking
        raise ConfigError("invalid config: " + "; ".join(problems), problems)


# -- field helpers -----------------------------------------------------------------------------


def _checked_field(default: Any, metadata: Mapping[str, Any], kwargs: dict[str, Any]) -> Any:
    metadata = {**metadata, **kwargs.pop("metadata", {})}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def positive(default: Any, **kwargs: Any) -> Any:
    """A dataclass field whose value must be ``> 0`` (``None`` passes when the annotation allows it).

    ``steps: int = positive(100)``; extra keyword arguments go to :func:`dataclasses.field`.
    """
    return _checked_field(default, {"gt": 0}, kwargs)


def at_least(minimum: float, default: Any, **kwargs: Any) -> Any:
    """A dataclass field whose value must be ``>= minimum``: ``batch_size: int = at_least(1, 32)``."""
    return _checked_field(default, {"ge": minimum}, kwargs)


def fraction(default: Any, **kwargs: Any) -> Any:
    """A dataclass field whose value must be in ``[0, 1]``: ``pair_prob: float = fraction(0.7)``."""
    return _checked_field(default, {"ge": 0, "le": 1}, kwargs)


def choice(default: Any, *options: Any, **kwargs: Any) -> Any:
    """A dataclass field whose value must be ``default`` or one of ``options``.

    ``precision: str = choice("fp32", "bf16", "fp16")`` allows fp32 (the default), bf16 and fp16;
    repeating the default among the options is allowed too.
    """
    allowed = tuple(dict.fromkeys((default, *options)))
    return _checked_field(default, {"choices": allowed}, kwargs)


# -- merging overrides -------------------------------------------------------------------------


def _unknown_key_message(key: str, valid: list[str], where: str) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown config key '{where}{key}'{hint} (valid keys: {', '.join(sorted(valid))})"


def _merge(cfg: T, overrides: Mapping[Any, Any], where: str, problems: list[str]) -> T:
    """``replace_config`` that appends unknown keys to ``problems`` instead of raising."""
    merged: dict[str, Any] = {}
    for key, value in overrides.items():
        if not isinstance(key, str):
            problems.append(f"{where}{key!r}: config keys must be strings, got {_show(key)}")
            continue
        head, _, rest = key.partition(".")
        if rest:
            value = {rest: value}
            if isinstance(merged.get(head), dict):
                merged[head] = {**merged[head], **value}
                continue
        merged[head] = value
    fields = {f.name: f for f in dataclasses.fields(cfg) if f.init}
    changes: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in fields:
            problems.append(_unknown_key_message(key, list(fields), where))
            continue
        current = getattr(cfg, key)
        if isinstance(value, Mapping):
            if dataclasses.is_dataclass(current):
                value = _merge(current, value, f"{where}{key}.", problems)
            elif (section := _section_type(cfg, key)) is not None:  # e.g. ``Sub | None`` holding None
                value = _build_section(section, value, f"{where}{key}", problems)
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


def _section_type(cfg: Any, key: str) -> type | None:
    """The dataclass type that field ``key`` of ``cfg`` is annotated with (also ``X | None``), or None."""
    tp = _type_hints(type(cfg)).get(key)
    if _is_union(tp):
        members = [a for a in typing.get_args(tp) if a is not _NONE]
        tp = members[0] if len(members) == 1 else None
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def replace_config(cfg: T, overrides: Mapping[str, Any] | None = None, *, _where: str = "", **kwargs: Any) -> T:
    """Return a copy of dataclass ``cfg`` with ``overrides`` (and ``kwargs``) applied.

    Nested dataclass fields accept a mapping (merged recursively) or an instance
    of their type (used as is). Keys may also be dotted (``"image.num_layers"``).
    Values are not type-checked here (see :func:`check_config`).

    Raises:
        ConfigError: (a ``ValueError``) naming every unknown key and the nearest valid key of each.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"replace_config needs a dataclass instance, got {type(cfg).__name__}")
    problems: list[str] = []
    out = _merge(cfg, {**(overrides or {}), **kwargs}, _where, problems)
    _raise_problems(problems)
    return out


# -- type and range checks ---------------------------------------------------------------------

_NONE = type(None)
# A number YAML 1.1 leaves as a string ("3e-4", "1E5", "-2.5e+3"); accepted where a float is expected.
_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def _type_hints(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass; a field whose annotation cannot be resolved is left unchecked."""
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable forward reference: resolve field by field
        pass
    module = sys.modules.get(cls.__module__)
    namespace = dict(vars(module)) if module is not None else {}
    hints: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not isinstance(f.type, str):
            hints[f.name] = f.type
            continue
        try:
            hints[f.name] = eval(f.type, namespace, dict(vars(cls)))
        except Exception:
            pass
    return hints


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def _describe(tp: Any) -> str:
    """``int`` -> ``"an integer"``: what a value of annotation ``tp`` looks like, for messages."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    simple = {_NONE: "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in simple:
        return simple[tp]
    if _is_union(tp):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"a list of {len(args)} values"
    if tp in (list, tuple) or origin in (list, tuple):
        return "a list"
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        return "a mapping"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "a section (a mapping of keys to values)"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    return f"a {getattr(tp, '__name__', tp)}"


def _build_section(tp: type, value: Mapping[Any, Any], path: str, problems: list[str]) -> Any:
    """A dataclass ``tp`` from a mapping: its defaults, updated by ``value`` (unknown keys reported)."""
    required = [
        f.name
        for f in dataclasses.fields(tp)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    missing = [name for name in required if name not in value]
    if missing:
        problems.append(f"{path}: missing required key(s) {', '.join(missing)}")
        return value
    base = tp(**{name: value[name] for name in required})
    return _merge(base, {k: v for k, v in value.items() if k not in required}, f"{path}.", problems)


def _check_value(value: Any, tp: Any, path: str, problems: list[str]) -> Any:
    """``value`` checked against annotation ``tp``; returns it converted (int -> float, list -> tuple,
    mapping -> dataclass section), appending any problem (named by ``path``) to ``problems``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)

    def bad() -> Any:
        problems.append(f"{path}: expected {_describe(tp)}, got {_show(value)}")
        return value

    if tp is Any or tp is object or isinstance(tp, TypeVar):
        return value
    if _is_union(tp):
        return _check_union(value, args, path, problems, bad)
    if tp is _NONE or tp is None:
        return value if value is None else bad()
    if tp in (bool, int, float):
        return _check_number(value, tp, bad)
    if tp is str:
        return value if isinstance(value, str) else bad()
    if origin is Literal:
        return value if any(value == a and type(value) is type(a) for a in args) else bad()
    if tp in (list, tuple) or origin in (list, tuple):
        return _check_sequence(value, origin or tp, args, path, problems, bad)
    if tp in (dict, Mapping) or origin in (dict, Mapping):
        return _check_mapping(value, args, path, problems, bad)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return _check_dataclass(value, f"{path}.", problems)
        if isinstance(value, Mapping):
            section = _build_section(tp, value, path, problems)
            return _check_dataclass(section, f"{path}.", problems) if isinstance(section, tp) else section
        return bad()
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return value
        for member in tp:
            if value == member.value or value == member.name:
                return member
        return bad()
    if isinstance(tp, type) and issubclass(tp, PurePath) and isinstance(value, str):
        return tp(value)
    if isinstance(tp, type):
        return value if isinstance(value, tp) else bad()
    if isinstance(origin, type):  # another generic (set[int], ...): its container type only
        return value if isinstance(value, origin) else bad()
    return value  # an annotation we do not know how to check (Callable, ...)


def _check_union(value: Any, args: tuple, path: str, problems: list[str], bad: Callable[[], Any]) -> Any:
    if value is None and _NONE in args:
        return value
    members = [a for a in args if a is not _NONE]
    if len(members) == 1:  # Optional[X]: X's own (more precise) message
        return _check_value(value, members[0], path, problems)
    fits = []
    for member in members:
        attempt: list[str] = []
        converted = _check_value(value, member, path, attempt)
        if not attempt:
            if converted is value:  # a member that takes the value as it is wins
                return value
            fits.append(converted)
    return fits[0] if fits else bad()


def _check_number(value: Any, tp: type, bad: Callable[[], Any]) -> Any:
    """bool and int exactly (True is no int here); a float also from an int or a numeric string."""
    if tp is bool:
        return value if isinstance(value, bool) else bad()
    if tp is int:
        return value if _is_number(value) and isinstance(value, int) else bad()
    if isinstance(value, float):
        return value
    if _is_number(value) or (isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip())):
        return float(value)
    return bad()


def _check_sequence(value: Any, kind: type, args: tuple, path: str, problems: list[str], bad: Callable[[], Any]) -> Any:
    if not isinstance(value, list | tuple):
        return bad()
    if kind is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            return bad()
        items = [_check_value(v, a, f"{path}[{i}]", problems) for i, (v, a) in enumerate(zip(value, args))]
    else:
        item_tp = args[0] if args else Any
        items = [_check_value(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if isinstance(value, kind) and all(new is old for new, old in zip(items, value)):
        return value
    return kind(items)


def _check_mapping(value: Any, args: tuple, path: str, problems: list[str], bad: Callable[[], Any]) -> Any:
    if not isinstance(value, Mapping):
        return bad()
    key_tp, item_tp = args if len(args) == 2 else (Any, Any)
    out, changed = {}, not isinstance(value, dict)
    for k, v in value.items():
        _check_value(k, key_tp, f"{path} key {k!r}", problems)
        out[k] = _check_value(v, item_tp, f"{path}.{k}", problems)
        changed = changed or out[k] is not v
    return out if changed else value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_metadata(value: Any, metadata: Mapping[str, Any], path: str, problems: list[str]) -> None:
    """Ranges (``gt``/``ge``/``lt``/``le``, or ``min``/``max`` with ``min_exclusive``/``max_exclusive``)
    and ``choices`` from a field's metadata."""
    choices = metadata.get("choices")
    if choices is not None and value not in tuple(choices):
        problems.append(f"{path}: must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
        return
    bounds: list[tuple[str, Any]] = []
    if "min" in metadata:
        bounds.append((">" if metadata.get("min_exclusive") else ">=", metadata["min"]))
    bounds += [(op, metadata[key]) for key, op in (("gt", ">"), ("ge", ">=")) if key in metadata]
    if "max" in metadata:
        bounds.append(("<" if metadata.get("max_exclusive") else "<=", metadata["max"]))
    bounds += [(op, metadata[key]) for key, op in (("lt", "<"), ("le", "<=")) if key in metadata]
    if not bounds or not _is_number(value):
        return
    compare = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
    if not all(compare[op](value, bound) for op, bound in bounds):
        rule = " and ".join(f"{op} {bound}" for op, bound in bounds)
        problems.append(f"{path}: must be {rule}, got {value!r}")


def _check_dataclass(cfg: T, where: str, problems: list[str]) -> T:
    hints = _type_hints(type(cfg))
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value, path = getattr(cfg, f.name), f"{where}{f.name}"
        before = len(problems)
        if f.name in hints:
            new = _check_value(value, hints[f.name], path, problems)
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            new = _check_dataclass(value, f"{path}.", problems)
        else:
            new = value
        if len(problems) == before and new is not None:  # None passed the type check: the annotation allows it
            _check_metadata(new, f.metadata, path, problems)
        if new is not value:
            changes[f.name] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg


def check_config(cfg: T) -> T:
    """Check every field of dataclass ``cfg`` (recursively into nested dataclass sections).

    Each value must fit its annotation: ``int`` (not a bool, not a float such as ``3.0``), ``float``
    (an int, or a number YAML 1.1 leaves as a string such as ``"3e-4"``, is converted), ``bool``
    (``true``/``false`` only), ``str``, ``X | None``, ``list[X]``, ``tuple[X, Y]`` (a list of that
    length is converted), ``dict[K, V]`` (a mapping), ``Any``, ``Literal[...]``, a nested dataclass
    (a mapping is built into it), an enum (by value or name). Then the field's metadata: ``gt``,
    ``ge``, ``lt``, ``le``, ``min``/``max`` (with ``min_exclusive``/``max_exclusive``) and
    ``choices`` (see :func:`positive`, :func:`at_least`, :func:`fraction`, :func:`choice`); a
    ``None`` value skips them. Fields whose annotation cannot be resolved are not type-checked.

    Returns:
        a checked copy of ``cfg`` with the conversions applied (``cfg`` itself is left as it is), so
        ``check_config(cfg)`` alone validates and ``cfg = check_config(cfg)`` also normalizes.

    Raises:
        ConfigError: naming every bad key with its dotted path, what was expected and what was given.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"check_config needs a dataclass instance, got {type(cfg).__name__}")
    problems: list[str] = []
    out = _check_dataclass(cfg, "", problems)
    _raise_problems(problems)
    return out


# -- loading -----------------------------------------------------------------------------------


def parse_override(item: str) -> tuple[str, Any]:
    """``"data.batch_size=16"`` -> ``("data.batch_size", 16)``: the value is read as YAML.

    YAML 1.1 leaves numbers such as ``3e-4`` as strings (``"optim.lr=3e-4"`` ->
    ``("optim.lr", "3e-4")``); :func:`load_config` turns them into floats where the field is a
    float, so a string field keeps ``"1e3"`` as written.

    Raises:
        ValueError: when ``item`` has no ``=``.
    """
    import yaml

    if "=" not in item:
        raise InputError(f"override {item!r} must look like key=value (e.g. optim.lr=3e-4)")
    key, raw = item.split("=", 1)
    return key, yaml.safe_load(raw)


def _yaml11_number(value: Any) -> Any:
    """A number YAML 1.1 left as a string (``"3e-4"``) as a float; anything else as it is."""
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)
    return value


def _annotation_at(cfg: Any, key: str) -> tuple[bool, Any]:
    """``(True, annotation)`` of dotted ``key`` in dataclass ``cfg``; ``(False, None)`` when unknown."""
    *sections, name = key.split(".")
    for section in sections:
        cfg = getattr(cfg, section, None)
        if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
            return False, None
    hints = _type_hints(type(cfg))
    return (True, hints[name]) if name in hints else (False, None)


def _override_value(cfg: Any, key: str, raw: str, value: Any) -> Any:
    """The raw text of a scalar override where YAML's reading does not fit the field but the text does
    (``run_dir=2024`` for a ``str`` field gives ``"2024"``)."""
    if value is None or isinstance(value, str | list | dict):
        return value
    known, tp = _annotation_at(cfg, key)
    if not known:
        return value
    as_parsed: list[str] = []
    _check_value(value, tp, key, as_parsed)
    if as_parsed:
        as_text: list[str] = []
        _check_value(raw, tp, key, as_text)
        if not as_text:
            return raw
    return value


def _kind_of(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    kind = names.get(type(value), f"a {type(value).__name__}")
    return f"{kind} ({value!r})" if isinstance(value, str | int | float) else kind


def _read_yaml_file(path: str) -> dict[str, Any]:
    """The mapping in YAML file ``path`` (``{}`` when empty); bad files raise :class:`ConfigError`."""
    from pathlib import Path

    import yaml

    p = Path(path)
    if not p.exists():
        raise MissingError(f"config file {p} does not exist")
    if p.is_dir():
        raise IsADirectoryError(f"config file {p} is a directory, not a YAML file")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).replace("\n", " ")
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ConfigError(f"config file {p} is not valid YAML{where}: {detail}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"config file {p} must be a mapping of keys to values, got {_kind_of(data)}")
    return dict(data)


def load_config(
    cls: type[T], path: str | None, overrides: list[str] = (), dict_fields: tuple[str, ...] = ("model",)
) -> T:
    """A recipe config: dataclass defaults, then a YAML file, then ``key=value`` overrides, then checked.

    Every value is checked against its field's annotation and metadata (see :func:`check_config`)
    once everything is merged; unknown keys and bad values are all reported in one :class:`ConfigError`.

    Args:
        cls: the recipe's config dataclass (all fields with defaults).
        path: YAML file (a mapping at the top level) or None.
        overrides: ``key=value`` strings (see :func:`parse_override`). Where YAML reads a value that
            does not fit a field but the text as written does (``run_dir=2024``), the text is used.
        dict_fields: fields that are free-form dicts (e.g. ``model``, checked later by their
            own config): ``model.image.num_layers=4`` merges into them instead of being
            looked up as a dataclass field; numbers YAML 1.1 leaves as strings become floats there.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ConfigError: (a ``ValueError``) the file is not valid YAML or not a mapping; unknown keys;
            values of the wrong type or out of range.
    """
    data = _read_yaml_file(path) if path else {}
    problems: list[str] = []
    cfg = _merge(cls(), data, "", problems)
    for item in overrides:
        key, value = parse_override(item)
        raw = item.split("=", 1)[1]
        head, _, rest = key.partition(".")
        if head in dict_fields and rest and isinstance(getattr(cfg, head, None), dict):
            cfg = dataclasses.replace(cfg, **{head: {**getattr(cfg, head), rest: _yaml11_number(value)}})
        else:
            cfg = _merge(cfg, {key: _override_value(cfg, key, raw, value)}, "", problems)
    cfg = _check_dataclass(cfg, "", problems)
    _raise_problems(problems)
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
    """Build ``cls`` (a dataclass with all-default fields) from a nested dict, strictly (unknown keys raise;
    values are not type-checked, see :func:`check_config`)."""
    return replace_config(cls(), data)


_C = typing.TypeVar("_C", bound="ConfigMethods")


class ConfigMethods:
    """The methods every model config shares (mix into a ``@dataclass``): :meth:`replace`,
    :meth:`to_dict`, :meth:`from_dict`, all through the strict functions of this module."""

    def replace(self: _C, **overrides: typing.Any) -> _C:
        """A copy with overrides; nested fields take dicts (``image={"num_layers": 2}``) or dotted keys."""
        return replace_config(self, overrides)

    def to_dict(self) -> dict[str, typing.Any]:
        return config_to_dict(self)

    @classmethod
    def from_dict(cls: type[_C], data: dict[str, typing.Any]) -> _C:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        return config_from_dict(cls, data)
