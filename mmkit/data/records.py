"""The raw sample every source hands out, :class:`Record`: encoded image bytes, text, label, and what the
reader noted about it (``meta``: raw text bytes and format, cached token ids, or the error that makes it
a skipped record)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Record:
    """One raw sample. ``image`` is encoded bytes, ``text`` a caption / sentence, ``label`` a class id
    (a float for regression, a soft-score list for VQA-style targets)."""

    key: str
    image: bytes | None = None
    text: str | None = None
    label: int | float | list[float] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
