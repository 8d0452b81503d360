"""Write WebDataset-layout tar shards from an image folder or a manifest, or inspect a shard.

    python -m mmkit.data.write_shards --manifest pairs.jsonl --out 'shards/pairs-{:06d}.tar' --per-shard 1000
    python -m mmkit.data.write_shards --folder images/ --out 'shards/images-{:06d}.tar'
    python -m mmkit.data.write_shards --inspect shards/pairs-000000.tar

Each sample becomes ``<key>.<image extension>`` (bytes copied, not re-encoded) and, for
manifests, ``<key>.txt`` with the caption. Shards are written under a temporary name and
renamed when complete. Records that cannot be read are reported and left out.
"""

from __future__ import annotations

import argparse
import io
import os
import string
import sys
import tarfile
from pathlib import Path

from mmkit.data.formats import IMAGE_EXTENSIONS
from mmkit.data.sources import ImageFolder, Manifest, Source, TarShards, decode_image
from mmkit.utils.errors import InputError, run_cli


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """Append a regular file ``name`` holding ``data`` to ``tar``, with a fixed modification time (0),
    owner and mode, so that the same samples always make the same shard bytes. Every shard mmkit writes
    (this command, the built-in dataset, the token cache, the benchmark layouts) is written through it."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def check_out_pattern(out_pattern: str) -> None:
    """Check a shard name pattern before anything is written.

    The pattern is a ``str.format`` string whose only field is the shard number: ``{}`` or ``{0}``,
    optionally with a conversion and a format spec (``{:06d}``); the field may appear more than once
    (``{0}/pairs-{0}.tar``). Named or other numbered fields (``{shard}``, ``{1}``), attributes and
    indices (``{.real}``, ``{[0]}``), a spec an integer cannot take (``{:s}``) and a pattern that gives
    every shard the same name (no field, or only ``{{}}``) are refused: they would fail after the first
    record was read, or overwrite one shard again and again.

    Raises:
        ValueError: what is wrong with the pattern, and an example that works.
    """
    example = "e.g. 'out/pairs-{:06d}.tar'"
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(out_pattern) if name is not None]
    except ValueError as e:
        raise InputError(f"out pattern {out_pattern!r} is not a valid pattern ({e}); {example}") from None
    if not fields:
        raise InputError(f"out pattern {out_pattern!r} needs a '{{...}}' field for the shard number, {example}")
    unknown = [name for name, _ in fields if name not in ("", "0")]
    if unknown:
        raise InputError(
            f"out pattern {out_pattern!r} has unknown field {{{unknown[0]}}}: its only field is the shard number, "
            f"'{{}}' or '{{0}}' with an optional format such as '{{:06d}}', {example}"
        )
    try:
        first, second = out_pattern.format(0), out_pattern.format(1)
    except (ValueError, IndexError, KeyError, TypeError) as e:
        raise InputError(f"out pattern {out_pattern!r} cannot format a shard number ({e}); {example}") from None
    if first == second:
        raise InputError(f"out pattern {out_pattern!r} gives the same name {first!r} to every shard; {example}")


def _problem(record, verify: bool) -> str | None:
    """Why ``record`` cannot be written (no image; with ``verify`` an image that does not decode), or None."""
    if record.image is None:
        return record.meta.get("error", "no image")
    if verify:
        try:
            decode_image(record)
        except ValueError as e:
            return str(e)
    return None


def _add_record(tar: tarfile.TarFile, key: str, record) -> None:
    """The image (its own extension when it is an image one, else ``.png``), the caption and the label."""
    ext = Path(record.key).suffix.lower() or ".png"
    add_member(tar, key + (ext if ext in IMAGE_EXTENSIONS else ".png"), record.image)
    if record.text is not None:
        add_member(tar, key + ".txt", record.text.encode("utf-8"))
    if record.label is not None:
        add_member(tar, key + ".cls", str(record.label).encode())


def write_shards(
    source: Source, out_pattern: str, per_shard: int = 1000, verify: bool = True
) -> tuple[list[Path], list[str]]:
    """Copy ``source`` into tar shards named ``out_pattern.format(shard_index)``.

    Args:
        source: the records to copy.
        out_pattern: shard name pattern (see :func:`check_out_pattern`), e.g. ``'out/pairs-{:06d}.tar'``.
        per_shard: samples per shard (at least 1).
        verify: decode every image first and leave out those that cannot be decoded.

    Returns:
        ``(shard paths, problems)``: every record left out, with the reason.

    Raises:
        ValueError: a bad ``out_pattern`` or ``per_shard``, before anything is read or written.
    """
    if per_shard < 1:
        raise InputError(f"per_shard must be at least 1, got {per_shard}")
    check_out_pattern(out_pattern)
    paths: list[Path] = []
    problems: list[str] = []
    tar = None
    written = 0
    tmp: Path | None = None

    def close() -> None:
        if tar is not None:
            tar.close()
            os.replace(tmp, paths[-1])

    for i in range(len(source)):
        record = source[i]
        problem = _problem(record, verify)
        if problem:
            problems.append(f"{record.key}: {problem}")
            continue
        if tar is None or written == per_shard:
            close()
            path = Path(out_pattern.format(len(paths)))
            path.parent.mkdir(parents=True, exist_ok=True)
            paths.append(path)
            tmp = path.with_name(path.name + ".tmp")
            tar = tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT)
            written = 0
        _add_record(tar, f"{i:09d}", record)
        written += 1
    close()
    return paths, problems


def inspect(path: str | Path, show: int = 5) -> str:
    """A short report of a shard: sample count, member kinds, incomplete samples, the first captions."""
    src = TarShards(path, require_text=False, name=Path(path).name)
    lines = [f"{path}: {len(src)} samples, {len(src.incomplete)} incomplete"]
    for i in range(min(show, len(src))):
        rec = src[i]
        caption = ""
        if "text_bytes" in rec.meta:
            caption = rec.meta["text_bytes"].decode("utf-8", "replace")[:80]
        lines.append(f"  {rec.key}  image {len(rec.image or b'')} bytes  {caption!r}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--manifest", help="JSONL or CSV with image path and caption columns")
    group.add_argument("--folder", help="image folder (class subfolders with --labels)")
    group.add_argument("--inspect", help="print a summary of this shard")
    parser.add_argument("--out", help="output pattern with a format field, e.g. 'out/pairs-{:06d}.tar'")
    parser.add_argument("--per-shard", type=int, default=1000, help="samples per shard (at least 1)")
    parser.add_argument("--image-column", default="image")
    parser.add_argument("--caption-column", default="caption")
    parser.add_argument("--labels", action="store_true", help="first-level subfolders are classes")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read manifest image paths that are absolute or climb out of its folder",
    )
    args = parser.parse_args(argv)
    if args.inspect:
        print(inspect(args.inspect))
        return 0
    if not args.out:
        parser.error("--out is required when writing shards")
    if args.per_shard < 1:
        parser.error(f"--per-shard must be at least 1, got {args.per_shard}")
    try:
        check_out_pattern(args.out)
    except ValueError as e:
        parser.error(f"--out: {e}")
    if args.manifest:
        source: Source = Manifest(
            args.manifest, args.image_column, args.caption_column, allow_outside_root=args.allow_outside_root
        )
    else:
        source = ImageFolder(args.folder, labels=args.labels)
    paths, problems = write_shards(source, args.out, args.per_shard)
    for p in problems:
        print(f"left out {p}", file=sys.stderr)
    print(f"wrote {len(source) - len(problems)} samples into {len(paths)} shard(s); left out {len(problems)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
