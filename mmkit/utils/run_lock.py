"""One writer per run directory.

Two copies of one training command on the same ``run_dir`` (a requeued job whose first copy is still
alive, a command typed twice) would both write checkpoints, metrics and exports into it. The first
process of a run (rank 0) holds an exclusive ``flock`` on ``<run_dir>/.mmkit-run.lock`` for as long as
it runs, with the holder's host, pid and start time written in the file. A second run asking for the
same directory stops at once with :class:`RunDirInUseError` naming the holder. The kernel releases a
``flock`` when its process dies, however it dies, so a hold left by a killed run is simply taken
over, with a warning naming the run that left it. The training recipes hold their ``run_dir``
(:func:`mmkit.train.start_run`), ``python -m mmkit.embed`` its ``--out`` and the evaluation suite its
``out=``.

The lock file is opened without following a symlink and must be a regular file with one link: a
``.mmkit-run.lock`` planted as a symlink (or a hard link) to another file is refused in one line, so
the run never empties or writes a file it was pointed at.

Limits: ``flock`` is honoured by local file systems and by NFS (Linux emulates it with POSIX locks
there); on a file system without locking, two runs on two hosts are not detected.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import logging
import os
import socket
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mmkit.utils.errors import StateError

logger = logging.getLogger(__name__)

LOCK_NAME = ".mmkit-run.lock"


class RunDirInUseError(StateError):
    """Another live run holds the run directory (the message names its host, pid and start time)."""


class RunDirLock:
    """The hold on one run directory; :meth:`acquire` takes it, :meth:`release` gives it back."""

    def __init__(self, run_dir: Path, handle: IO[str]) -> None:
        self.run_dir, self._handle = run_dir, handle

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunDirLock:
        """Hold ``run_dir`` (created if missing) for this process.

        Raises:
            RunDirInUseError: a live process holds it.
            StateError: the lock file is a symlink, a hard link or not a regular file.
        """
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open_lock_file(run_dir / LOCK_NAME, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(_read(handle))
            handle.close()
            raise RunDirInUseError(
                f"run directory {run_dir} is in use by {holder}: wait for that run to finish, stop it, "
                "or give this one another run_dir"
            ) from None
        previous = _read(handle)
        if previous:
            logger.warning(
                "taking over run directory %s from %s, which is no longer running", run_dir, _describe(previous)
            )
        handle.seek(0)
        handle.truncate()
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        handle.write(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "started": started}))
        handle.flush()
        os.fsync(handle.fileno())
        return cls(run_dir, handle)

    def release(self) -> None:
        """Give the directory back (idempotent); the holder record is cleared first."""
        if self._handle.closed:
            return
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.flush()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


def open_lock_file(path: Path, mode: str) -> IO[str]:
    """The lock file at ``path`` (created if missing) opened in text ``mode`` (``"a+"`` or ``"a"``),
    never through a symlink, and only when it is a regular file with one link.

    Raises:
        StateError: a symlink, another kind of file or a hard link: naming it, and the fix.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as e:
        if os.path.islink(path):
            raise StateError(
                f"{path} is a symlink (to {os.readlink(path)}): mmkit does not write a lock through a link; "
                "remove it and run again"
            ) from None
        raise StateError(f"cannot open the lock file {path}: {e.strerror or e}") from None
    st = os.fstat(fd)
    problem = None if stat.S_ISREG(st.st_mode) else "not a regular file"
    problem = problem or (f"a hard link ({st.st_nlink} names for one file)" if st.st_nlink != 1 else None)
    if problem:
        os.close(fd)
        raise StateError(
            f"{path} is {problem}: mmkit writes its lock only to a file of its own; remove it and run again"
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, mode, encoding="utf-8")


def _read(handle: IO[str]) -> dict | None:
    handle.seek(0)
    text = handle.read().strip()
    if not text:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        return {"unreadable": text[:80]}
    return info if isinstance(info, dict) else {"unreadable": text[:80]}


def _describe(info: dict | None) -> str:
    if not info:
        return "another process (it has not yet written its name)"
    if "unreadable" in info:
        return f"another process (lock file reads {info['unreadable']!r})"
    return f"pid {info.get('pid')} on host {info.get('host')} (started {info.get('started')})"


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (``flock``, waiting for it), held for the ``with`` block
    and released if the process dies: for work that one of several processes does while the others
    wait (the built-in dataset, the demo's tokenizer)."""
    with open_lock_file(Path(path), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
