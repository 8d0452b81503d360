"""The built-in shapes data written in three benchmark layouts, so the evaluation suite runs on a fresh
clone with nothing downloaded (``suites/shapes.yaml``)::

    python -m mmkit.eval.benchmarks.shapes --out data/shapes-benchmarks
    python recipes/flava/evaluate.py suite=suites/shapes.yaml data_root=data/shapes-benchmarks \\
        checkpoint=runs/demo/final out=runs/demo/suite

* ``shapes-color/``: class folders ``{train,test}/<colour>/<key>.png`` (the first shape's colour);
* ``shapes-count/``: CLIP_benchmark's WebDataset layout (``classnames.txt``, templates with ``{c}``,
  ``{train,test}/0.tar`` of ``<key>.png`` + ``<key>.cls``, ``nshards.txt``): how many shapes of the first kind;
* ``shapes-captions/``: a Karpathy-style split file ``dataset_shapes.json`` (``images[].split``,
  ``filename``, ``sentences[].raw``) over ``images/``: each picture with three captions (its own and two
  rephrasings), for the several-captions retrieval protocol.

The training split comes from the built-in training pairs, the test split from the held-out pairs; with
``--val N`` a ``val`` split too (the next ``N`` training pairs), in the class-folder and WebDataset layouts.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

from mmkit.data import shapes_dataset
from mmkit.data.sources import decode_text
from mmkit.data.tasks import TASKS, ShapesTask
from mmkit.data.write_shards import add_member
from mmkit.utils.errors import run_cli

TEMPLATES = ("a picture of {c} shapes.", "{c} objects", "{c}")
COUNT_NAMES = ("one", "two", "three")  # the count task's classes 1, 2, 3


def write_shapes_benchmarks(out: str | Path, train: int = 600, test: int = 300, data=None, val: int = 0) -> Path:
    """Write the three layouts (see the module docstring) under ``out`` (once: a ``DONE`` marker is written last).

    Args:
        train, test: pictures per split (from the built-in training and held-out pairs).
        data: the :func:`~mmkit.data.shapes_dataset` files to take them from (default the built-in set).
        val: pictures of a ``val`` split as well (the training pairs after the ``train`` ones), as datasets
            that ship a validation split have it; 0: none.
    """
    out = Path(out)
    if (out / "DONE").is_file() and (out / "DONE").read_text() == f"{train} {test} {val}":
        return out
    paths = data or shapes_dataset()
    splits = {
        "train": (paths.train_pairs, 0, train),
        "val": (paths.train_pairs, train, val),
        "test": (paths.val_pairs, 0, test),
    }
    captions: list[dict] = []
    (out / "shapes-captions" / "images").mkdir(parents=True, exist_ok=True)
    (out / "shapes-count").mkdir(parents=True, exist_ok=True)
    for split, (shards, first, n) in splits.items():
        if n == 0:
            continue
        color, count = ShapesTask(shards, "color"), ShapesTask(shards, "count")
        with tarfile.open(out / "shapes-count" / f"{split}.tmp", "w") as tar:
            for i in range(first, min(first + n, len(color))):
                rec, counted = color[i], count[i]
                key = f"{split}{i:05d}"
                folder = out / "shapes-color" / split / TASKS["color"][rec.label]
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{key}.png").write_bytes(rec.image)
                add_member(tar, f"{key}.png", rec.image)
                add_member(tar, f"{key}.cls", str(counted.label).encode())
                (out / "shapes-captions" / "images" / f"{key}.png").write_bytes(rec.image)
                text = decode_text(rec)
                sentences = [text, f"a picture of {text}", f"an image that shows {text}"]
                captions.append(
                    {
                        "filename": f"{key}.png",
                        "split": split,
                        "imgid": len(captions),
                        "sentences": [{"raw": s, "tokens": s.split()} for s in sentences],
                    }
                )
        (out / "shapes-count" / split).mkdir(exist_ok=True)
        (out / "shapes-count" / f"{split}.tmp").replace(out / "shapes-count" / split / "0.tar")
        (out / "shapes-count" / split / "nshards.txt").write_text("1\n")
    (out / "shapes-count" / "classnames.txt").write_text("\n".join(COUNT_NAMES) + "\n")
    (out / "shapes-count" / "zeroshot_classification_templates.txt").write_text("\n".join(TEMPLATES) + "\n")
    (out / "shapes-captions" / "dataset_shapes.json").write_text(json.dumps({"dataset": "shapes", "images": captions}))
    (out / "DONE").write_text(f"{train} {test} {val}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mmkit.eval.benchmarks.shapes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--val", type=int, default=0, help="pictures of a val split too (default none)")
    args = parser.parse_args(argv)
    print(f"wrote {write_shapes_benchmarks(args.out, args.train, args.test, val=args.val)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
