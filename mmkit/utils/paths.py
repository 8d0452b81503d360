"""Names and paths that stay inside their roots.

* A **name** that becomes a folder or a file of mmkit's own (a suite task's ``<out>/runs/<name>``) is one
  path component: no ``/`` or ``\\``, not ``.`` or ``..``, not empty, no NUL (:func:`check_name`).
* A **path an annotation file or a manifest names** (an image, a meme, a COCO ``file_name``) is read
  inside the folder it is relative to, its dataset root: an absolute path or one whose ``..`` climbs out
  is refused (:func:`inside_root`) unless the user set ``allow_outside_root: true``. The check is on
  the name as written, so a root that is itself a symlink, or holds symlinked folders (images kept on
  another disk), reads as before.
"""

from __future__ import annotations

import os
from pathlib import Path

from mmkit.utils.errors import InputError


class OutsideRoot(InputError, OSError):
    """A path named by a data file that would leave its dataset root (an ``OSError`` too, so a reader
    that makes an unreadable image a named skip makes this one too)."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


def name_problem(name: object) -> str | None:
    """Why ``name`` cannot be one path component (a folder mmkit makes from it), or None."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not name.strip():
        return "is empty"
    if name in (".", "..") or any(c in name for c in "/\\\0"):
        return f"{name!r} must be one path component (no '/', '\\\\', NUL, '.' or '..')"
    return None


def check_name(name: object, what: str) -> str:
    """``name`` when it is one path component, else one error naming ``what``.

    Raises:
        InputError: ``"<what> <problem>"``.
    """
    problem = name_problem(name)
    if problem:
        raise InputError(f"{what} {problem}")
    return name  # type: ignore[return-value]


def inside_root(root: str | os.PathLike[str], name: str, allow_outside: bool = False) -> Path:
    """``root / name``, refused when ``name`` (from a data file) is absolute or climbs out of ``root``.

    Args:
        root: the folder ``name`` is relative to (the dataset's, or its images folder).
        name: the path as the annotation or manifest writes it.
        allow_outside: accept absolute and climbing paths (``allow_outside_root: true``).

    Raises:
        OutsideRoot: naming the path and the root.
    """
    if "\0" in name:
        raise OutsideRoot(f"the path {name[:80]!r} holds a NUL byte")
    path = Path(root, name)
    if allow_outside:
        return path
    parts = Path(name).parts
    depth, climbs = 0, False
    for part in parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        climbs = climbs or depth < 0
    if Path(name).is_absolute() or climbs:
        raise OutsideRoot(
            f"{name!r} is outside the dataset root {root} (an absolute path or one climbing out with '..'): "
            "not read; set allow_outside_root: true to read such paths"
        )
    return path
