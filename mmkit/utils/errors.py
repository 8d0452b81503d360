"""mmkit's exception types: what a user can fix, told apart from what is a bug.

Every error mmkit raises about something a user handed it (a config value, a shape, a data file, a
checkpoint, a run directory) is an :class:`MMKitError`. The command-line entry points print such an
error as one ``error: ...`` line and exit with status 2; any other exception is a bug (in mmkit or in
the user's own code) and prints its traceback.

Each type also derives from the builtin a caller would catch without knowing mmkit, so that
``except ValueError`` / ``except FileNotFoundError`` / ``except KeyError`` keep working:

=====================  ======================  ==============================================
type                   also a                  for
=====================  ======================  ==============================================
:class:`InputError`    ``ValueError``          a bad value: config, shape, option, data content
:class:`MissingError`  ``FileNotFoundError``   a named file, folder or shard that is not there
:class:`DataKeyError`  ``KeyError``            a column, field or token the data does not have
:class:`StateError`    ``RuntimeError``        a run that cannot go on from where it is
=====================  ======================  ==============================================

The more specific errors derive from these: ``ConfigError`` and ``CheckpointMismatchError`` are
input errors, ``CheckpointError``, ``DataQualityError``, ``NonFiniteError`` and
``RunDirInUseError`` state errors.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable


class MMKitError(Exception):
    """Something the user can fix; the message names the problem and the fix."""


class InputError(MMKitError, ValueError):
    """A value the user gave (a config key, an argument, a tensor's shape, a file's content) is wrong."""


class MissingError(MMKitError, FileNotFoundError):
    """A file, folder or shard the user named does not exist."""

    def __str__(self) -> str:  # FileNotFoundError(msg) prints msg; keep it so with errno-less args
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class DataKeyError(MMKitError, KeyError):
    """A column, field or vocabulary entry the data does not have (``str()`` is the message, unquoted)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class StateError(MMKitError, RuntimeError):
    """A run, checkpoint or data stream is in a state the operation cannot go on from."""


#: What the command-line entry points print as one line (everything else shows its traceback): mmkit's
#: own errors, and the operating system's word that a path the user named is missing, a folder, not a
#: folder or not readable.
USER_ERRORS: tuple[type[BaseException], ...] = (
    MMKitError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
)


def debug_requested(flag: bool = False) -> bool:
    """``True`` when ``flag`` (a ``--debug`` option) is set or ``MMKIT_DEBUG`` is set to anything but ``0``."""
    return flag or os.environ.get("MMKIT_DEBUG", "") not in ("", "0")


_WORKER = re.compile(r"^Caught (\w+) in DataLoader worker process \d+\.\nOriginal Traceback", re.S)


def worker_error(e: BaseException) -> tuple[type[BaseException], str] | None:
    """The type and message of the exception a DataLoader worker raised, when ``e`` is torch's re-raise of
    it in the main process (``Caught InputError in DataLoader worker process 0. Original Traceback ...``,
    as the original type or, when that cannot be rebuilt from one string, as a ``RuntimeError``); else None.

    The original exception is the last entry of the formatted traceback torch carries: ``module.Type:
    message`` after the last frame. Its type is looked up among the modules already imported, never imported.
    """
    text = str(e.args[0]) if e.args and isinstance(e.args[0], str) else ""
    if not _WORKER.match(text):
        return None
    lines = text.rstrip("\n").split("\n")
    last = max((i for i, line in enumerate(lines) if line.startswith('  File "')), default=None)
    if last is None:
        return None
    at = last + 1
    while at < len(lines) and lines[at].startswith("    "):  # the frame's source line and its ^^^ markers
        at += 1
    qualified, _, message = "\n".join(lines[at:]).partition(": ")
    module, _, name = qualified.rpartition(".")
    found = getattr(sys.modules.get(module or "builtins"), name, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        return None
    return found, message


def user_error_message(e: BaseException) -> str | None:
    """What the command line prints for ``e`` when it is a user error (:data:`USER_ERRORS`), raised here or
    in a DataLoader worker (torch's re-raise unwrapped to the worker's own message): one line. None: a bug."""
    inner = worker_error(e)
    if inner is not None:
        kind, message = inner
        if not issubclass(kind, USER_ERRORS):
            return None
        if issubclass(kind, KeyError) and len(message) > 1 and message[0] == message[-1] == "'":
            message = message[1:-1]  # KeyError's str() quotes its message
        return " ".join(message.split()) or kind.__name__
    if isinstance(e, USER_ERRORS):
        return " ".join(str(e).split()) or type(e).__name__
    return None


def run_cli(main: Callable[[], int], debug: bool = False) -> int:
    """Run a command's ``main``; a user error becomes one ``error: ...`` line on stderr and exit status 2.

    A user error raised in a DataLoader worker prints the same line as in the main process
    (:func:`user_error_message`). Anything else propagates with its traceback, and so does a user error
    when ``debug`` (or ``MMKIT_DEBUG=1``) asks for it. A multi-line message is folded onto the one line.
    """
    try:
        return main()
    except Exception as e:
        message = user_error_message(e)
        if message is None or debug_requested(debug):
            raise
        print(f"error: {message} (run with --debug or MMKIT_DEBUG=1 for the traceback)", file=sys.stderr, flush=True)
        return 2
