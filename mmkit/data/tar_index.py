"""Index mode's view of a tar shard: every sample's members found from the headers, before any is read.

:func:`scan_shard` walks a shard's headers once (:class:`~mmkit.data.sources.TarShards` calls it for
every shard at start) and :class:`CompactIndex` keeps where each sample's members are in flat integer
arrays. The bounds of :mod:`mmkit.utils.bounded` apply here, from the headers alone: a member over the
per-sample byte limit, or a sparse one (its stored bytes are not its content, so it cannot be read by
offset; a sparse member may also declare gigabytes of holes in a file of kilobytes), makes its sample a
named skip; a shard that is not a regular file (a FIFO would block the scan forever) is an error.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from mmkit.data.formats import TOKENIZER_META, split_member_name
from mmkit.utils.bounded import member_problem, parse_json, read_member, regular_file
from mmkit.utils.errors import InputError

#: the caption members, by their code in the index
TEXT_EXTS = (".txt", ".json")
#: the largest ``__tokenizer__.json`` read (it holds a few fields)
META_BYTES = 1 << 20

Groups = list[tuple[str, dict[str, tarfile.TarInfo]]]


def _member_problem(m: tarfile.TarInfo) -> str | None:
    """Why index mode cannot read a file member: over the byte limit, or sparse (not readable by offset)."""
    problem = member_problem(m)
    if problem is None and m.issparse():
        problem = f"sparse member {m.name}: index mode reads plain members only (rewrite the shard without holes)"
    return problem


def scan_shard(path: Path) -> tuple[Groups, dict[int, str], dict | None, str | None]:
    """One shard's samples in file order (``(key, {extension: member})``: a sample is a run of
    consecutive members sharing a key, the rule of streamed reading too), why some cannot be used
    (``{sample index: reason}``: a member over the byte limit or sparse), its ``__tokenizer__.json``
    record, and where and how it ends early (None when whole).

    Raises:
        InputError: not a regular file, or not a readable tar.
    """
    meta = None
    groups: Groups = []
    problems: dict[int, str] = {}
    size = regular_file(path, "shard").stat().st_size
    cut: str | None = None
    try:
        with tarfile.open(path, "r:") as tar:
            try:
                for m in tar:
                    problem = _member_problem(m) if m.isfile() else None
                    if problem is None and m.offset_data + m.size > size:
                        cut = f"member {m.name} needs {m.offset_data + m.size} bytes, the file has {size}"
                        break
                    if not m.isfile():
                        continue
                    if m.name.rsplit("/", 1)[-1] == TOKENIZER_META:
                        meta = parse_json(read_member(tar, m, META_BYTES), f"{path}: {m.name}")
                        continue
                    key, ext = split_member_name(m.name)
                    if not groups or groups[-1][0] != key:
                        groups.append((key, {}))
                    groups[-1][1][ext] = m
                    if problem is not None:
                        problems.setdefault(len(groups) - 1, problem)
                else:
                    cut = _tar_end_problem(tar, size)
            except tarfile.ReadError as e:  # "unexpected end of data": cut after a member's data
                cut = f"{e} after byte {tar.offset}"
    except tarfile.TarError as e:
        raise InputError(f"{path} is not a readable tar shard: {e}") from e
    return groups, problems, meta, cut


def _tar_end_problem(tar: tarfile.TarFile, size: int) -> str | None:
    """Why a tar whose member list ended without an error is nevertheless cut short, or None.

    ``tarfile`` ends the member list quietly at a header cut in the middle or at the end of the file;
    a complete archive has a zero block (the end-of-archive marker) there instead.
    """
    tar.fileobj.seek(tar.offset)
    block = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) == tarfile.BLOCKSIZE and block.count(0) == tarfile.BLOCKSIZE:
        return None
    if len(block) < tarfile.BLOCKSIZE:
        return f"the file ends at byte {size} without the end-of-archive blocks"
    return f"unreadable member header at byte {tar.offset}"


class CompactIndex:
    """Where each sample's members are, in flat integer arrays (about 90 bytes a sample with its key,
    instead of ~430 for a tuple of tuples): shard id, image (offset, size), text (offset, size) and
    extension code, token ids (offset, size; -1 when absent), and the keys in one byte string."""

    def __init__(self) -> None:
        import array

        self._shard, self._ints, self._ext = array.array("i"), array.array("q"), array.array("b")
        self._keys, self._key_ends = bytearray(), array.array("q")

    def append(self, shard: int, key: str, image, text, tokens) -> None:
        self._shard.append(shard)
        t_off, t_size = (text[0].offset_data, text[0].size) if text is not None else (-1, -1)
        k_off, k_size = (tokens.offset_data, tokens.size) if tokens is not None else (-1, -1)
        i_off, i_size = (image.offset_data, image.size) if image is not None else (-1, -1)  # None: unusable
        self._ints.extend((i_off, i_size, t_off, t_size, k_off, k_size))
        self._ext.append(TEXT_EXTS.index(text[1]) if text is not None else -1)
        self._keys += key.encode()
        self._key_ends.append(len(self._keys))

    def freeze(self) -> None:
        import numpy as np

        ints = np.frombuffer(self._ints, dtype=np.int64).reshape(-1, 6).copy()
        self.shard = np.frombuffer(self._shard, dtype=np.int32).copy()
        self.image, self.text, self.tokens = ints[:, 0:2], ints[:, 2:4], ints[:, 4:6]
        self.text_ext = np.frombuffer(self._ext, dtype=np.int8).copy()
        self.keys, self.key_ends = bytes(self._keys), np.frombuffer(self._key_ends, dtype=np.int64).copy()
        del self._shard, self._ints, self._ext, self._keys, self._key_ends

    def key(self, i: int) -> str:
        start = int(self.key_ends[i - 1]) if i > 0 else 0
        return self.keys[start : int(self.key_ends[i])].decode()

    def all_have_tokens(self) -> bool:
        """Every usable sample (one with an image) has cached token ids."""
        usable = self.image[:, 1] >= 0
        return bool((self.tokens[usable, 1] >= 0).all())

    def __len__(self) -> int:
        return len(self.shard) if hasattr(self, "shard") else len(self._shard)
