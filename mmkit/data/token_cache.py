"""Pay for image tokenization once: write each sample's dVAE token ids into its shard.

    python -m mmkit.data.token_cache --shards 'data/pairs-{000000..000099}.tar' \\
        --tokenizer runs/dvae-shapes/final --out data/pairs-tokens/

Each output shard holds every member of its input shard, in order, plus ``<key>.tokens.npy`` (the
``(h, w)`` int16/int32 token grid of the sample's image, centre crop, at the tokenizer's input
size) and, first, ``__tokenizer__.json``: the tokenizer's fingerprint, input size, grid,
vocabulary and crop. Pretraining reads the ids instead of running the codebook when every shard
has them (``mmkit.data.TarShards.token_info``), and refuses ids from another tokenizer, size or crop.
The format (member names, the WebDataset key rule, the ``.npy`` encoding, the record) is defined
once, in :mod:`mmkit.data.formats`, which the reader (``TarShards``) shares.

Shards are written to a temporary name and renamed when complete, so an interrupted run leaves
no half-written shard. Beside each output shard, ``<shard>.source.json`` records the input it was made
from (path, size, modification time) and the output's size; a later run skips a shard only when its
output is complete for the same tokenizer *and* the input's size and modification time (and the
output's size) are still the recorded ones, so an input shard rewritten since is cached again instead
of keeping stale ids. (The record is a sidecar, not part of ``__tokenizer__.json``, because that
member must be identical in every shard of a set; outputs without one, e.g. from an older version,
are made again.)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tarfile
from pathlib import Path

import torch

from mmkit.data.decoding import decode_image
from mmkit.data.formats import (
    TOKENIZER_META,
    TOKENS_EXT,
    image_member,
    split_member_name,
    token_cache_meta,
    token_ids_to_bytes,
)
from mmkit.data.records import Record
from mmkit.data.sources import expand_paths
from mmkit.data.transforms import ImageTransform, ImageTransformConfig
from mmkit.data.write_shards import add_member
from mmkit.tokenizers.dalle import ImageTokenizer, dalle_encoder_from_checkpoint, tokenizer_fingerprint
from mmkit.utils.errors import InputError, run_cli

logger = logging.getLogger(__name__)


def tokenizer_meta(tokenizer: ImageTokenizer, image_size: int) -> dict:
    """What ``__tokenizer__.json`` records (and pretraining compares), for this tokenizer at this input size."""
    grid = image_size // tokenizer.encoder.downsample
    return token_cache_meta(tokenizer_fingerprint(tokenizer.encoder), image_size, grid, tokenizer.vocab_size)


@torch.no_grad()
def cache_shard(
    src: Path, dst: Path, tokenizer: ImageTokenizer, image_size: int, batch_size: int = 256, progress=None
) -> dict[str, int]:
    """Write ``dst``: ``src`` plus the token ids of every sample's image. Returns counts
    (``samples``, ``tokenized``, ``unreadable``); unreadable images are logged and get no ids."""
    transform = ImageTransform(ImageTransformConfig(image_size=image_size, codebook_image_size=image_size))
    device = next(tokenizer.parameters()).device
    with tarfile.open(src, "r:") as tar:
        members = [m for m in tar if m.isfile()]
        data = {m.name: tar.extractfile(m).read() for m in members}
    groups: dict[str, list[tarfile.TarInfo]] = {}
    images: dict[str, tarfile.TarInfo] = {}  # the member TarShards reads as each sample's image
    for m in members:
        key, ext = split_member_name(m.name)
        if key.rsplit("/", 1)[-1].startswith("__") or ext == TOKENS_EXT:  # an older cache's entries: replaced
            continue
        groups.setdefault(key, []).append(m)
    for key, ms in groups.items():
        image = image_member({split_member_name(m.name)[1]: m for m in ms})
        if image is not None:
            images[key] = image
    ids: dict[str, torch.Tensor] = {}
    keys = list(images)
    unreadable = 0
    for start in range(0, len(keys), batch_size):
        chunk, pixels = [], []
        for key in keys[start : start + batch_size]:
            try:
                pixels.append(transform(decode_image(Record(key=key, image=data[images[key].name])))["codebook_image"])
                chunk.append(key)
            except ValueError as e:
                unreadable += 1
                logger.warning("%s:%s: no tokens, the image cannot be decoded (%s)", src.name, key, e)
        if pixels:
            out = tokenizer(torch.stack(pixels).to(device)).cpu()
            grid = image_size // tokenizer.encoder.downsample
            for key, row in zip(chunk, out, strict=True):
                ids[key] = row.view(grid, grid)
        if progress is not None:
            progress.update(len(keys[start : start + batch_size]))
    tmp = dst.with_name(dst.name + ".tmp")
    with tarfile.open(tmp, "w") as out_tar:
        add_member(out_tar, TOKENIZER_META, json.dumps(tokenizer_meta(tokenizer, image_size)).encode())
        for key, ms in groups.items():
            for m in ms:
                add_member(out_tar, m.name, data[m.name])
            if key in ids:
                add_member(out_tar, key + TOKENS_EXT, token_ids_to_bytes(ids[key]))
    os.replace(tmp, dst)
    return {"samples": len(groups), "tokenized": len(ids), "unreadable": unreadable}


#: suffix of the sidecar beside each output shard that records the input it was made from
SOURCE_SUFFIX = ".source.json"


def source_record(src: Path) -> dict:
    """What the sidecar records of an input shard: its path, size and modification time (taken before reading it)."""
    st = src.stat()
    return {"input": str(src.resolve()), "input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns}


def _sidecar(dst: Path) -> Path:
    return dst.with_name(dst.name + SOURCE_SUFFIX)


def _write_sidecar(dst: Path, record: dict) -> None:
    """Record ``dst``'s input, after ``dst`` is complete (a run cut in between leaves an old record: redone)."""
    side = _sidecar(dst)
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps({**record, "output_size": dst.stat().st_size}, indent=1))
    os.replace(tmp, side)


def _complete_for(path: Path, meta: dict, src: Path) -> bool:
    """Whether ``path`` is a finished output for this tokenizer record (``meta``) of ``src`` as it is now:
    same input size and modification time as when it was made, and the output's size unchanged."""
    try:
        recorded = json.loads(_sidecar(path).read_text())
        current = source_record(src)
        if any(recorded.get(k) != current[k] for k in ("input_size", "input_mtime_ns")):
            logger.info("%s changed since %s was made from it: caching it again", src, path)
            return False
        if recorded.get("output_size") != path.stat().st_size:
            return False
        with tarfile.open(path, "r:") as tar:
            first = tar.next()
            return first is not None and first.name == TOKENIZER_META and json.load(tar.extractfile(first)) == meta
    except (tarfile.TarError, OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    from tqdm import tqdm

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", required=True, help="tar shards: paths, brace patterns or globs")
    parser.add_argument("--tokenizer", required=True, help="a dVAE folder (train_tokenizer.py) or DALL-E encoder")
    parser.add_argument("--out", required=True, help="folder for the output shards (not the input's folder)")
    parser.add_argument("--image-size", type=int, help="tokenizer input side (default: the dVAE's dvae_config.json)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shards = expand_paths(args.shards)
    out = Path(args.out)
    if any(s.parent.resolve() == out.resolve() for s in shards):
        raise InputError(f"--out {out} holds input shards: choose another folder (inputs are never overwritten)")
    image_size = args.image_size
    cfg_file = Path(args.tokenizer) / "dvae_config.json"
    if image_size is None:
        if not cfg_file.is_file():
            raise InputError("--image-size is needed for a tokenizer without dvae_config.json (112 for DALL-E)")
        image_size = json.loads(cfg_file.read_text())["image_size"]
    tokenizer = ImageTokenizer(dalle_encoder_from_checkpoint(args.tokenizer)).to(args.device)
    if image_size % tokenizer.encoder.downsample:
        raise InputError(
            f"--image-size {image_size} is not a multiple of the downsampling {tokenizer.encoder.downsample}"
        )
    meta = tokenizer_meta(tokenizer, image_size)
    out.mkdir(parents=True, exist_ok=True)
    totals = {"samples": 0, "tokenized": 0, "unreadable": 0, "skipped_shards": 0}
    with tqdm(desc="tokenizing", unit="img") as bar:
        for shard in shards:
            dst = out / shard.name
            if _complete_for(dst, meta, shard):
                totals["skipped_shards"] += 1
                continue
            record = source_record(shard)  # before reading: a change while it is read shows next time
            _sidecar(dst).unlink(missing_ok=True)
            for k, v in cache_shard(shard, dst, tokenizer, image_size, args.batch_size, bar).items():
                totals[k] += v
            _write_sidecar(dst, record)
    print(
        f"{len(shards)} shards -> {out}: {json.dumps(totals)}; tokenizer {meta['fingerprint']}, "
        f"{image_size}px -> {meta['grid'][0]}x{meta['grid'][1]} tokens"
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
