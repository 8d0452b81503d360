"""Unpickling that runs no code: a pickle may name only the globals an allow-list admits.

A pickle can make the unpickler call any importable function (``__reduce__`` returning ``os.system``
and a command is the classic payload). :class:`RestrictedUnpickler` resolves a global only when the
allow-list admits its ``(module, name)``; any other is refused with
:class:`UnsafePickleError` naming it, before anything is called. Used for the files that reach
mmkit as pickles and cannot be anything else: CIFAR's python batches and PyTorch Distributed
Checkpoint's ``.metadata``.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from typing import IO, Any

from mmkit.utils.errors import MMKitError

Allowed = Callable[[str, str], bool]


class UnsafePickleError(MMKitError, pickle.UnpicklingError):
    """A pickle named a global outside its allow-list (``.qualname`` is what it named)."""

    def __init__(self, qualname: str, what: str) -> None:
        super().__init__(f"refused to load {qualname}: not part of {what}")
        self.qualname = qualname


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves a global only when ``allowed(module, name)`` is true.

    Args:
        file: a binary file object. allowed: the allow-list. what: what the file should hold, for the
            error (e.g. ``"a CIFAR batch"``). Other keyword arguments go to :class:`pickle.Unpickler`.
    """

    def __init__(self, file: IO[bytes], allowed: Allowed, what: str, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._allowed, self._what = allowed, what

    def find_class(self, module: str, name: str) -> Any:
        if not self._allowed(module, name):
            raise UnsafePickleError(f"{module}.{name}", self._what)
        return super().find_class(module, name)


def restricted_load(file: IO[bytes], allowed: Allowed, what: str, **kwargs: Any) -> Any:
    """Unpickle one object from ``file`` through :class:`RestrictedUnpickler`."""
    if not isinstance(file, io.BufferedIOBase):
        file = io.BufferedReader(file)  # type: ignore[arg-type]
    return RestrictedUnpickler(file, allowed, what, **kwargs).load()


def allow_names(*names: tuple[str, str]) -> Allowed:
    """An allow-list of exact ``(module, name)`` pairs."""
    admitted = frozenset(names)
    return lambda module, name: (module, name) in admitted
