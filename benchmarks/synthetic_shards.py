"""Synthetic FLAVA pretraining data at the released sizes, for timing the recipe where no dataset exists.

Writes under ``--out``:

* ``pairs-NNNNNN.tar``: WebDataset shards of 1,000 samples each, a ``--side``² JPEG (a built-in shapes
  picture with noise, about what a web photo of that size costs to decode; the same bytes in every
  sample) and a caption; used as the image source too;
* ``text.txt``: one caption per line (the text source);
* ``tokenizer/vocab.txt``: a WordPiece vocabulary in bert-base-uncased's layout (``[PAD]`` 0,
  ``[unused*]``, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103) padded with filler
  entries to ``--vocab`` ids, so that the text encoder and the MLM head have the released 30,522-id
  shapes without bert's file.

    python benchmarks/synthetic_shards.py --out /tmp/synth --samples 20000 --side 256

Used by ``benchmarks/gpu_throughput.sh`` (the recipe's samples/s against the step's). Shards already
there are kept.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_scale import PER_SHARD, write_shards

SPECIAL = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = ["a", "purple", "square", "number", *map(str, range(10)), *(f"##{d}" for d in range(10))]


def write_vocab(path: Path, size: int) -> None:
    """bert-base-uncased's special-token layout, the captions' words, then filler entries up to ``size``."""
    entries = SPECIAL + WORDS
    if size < len(entries):
        raise SystemExit(f"--vocab {size} is smaller than the {len(entries)} entries the captions need")
    entries += [f"filler{i}" for i in range(size - len(entries))]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(entries) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=20_000, help=f"a multiple of {PER_SHARD}")
    parser.add_argument("--side", type=int, default=256, help="JPEG side in pixels")
    parser.add_argument("--vocab", type=int, default=30_522)
    args = parser.parse_args()
    if args.samples < PER_SHARD or args.samples % PER_SHARD:
        parser.error(f"--samples must be a positive multiple of {PER_SHARD}, got {args.samples}")
    out = Path(args.out)
    shards = write_shards(out, args.samples, args.side, "jpg")
    (out / "text.txt").write_text("".join(f"a purple square number {i}\n" for i in range(args.samples)))
    write_vocab(out / "tokenizer" / "vocab.txt", args.vocab)
    print(
        f"{len(shards)} shards of {PER_SHARD} {args.side}² JPEG pairs, text.txt, tokenizer/vocab.txt "
        f"({args.vocab} ids) in {out}"
    )


if __name__ == "__main__":
    main()
