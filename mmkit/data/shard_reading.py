"""Reading one shard front to back: the samples of a WebDataset tar, the lines of a text file.

Streamed training (:mod:`mmkit.data.streaming`), ``python -m mmkit.embed`` and the ``wds`` benchmark
reader all read tar shards through :func:`iter_samples`, and text through :func:`iter_lines`, so the
bounds of :mod:`mmkit.utils.bounded` hold for all of them: a member is read only when its header's
size (a sparse member's expanded size) and the sample's members before it stay within the per-sample
byte limit (``max_sample_bytes``); a sample over it comes out as a record with ``meta["error"]`` naming
the member and its size (a named skip downstream), its data never read. A text line is found without
holding more than the limit in memory (:func:`~mmkit.utils.bounded.line_spans`).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Iterator

from mmkit.data.formats import TOKENIZER_META, TOKENS_EXT, image_member, sample_problem, split_member_name
from mmkit.data.records import Record
from mmkit.utils.bounded import line_spans, member_problem, over_limit, sample_limit


def iter_samples(
    fileobj,
    shard_name: str,
    caption_field: str = "caption",
    require_text: bool = True,
    keep: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, Record]]:
    """``(position, record)`` of every sample of a WebDataset tar read front to back.

    A sample is a run of consecutive members sharing a key; ``position`` counts samples from 0.
    With ``keep``, the members of samples it rejects are not read. A sample without an image (or,
    with ``require_text``, without a caption), or whose members exceed the per-sample byte limit, comes
    out as a record with ``meta["error"]`` (a skipped record downstream). A shard that ends mid-way
    yields a last record whose ``meta["error"]`` says so and whose ``meta["truncated"]`` is True.
    """
    position = 0
    key: str | None = None
    members: dict[str, bytes | None] = {}
    sample = _SampleBytes()
    stream = _CountingReader(fileobj)

    def emit() -> tuple[int, Record]:
        return position, _record(shard_name, key, members, caption_field, require_text, sample.problem)

    try:
        with tarfile.open(fileobj=stream, mode="r|*") as tar:
            for m in tar:
                if not m.isfile() or m.name.rsplit("/", 1)[-1] == TOKENIZER_META:
                    continue
                k, ext = split_member_name(m.name)
                if k != key:
                    if key is not None:
                        if keep is None or keep(position):
                            yield emit()
                        position += 1
                    key, members = k, {}
                    sample.start()
                wanted = (keep is None or keep(position)) and sample.admits(m)
                members[ext] = tar.extractfile(m).read() if wanted else None
            end = tar.offset
    except (tarfile.TarError, EOFError, OSError) as e:
        yield _lost(shard_name, position, str(e))  # the sample being read is lost too
        return
    if key is not None and (keep is None or keep(position)):
        yield emit()
    # A tar ends with zero blocks; a file cut at a member boundary just stops, which tarfile's stream
    # mode takes for the end: without at least one block after the last member, samples were lost.
    if stream.count < end + tarfile.BLOCKSIZE:
        yield _lost(shard_name, position + (key is not None), "no end-of-archive marker")


class _SampleBytes:
    """The bytes one sample's members take, against the per-sample limit; the first member that would
    pass it is the sample's ``problem`` and neither it nor any later member of the sample is read."""

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self.total, self.problem, self.limit = 0, None, sample_limit()

    def admits(self, member: tarfile.TarInfo) -> bool:
        if self.problem is None:
            self.problem = member_problem(member, self.limit)
        if self.problem is None and self.total + member.size > self.limit:
            self.problem = over_limit(f"the sample's members up to {member.name}", self.total + member.size)
        self.total += member.size
        return self.problem is None


def _lost(shard_name: str, at: int, reason: str) -> tuple[int, Record]:
    return at, Record(
        key=f"{shard_name}:#{at}",
        meta={"error": f"shard {shard_name} is truncated or corrupt after {at} samples ({reason})", "truncated": True},
    )


class _CountingReader:
    """A read-only file wrapper that counts the bytes read through it."""

    def __init__(self, f) -> None:
        self.f, self.count = f, 0

    def read(self, size: int = -1) -> bytes:
        data = self.f.read(size)
        self.count += len(data)
        return data


def _record(
    shard: str,
    key: str,
    members: dict[str, bytes | None],
    caption_field: str,
    require_text: bool,
    too_large: str | None = None,
) -> Record:
    record = Record(key=f"{shard}:{key}")
    problem = too_large or sample_problem(members, require_text)  # the rule of indexed shards too
    if problem is not None:
        record.meta["error"] = problem
    image_ext = image_member({e: e for e in members})
    if image_ext is not None:
        record.image = members[image_ext]
    text_ext = next((e for e in (".txt", ".json") if e in members), None)
    if text_ext is not None:
        record.meta.update(text_bytes=members[text_ext], text_format=text_ext, caption_field=caption_field)
    if TOKENS_EXT in members:
        record.meta["tokens_bytes"] = members[TOKENS_EXT]
    known = {image_ext, text_ext, TOKENS_EXT}
    extra = {e: v for e, v in members.items() if e not in known and v is not None}
    if extra:  # other members (a CLIP_benchmark shard's .cls label, say), for readers that want them
        record.meta["extra"] = extra
    return record


def iter_lines(
    fileobj, file_name: str, text_field: str = "text", keep: Callable[[int], bool] | None = None, chunk: int = 1 << 20
) -> Iterator[tuple[int, Record]]:
    """``(position, record)`` of every non-blank line of a text file (``.jsonl``: ``text_field`` of
    each JSON object) read front to back; ``position`` counts non-blank lines from 0. Lines stay
    bytes here, so one that is not UTF-8 (or over the byte limit) is a skipped record downstream, not a
    failed file."""
    fmt = ".json" if file_name.lower().endswith((".jsonl", ".json")) else ".txt"
    for position, (start, size, line) in enumerate(line_spans(fileobj, chunk)):
        if keep is not None and not keep(position):
            continue
        key = f"{file_name}:{start}"  # the key TextLines gives it
        if line is None:
            yield position, Record(key=key, meta={"error": over_limit(f"line at byte {start}", size)})
            continue
        yield position, Record(key=key, meta={"text_bytes": line, "text_format": fmt, "caption_field": text_field})
