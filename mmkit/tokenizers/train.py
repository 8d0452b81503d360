"""Train a WordPiece vocabulary from your own text files.

    python -m mmkit.tokenizers.train --files 'corpus/*.txt' --vocab-size 8000 --out my_tokenizer/

Writes ``tokenizer.json`` and ``vocab.txt`` (BERT format: ``[PAD]`` = 0, ``[UNK]``, ``[CLS]``,
``[SEP]``, ``[MASK]`` first); load them with ``TextTokenizer.from_pretrained(out)``.
"""

from __future__ import annotations

import argparse
import glob
import sys

from mmkit.tokenizers.text import train_wordpiece
from mmkit.utils.errors import run_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", nargs="+", required=True, help="text files or glob patterns, one text per line")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--min-frequency", type=int, default=2)
    parser.add_argument("--cased", action="store_true", help="keep case (default: BERT uncased)")
    args = parser.parse_args(argv)
    files = sorted({f for pattern in args.files for f in (glob.glob(pattern) or [pattern])})
    tok = train_wordpiece(files, args.vocab_size, args.min_frequency, lowercase=not args.cased)
    out = tok.save(args.out)
    print(f"trained a {tok.vocab_size}-piece WordPiece vocabulary on {len(files)} file(s) -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
