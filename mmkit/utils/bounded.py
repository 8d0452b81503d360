"""The one bounded reader: every file mmkit reads for a sample goes through here.

A sample's bytes come from a tar member, an image file, a file an annotation or manifest names, or an
IDX array. Each is checked *before* it is read:

* **Size.** At most :data:`MAX_SAMPLE_BYTES` (64 MiB, the ``max_sample_bytes`` key of the recipes), from
  the tar header (a sparse member's expanded size included: a 10 KB tar may declare 8 GB of holes) or
  ``fstat`` of the opened file, and again while reading (a file that grows is cut at the limit).
* **Kind.** Only regular files are read. A FIFO would block forever, ``/dev/zero`` never ends, a socket
  or a device is not data: each is refused without a read (the file is opened non-blocking, then
  ``fstat`` decides).

A refusal is an :class:`UnreadableSample`, which is both a ``ValueError`` and an ``OSError``, so every
reader that makes an unreadable image a named skip within ``max_bad_fraction`` makes this one too.

:func:`parse_json` is the one JSON parser of annotation files: a 5000-digit integer (Python refuses to
convert it) or a 100,000-deep array (the decoder's recursion limit) is one :class:`~mmkit.utils.InputError`
naming the file, never a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from mmkit.utils.errors import InputError

#: The default per-sample byte limit (64 MiB): far above any image or caption a vision-language model is
#: trained or evaluated on, far below what would exhaust a loader worker's memory. Read at each call, so
#: assigning it (the recipes' ``max_sample_bytes``) changes the limit of every reader in this process and
#: in the data-loader workers it forks afterwards.
MAX_SAMPLE_BYTES = 64 << 20

_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symlink",
}


class UnreadableSample(InputError, OSError):
    """A sample file that is refused before it is read: over the byte limit, or not a regular file."""

    def __str__(self) -> str:  # OSError(msg) prints msg; keep it so with errno-less args
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


def sample_limit(limit: int | None = None) -> int:
    """``limit``, or :data:`MAX_SAMPLE_BYTES` as it is now."""
    return MAX_SAMPLE_BYTES if limit is None else int(limit)


def set_sample_limit(limit: int) -> None:
    """Set :data:`MAX_SAMPLE_BYTES` (a recipe's ``max_sample_bytes``) for this process and the workers it forks."""
    global MAX_SAMPLE_BYTES
    MAX_SAMPLE_BYTES = int(limit)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def over_limit(what: str, size: int, limit: int | None = None) -> str | None:
    """Why ``what`` of ``size`` bytes is not read (over the per-sample limit), or None."""
    limit = sample_limit(limit)
    if size <= limit:
        return None
    return (
        f"{what} is {_mib(size)}, over the per-sample limit of {_mib(limit)}: refused before reading "
        "(raise max_sample_bytes if it is real)"
    )


def member_problem(member: tarfile.TarInfo, limit: int | None = None) -> str | None:
    """Why a tar member is not read, from its header alone: its size (a sparse member's expanded size)
    over the limit, or None."""
    kind = "sparse member" if member.issparse() else "member"
    return over_limit(f"{kind} {member.name}", member.size, limit)


def kind_of(mode: int) -> str | None:
    """What a file of this ``st_mode`` is when it is not a regular file (``"a FIFO (named pipe)"``), else None."""
    if stat.S_ISREG(mode):
        return None
    return _KINDS.get(stat.S_IFMT(mode), "not a regular file")


def read_sample(path: str | os.PathLike[str], limit: int | None = None) -> bytes:
    """The bytes of one sample file, bounded (see the module docstring).

    Raises:
        UnreadableSample: not a regular file, or over ``limit`` (default :data:`MAX_SAMPLE_BYTES`).
        OSError: the file cannot be opened (missing, no permission).
    """
    limit = sample_limit(limit)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        kind = kind_of(st.st_mode)
        if kind is not None:
            raise UnreadableSample(f"{path} is {kind}: only regular files are read")
        problem = over_limit(str(path), st.st_size, limit)
        if problem:
            raise UnreadableSample(problem)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnreadableSample(over_limit(f"{path} (grew while read)", len(data), limit) or "")
    return data


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, limit: int | None = None) -> bytes:
    """A tar member's bytes, refused from its header when over ``limit`` (:func:`member_problem`).

    Raises:
        UnreadableSample: over the limit, or not a file member.
    """
    problem = member_problem(member, limit)
    if problem:
        raise UnreadableSample(problem)
    f = tar.extractfile(member)
    if f is None:
        raise UnreadableSample(f"member {member.name} is not a file")
    return f.read()


def line_spans(fileobj: IO[bytes], chunk: int = 1 << 20) -> Iterator[tuple[int, int, bytes | None]]:
    """``(offset, size, line)`` of every non-blank line of a file read front to back (``\\n``-separated,
    the newline not counted); ``line`` is None for a line over the per-sample byte limit, which is
    measured but never held (memory stays within the limit and one chunk)."""
    limit = sample_limit()
    start, size, kept, long = 0, 0, bytearray(), False  # the line being read: where, how long, its bytes so far
    while True:
        data = fileobj.read(chunk)
        pieces = data.split(b"\n") if data else [b""]
        for i, piece in enumerate(pieces):
            size += len(piece)
            long = long or size > limit
            if not long:
                kept += piece
            if i == len(pieces) - 1 and data:
                if long:
                    kept.clear()
                continue  # the line goes on in the next chunk
            if long:
                yield start, size, None
            elif kept.strip():
                yield start, size, bytes(kept)
            start, size, long = start + size + 1, 0, False
            kept.clear()
        if not data:
            return


def regular_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` when it is a regular file (following symlinks); else one error saying what it is.

    Raises:
        FileNotFoundError: missing. InputError: a FIFO, a device, a socket or a folder.
    """
    from mmkit.utils.errors import MissingError

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MissingError(f"{what} {path} does not exist") from None
    kind = kind_of(st.st_mode)
    if kind is not None:
        raise InputError(f"{what} {path} is {kind}, not a file")
    return path


def read_text_file(path: str | os.PathLike[str], what: str = "file") -> str:
    """A UTF-8 text file's content (a byte-order mark dropped) when it is a regular file.

    Raises:
        FileNotFoundError: missing. InputError: not a regular file, or not UTF-8 (naming the line and byte).
    """
    path = regular_file(path, what)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        if kind_of(os.fstat(fd).st_mode) is not None:  # replaced between the stat and the open
            raise InputError(f"{what} {path} is not a regular file")
        data = f.read()
    start = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        at = start + e.start
        line = data.count(b"\n", 0, at) + 1
        raise InputError(
            f"{path}:{line} is not UTF-8 ({e.reason} at byte {at}): save the file as UTF-8 "
            "(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def parse_json(text: str | bytes, where: str) -> Any:
    """``json.loads(text)``; anything it cannot parse (bad syntax, an integer of more digits than Python
    converts, nesting past the recursion limit) is one error naming ``where``.

    Raises:
        InputError: ``"<where> is not valid JSON (...)"``.
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{where} is not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(f"{where} is not valid JSON (nested too deeply to read)") from None
    except (ValueError, UnicodeDecodeError) as e:  # "Exceeds the limit (4300 digits) for integer string conversion"
        raise InputError(f"{where} is not valid JSON ({str(e).split(';')[0]})") from None
