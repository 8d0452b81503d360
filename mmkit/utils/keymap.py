"""Declarative key maps: how a module's state-dict names read in a foreign checkpoint layout.

A rule is ``(our template, their template(s))``. In a template, ``{p}`` matches ``weight`` or
``bias`` and every other ``{name}`` (``{i}``, ``{g}``, ...) a non-negative integer; the values
matched on one side fill the other. A rule with several of their templates is a fused tensor:
ours is the row-wise concatenation of theirs (mmkit's ``qkv`` from transformers' separate
query, key and value).

This module is only the engine, generic and model-free. The maps themselves live beside the
modules whose names they describe, low enough for every package that reads such checkpoints:
:mod:`mmkit.models.flava_keys` (FLAVA in transformers' layout), :mod:`mmkit.models.clip_keys` (CLIP, SigLIP) and
:mod:`mmkit.tokenizers.dalle_keys` (the DALL-E encoder, original and transformers layouts).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

Rule = tuple[str, tuple[str, ...]]

_PLACEHOLDER = re.compile(r"\\\{(\w+)\\\}")  # a {name} after re.escape


def _compile(template: str) -> re.Pattern[str]:
    def group(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"(?P<{name}>weight|bias)" if name == "p" else f"(?P<{name}>\\d+)"

    return re.compile("^" + _PLACEHOLDER.sub(group, re.escape(template)) + "$")


def _fill(template: str, groups: Mapping[str, str | None]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: groups.get(m.group(1)) or "", template)


class KeyMap:
    """A declarative two-way key map.

    Args:
        rules: ``(our template, their template(s))`` pairs (see the module docs).
    """

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = list(rules)
        self._ours = [(_compile(o), h) for o, h in self.rules]
        self._theirs = [(_compile(t), (o, h)) for o, h in self.rules for t in h]

    def from_theirs(self, src: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], list[str], list[str]]:
        """Their names -> ours. Returns ``(converted, keys no rule matches, missing members of fused groups)``."""
        out: dict[str, Tensor] = {}
        used: set[str] = set()
        unknown: list[str] = []
        incomplete: list[str] = []
        for key in src:
            if key in used:
                continue
            match = next(((m, rule) for rx, rule in self._theirs if (m := rx.match(key))), None)
            if match is None:
                unknown.append(key)
                continue
            m, (ours_t, their_ts) = match
            groups = m.groupdict()
            their_keys = [_fill(t, groups) for t in their_ts]
            used.update(k for k in their_keys if k in src)
            missing = [k for k in their_keys if k not in src]
            if missing:
                incomplete += missing
                continue
            tensors = [src[k] for k in their_keys]
            out[_fill(ours_t, groups)] = tensors[0] if len(tensors) == 1 else torch.cat(tensors, dim=0)
        return out, unknown, incomplete

    def to_theirs(self, state_dict: Mapping[str, Tensor], prefix: str = "") -> tuple[dict[str, Tensor], list[str]]:
        """Our names -> theirs, with ``prefix``. Returns ``(converted, our keys no rule matches)``;
        fused tensors are split."""
        out: dict[str, Tensor] = {}
        unknown = []
        for key, value in state_dict.items():
            for ours_re, their_ts in self._ours:
                if m := ours_re.match(key):
                    groups = m.groupdict()
                    parts = [value] if len(their_ts) == 1 else list(value.chunk(len(their_ts), dim=0))
                    for t, part in zip(their_ts, parts, strict=True):
                        out[prefix + _fill(t, groups)] = part.contiguous()
                    break
            else:
                unknown.append(key)
        return out, unknown

    def their_names(self, keys: Iterable[str]) -> list[str]:
        """Their name(s) of our keys (keys no rule matches as they are), for error messages."""
        names = []
        for key in keys:
            for ours_re, their_ts in self._ours:
                if m := ours_re.match(key):
                    names.append(" / ".join(_fill(t, m.groupdict()) for t in their_ts))
                    break
            else:
                names.append(key)
        return names
