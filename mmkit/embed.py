"""Write the embeddings of a data source: ``python -m mmkit.embed``.

    python -m mmkit.embed --checkpoint runs/demo/final --source 'data/pairs-{000000..000009}.tar' --out emb/
    python -m mmkit.embed --checkpoint CKPT --source photos/ --out emb/ --kind image
    python -m mmkit.embed --checkpoint CKPT --source 'hub/data/test-*.parquet' --text-column caption --out emb/

Sources: WebDataset tar shards (paths, brace patterns or ``s3://`` / ``gs://`` / ``http(s)://`` URLs,
read front to back), an image folder (recursively), a JSONL/CSV manifest (``image`` and ``caption``
columns), or parquet files (``--image-column``, ``--text-column``). ``--kind`` picks image embeddings,
text embeddings or both (default: whatever the source has).

Output, in ``--out``: ``meta.json`` (checkpoint, source, kind, widths, shard size), and per shard of
``--shard-size`` source samples ``image-00000.npy`` / ``text-00000.npy`` (``(n, P)`` L2-normalised
float32 rows, or float16 with ``--half``) and ``keys-00000.txt`` (one key per row, in source order),
plus ``skipped-00000.jsonl`` naming every sample left out (an unreadable image, an empty caption).
A shard is complete when its keys file exists (written last, atomically): a rerun of the same command
continues after the last complete shard; a rerun with another checkpoint, source or kind is an error
naming the difference. Embeddings are the model's contrastive ones (FLAVA, CLIP or SigLIP), the same
numbers :mod:`mmkit.eval` scores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmkit.utils.bounded import MAX_SAMPLE_BYTES, over_limit, parse_json, read_text_file, set_sample_limit
from mmkit.utils.errors import InputError, user_error_message
from mmkit.utils.run_lock import RunDirLock

KINDS = ("image", "text", "both")


Item = tuple[str, bytes | None, str | None, str | None]  # (key, image bytes, text, error)


def iter_records(
    source: str,
    image_column: str = "image",
    text_column: str | None = None,
    storage_options: dict | None = None,
    allow_outside_root: bool = False,
) -> Iterator[Item]:
    """``(key, image bytes, text, error)`` of every sample of ``source`` in order (see the module docstring);
    a manifest's image paths stay inside its folder unless ``allow_outside_root``."""
    from mmkit.data.sources import Manifest, decode_text

    path = Path(source)
    if path.is_dir():
        from mmkit.data.sources import ImageFolder

        folder = ImageFolder(path)
        for i in range(len(folder)):
            rec = folder[i]
            yield rec.key, rec.image, None, None
        return
    if source.endswith((".jsonl", ".csv", ".json")):
        manifest = Manifest(path, image_column, text_column or "caption", allow_outside_root=allow_outside_root)
        for i in range(len(manifest)):
            rec = manifest[i]
            text, error = None, rec.meta.get("error")
            try:
                text = decode_text(rec)
            except ValueError as e:
                error = error or f"caption: {e}"
            yield rec.key, rec.image, text, error
        return
    if ".parquet" in source:
        yield from _parquet_records(source, image_column, text_column)
        return
    from mmkit.data.streaming import iter_samples, open_shard, resolve_shards

    for shard in resolve_shards([source], storage_options):
        with open_shard(shard.url, storage_options) as f:
            for _, rec in iter_samples(f, shard.name, require_text=False):
                text, error = None, rec.meta.get("error")
                if "text_bytes" in rec.meta:
                    try:
                        text = decode_text(rec)
                    except ValueError as e:
                        error = error or f"caption: {e}"
                yield rec.key, rec.image, text, error


def _parquet_records(source: str, image_column: str, text_column: str | None):
    import glob

    import pyarrow.parquet as pq

    from mmkit.eval.benchmarks.parquet import column_problem

    files = sorted(glob.glob(source)) or [source]
    for file in files:
        try:
            pf = pq.ParquetFile(file)
        except Exception as e:  # pyarrow's ArrowInvalid and friends: not a parquet file
            raise InputError(f"{file} is not a parquet file ({type(e).__name__}: {e})") from None
        columns = [c for c in (image_column, text_column) if c]
        for column, role in zip(columns, ("image", "text"), strict=False):
            problem = column_problem(pf.schema_arrow, column, role)
            if problem:
                raise InputError(f"{file} {problem}")
        row = 0
        for group in range(pf.num_row_groups):
            table = pf.read_row_group(group, columns=columns).to_pydict()
            for j in range(len(table[image_column])):
                image = table[image_column][j]
                data = image.get("bytes") if isinstance(image, dict) else image
                text = table[text_column][j] if text_column else None
                text = (text[0] if text else None) if isinstance(text, list) else text
                error = "no image bytes" if data is None else over_limit("the image", len(data))
                yield f"{Path(file).name}:{row}", data if error is None else None, text, error
                row += 1


class _Items(IterableDataset):
    """This loader worker's share of the source from ``start`` on, decoded: ``(position, key, pixels, text, error)``."""

    def __init__(self, records, start: int, transform, want_image: bool) -> None:
        self.records, self.start, self.transform, self.want_image = records, start, transform, want_image

    def __iter__(self):
        from mmkit.data.sources import Record, decode_image

        info = get_worker_info()
        worker, count = (info.id, info.num_workers) if info is not None else (0, 1)
        for position, (key, image, text, error) in enumerate(self.records()):
            if position < self.start or position % count != worker:
                continue
            pixels = None
            if self.want_image and error is None:
                try:
                    pixels = self.transform(decode_image(Record(key=key, image=image)))["image"]
                except ValueError as e:
                    error = str(e)
            yield position, key, pixels, text, error


def _save(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


class ShardWriter:
    """Collects rows by source position and writes each shard once all its positions are in, in order."""

    def __init__(self, out: Path, shard_size: int, first_shard: int, half: bool) -> None:
        self.out, self.size, self.next, self.half = out, shard_size, first_shard, half
        self.rows: dict[int, tuple[str, dict[str, np.ndarray] | None, str | None]] = {}
        self.written = 0

    def add(self, position: int, key: str, vectors: dict[str, np.ndarray] | None, error: str | None) -> None:
        self.rows[position] = (key, vectors, error)
        while all(p in self.rows for p in range(self.next * self.size, (self.next + 1) * self.size)):
            self.flush(self.next)

    def flush(self, shard: int) -> None:
        lo, hi = shard * self.size, (shard + 1) * self.size
        rows = [self.rows.pop(p) for p in range(lo, hi) if p in self.rows]
        good = [(k, v) for k, v, e in rows if e is None]
        for name in {n for _, v in good for n in v}:
            stacked = np.stack([v[name] for _, v in good]).astype(np.float16 if self.half else np.float32)
            _save(self.out / f"{name}-{shard:05d}.npy", lambda t, a=stacked: np.save(open(t, "wb"), a))
        skipped = "".join(json.dumps({"key": k, "reason": e}) + "\n" for k, _, e in rows if e is not None)
        _save(self.out / f"skipped-{shard:05d}.jsonl", lambda t: t.write_text(skipped))
        _save(self.out / f"keys-{shard:05d}.txt", lambda t: t.write_text("".join(f"{k}\n" for k, _ in good)))
        self.next, self.written = shard + 1, self.written + len(good)


def embed(args: argparse.Namespace) -> dict[str, Any]:
    """Run ``python -m mmkit.embed`` with parsed ``args``; returns the ``meta.json`` record.

    Raises:
        RunDirInUseError: another ``mmkit.embed`` is writing to ``args.out``.
        ValueError: an empty source, no tokenizer for text, or ``args.out`` holding another run's output.
    """
    from mmkit.eval.features import model_digest
    from mmkit.eval.loading import eval_transform, load_encoders

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    model, tokenizer = load_encoders(
        args.checkpoint, tokenizer=args.tokenizer, device=device, log=lambda m: print(m, file=sys.stderr)
    )
    transform, transform_id = eval_transform(model, args.checkpoint)
    options = parse_json(args.storage_options, "--storage-options") if args.storage_options else None
    if options is not None and not isinstance(options, dict):
        raise InputError(f"--storage-options must be a JSON object, got {args.storage_options[:80]!r}")

    def records():
        return iter_records(args.source, args.image_column, args.text_column, options, args.allow_outside_root)

    first = next(iter(records()), None)
    if first is None:
        raise InputError(f"source {args.source} holds no samples")
    kind = args.kind or (
        "both" if first[2] is not None and first[1] is not None else ("text" if first[1] is None else "image")
    )
    if kind in ("text", "both") and tokenizer is None:
        raise InputError("text embeddings need a tokenizer: pass --tokenizer or use a checkpoint exported with one")
    out = Path(args.out)
    meta = {
        "checkpoint": str(args.checkpoint),
        "model_digest": model_digest(model),
        "source": args.source,
        "kind": kind,
        "shard_size": args.shard_size,
        "transform": transform_id,
        "dtype": "float16" if args.half else "float32",
    }
    hold = RunDirLock.acquire(out)  # one writer per output folder: a second copy stops naming the first
    try:
        done = _resume_point(out, meta)
        items = _Items(records, done * args.shard_size, transform, kind in ("image", "both"))
        return _write_embeddings(out, meta, items, done, args, (model, tokenizer, device))
    finally:
        hold.release()


def _resume_point(out: Path, meta: dict[str, Any]) -> int:
    """The number of shards already written to ``out`` by the same run (``meta`` compared with its
    ``meta.json``; written there on a fresh start)."""
    saved = out / "meta.json"
    if saved.exists():
        old = parse_json(read_text_file(saved, "embeddings record"), str(saved))
        if not isinstance(old, dict):
            raise InputError(f"{saved} is not an mmkit.embed record (a JSON object): use another --out")
        diff = [f"{k}: {old.get(k)!r} -> {meta[k]!r}" for k in meta if old.get(k) != meta[k]]
        if diff:
            raise InputError(f"{out} holds embeddings of another run ({'; '.join(diff)}): use another --out")
    else:
        _save(saved, lambda t: t.write_text(json.dumps(meta, indent=2)))
    done = 0
    while (out / f"keys-{done:05d}.txt").is_file():
        done += 1
    return done


def _embed_items(items: list, encoders: tuple, want_image: bool, want_text: bool) -> tuple[dict, dict]:
    """``({position: {"image"|"text": (P,) array}}, {position: error or None})`` of one loader batch."""
    model, tokenizer, device = encoders
    vectors: dict[int, dict[str, np.ndarray]] = {p: {} for p, *_ in items}
    errors = {p: e for p, _, _, _, e in items}
    if want_text:
        for p, _, _, text, e in items:
            if e is None and not (text or "").strip():
                errors[p] = "no caption"
    if want_image:
        ok = [(p, px) for p, _, px, _, _ in items if errors[p] is None]
        if ok:
            pixels = torch.stack([px for _, px in ok]).to(device)
            emb = F.normalize(model.embed_image(model.encode_image(pixels)).float(), dim=-1).cpu().numpy()
            for (p, _), e in zip(ok, emb, strict=True):
                vectors[p]["image"] = e
    if want_text:
        ok = [(p, t) for p, _, _, t, _ in items if errors[p] is None]
        if ok:
            from mmkit.data import pad_sequences

            ids, mask = pad_sequences([tokenizer.encode(t).input_ids for _, t in ok], tokenizer.pad_token_id)
            emb = model.embed_text(model.encode_text(ids.to(device), mask.to(device)))
            for (p, _), e in zip(ok, F.normalize(emb.float(), dim=-1).cpu().numpy(), strict=True):
                vectors[p]["text"] = e
    return vectors, errors


def _write_embeddings(
    out: Path, meta: dict[str, Any], items: _Items, done: int, args: argparse.Namespace, encoders: tuple
) -> dict[str, Any]:
    """Embed ``items`` from shard ``done`` on, writing each shard as it completes; returns the meta."""
    from tqdm import tqdm

    kind = meta["kind"]
    writer = ShardWriter(out, args.shard_size, done, args.half)
    loader = DataLoader(items, batch_size=args.batch_size, num_workers=args.num_workers, collate_fn=lambda batch: batch)
    start = seen = done * args.shard_size
    bar = tqdm(desc="embed", initial=start, unit="sample", file=sys.stderr, dynamic_ncols=True)
    with torch.no_grad():
        for batch in loader:
            vectors, errors = _embed_items(batch, encoders, kind in ("image", "both"), kind in ("text", "both"))
            for p, key, *_ in batch:
                writer.add(p, key, vectors[p] if errors[p] is None else None, errors[p])
            seen += len(batch)
            bar.update(len(batch))
    bar.close()
    last = (seen - 1) // args.shard_size if seen else -1
    for shard in range(writer.next, last + 1):
        writer.flush(shard)
    meta["samples"] = seen
    meta["shards"] = last + 1
    _save(out / "meta.json", lambda t: t.write_text(json.dumps(meta, indent=2)))
    print(f"wrote {last + 1} shard(s) of {kind} embeddings for {seen:,} samples to {out}", file=sys.stderr)
    return meta


def read_embeddings(out: str | Path, kind: str = "image") -> tuple[list[str], np.ndarray]:
    """Every key and ``kind`` embedding row written to ``out``, in source order."""
    out = Path(out)
    keys, arrays = [], []
    shard = 0
    while (out / f"keys-{shard:05d}.txt").is_file():
        shard_keys = (out / f"keys-{shard:05d}.txt").read_text().splitlines()
        if shard_keys:
            arrays.append(np.load(out / f"{kind}-{shard:05d}.npy"))
        keys += shard_keys
        shard += 1
    return keys, np.concatenate(arrays) if arrays else np.zeros((0, 0), np.float32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmkit.embed", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", help="an mmkit export, transformers directory or hub name (default: random tiny model)"
    )
    parser.add_argument("--source", required=True, help="tar shards, an image folder, a manifest or parquet files")
    parser.add_argument("--out", required=True, help="output folder (resumable)")
    parser.add_argument("--kind", choices=KINDS, help="image, text or both (default: what the source has)")
    parser.add_argument("--tokenizer", help="default: the checkpoint's")
    parser.add_argument("--shard-size", type=int, default=10000, help="source samples per output shard")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=2, help="image-decoding processes")
    parser.add_argument("--image-column", default="image", help="manifest / parquet image column")
    parser.add_argument("--text-column", help="manifest / parquet text column (manifest default: caption)")
    parser.add_argument("--storage-options", help="fsspec options for remote shards, as JSON")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--half", action="store_true", help="store float16")
    parser.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="read manifest image paths that are absolute or climb out of its folder",
    )
    parser.add_argument(
        "--max-sample-bytes",
        type=int,
        default=MAX_SAMPLE_BYTES,
        help="largest sample (image, tar member) read; larger ones are named skips",
    )
    args = parser.parse_args(argv)
    if args.shard_size < 1 or args.batch_size < 1 or args.max_sample_bytes < 1:
        parser.error("--shard-size, --batch-size and --max-sample-bytes must be >= 1")
    set_sample_limit(args.max_sample_bytes)
    try:
        embed(args)
    except Exception as e:  # a user error, here or in a loader worker, is one line; anything else a traceback
        message = user_error_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
