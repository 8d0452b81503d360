"""A built-in image-text dataset, generated deterministically on first use (no download).

"Shapes": 64x64 pictures of one or two groups of objects on a plain background, with
captions that describe them compositionally — count, size, colour, shape and, for two
groups, their relative position::

    "two small red circles"
    "a big blue square to the left of three small yellow triangles"

Colour, shape, count, size and layout are drawn independently, so captions are a real
contrastive task: matching an image to its caption needs all five attributes (about 2,500
single-group descriptions, far more with two groups). The generator is seeded, so every
machine writes the same files; they are written once into ``root`` in the WebDataset
layout the real data path reads (``key.png`` + ``key.txt``), plus image-only shards and
a plain-text file for the unimodal objectives, and a held-out split for evaluation.

    from mmkit.data.builtin import shapes_dataset
    paths = shapes_dataset()          # ~/.cache/mmkit/shapes-v1 (or $MMKIT_DATA/shapes-v1)
    paths.train_pairs, paths.val_pairs, paths.images, paths.text
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

from mmkit.data.write_shards import add_member
from mmkit.utils.errors import InputError
from mmkit.utils.run_lock import file_lock

COLORS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
    "purple": (140, 60, 180),
    "orange": (245, 130, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 6, "big": 11}  # half-side in pixels at 64x64
COUNT_WORDS = {1: "a", 2: "two", 3: "three"}
VERSION = "shapes-v1"


@dataclass
class ShapesPaths:
    """Where the built-in dataset lives (all lists of files)."""

    root: Path
    train_pairs: list[Path]
    val_pairs: list[Path]
    images: list[Path]
    text: list[Path]


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else shape + "s"


def _describe(group: dict) -> str:
    n = group["count"]
    return f"{COUNT_WORDS[n]} {group['size']} {group['color']} {_plural(group['shape'], n)}"


def _random_group(rng: random.Random) -> dict:
    return {
        "count": rng.choice((1, 2, 3)),
        "size": rng.choice(tuple(SIZES)),
        "color": rng.choice(tuple(COLORS)),
        "shape": rng.choice(SHAPES),
    }


def _draw_object(draw, shape: str, cx: float, cy: float, r: float, color) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon(((cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)), fill=color)


def _place(rng: random.Random, group: dict, region: tuple[float, float, float, float], draw) -> None:
    """Draw a group's objects inside ``region`` (x0, y0, x1, y1), spread along its longer side."""
    r = SIZES[group["size"]] * (1.0 + 0.15 * (rng.random() - 0.5))
    x0, y0, x1, y1 = region
    n = group["count"]
    horizontal = (x1 - x0) >= (y1 - y0)
    for k in range(n):
        t = (k + 0.5) / n
        jitter = (rng.random() - 0.5) * 4
        if horizontal:
            cx, cy = x0 + t * (x1 - x0) + jitter, (y0 + y1) / 2 + (rng.random() - 0.5) * 6
        else:
            cx, cy = (x0 + x1) / 2 + (rng.random() - 0.5) * 6, y0 + t * (y1 - y0) + jitter
        _draw_object(draw, group["shape"], cx, cy, r, COLORS[group["color"]])


def make_example(rng: random.Random, size: int = 64):
    """One (PIL image, caption) pair drawn from ``rng``."""
    from PIL import Image, ImageDraw

    background = tuple(int(235 + 15 * rng.random()) for _ in range(3))
    image = Image.new("RGB", (64, 64), background)
    draw = ImageDraw.Draw(image)
    first = _random_group(rng)
    if rng.random() < 0.5:
        _place(rng, first, (4, 4, 60, 60) if first["count"] == 1 else (2, 18, 62, 46), draw)
        caption = _describe(first)
    else:
        second = _random_group(rng)
        while (second["color"], second["shape"]) == (first["color"], first["shape"]):
            second = _random_group(rng)
        relation = rng.choice(("left", "above"))
        if relation == "left":
            _place(rng, first, (0, 4, 32, 60), draw)
            _place(rng, second, (32, 4, 64, 60), draw)
            caption = f"{_describe(first)} to the left of {_describe(second)}"
        else:
            _place(rng, first, (4, 0, 60, 32), draw)
            _place(rng, second, (4, 32, 60, 64), draw)
            caption = f"{_describe(first)} above {_describe(second)}"
    if size != 64:
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    return image, caption


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _write_shards(path_fmt: str, n: int, per_shard: int, seed: int, with_text: bool) -> list[Path]:
    rng = random.Random(seed)
    paths = []
    for shard in range(-(-n // per_shard)):
        path = Path(path_fmt.format(shard))
        tmp = path.with_suffix(".tmp")
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * per_shard, min(n, (shard + 1) * per_shard)):
                image, caption = make_example(rng)
                key = f"{i:07d}"
                add_member(tar, f"{key}.png", _png(image))
                if with_text:
                    add_member(tar, f"{key}.txt", caption.encode())
        os.replace(tmp, path)  # a crash mid-write never leaves a half shard under the final name
        paths.append(path)
    return paths


def default_root() -> Path:
    base = os.environ.get("MMKIT_DATA") or os.path.join(os.path.expanduser("~"), ".cache", "mmkit")
    return Path(base) / VERSION


def shapes_dataset(
    root: str | Path | None = None,
    num_train: int = 8000,
    num_val: int = 1000,
    num_images: int = 4000,
    num_text: int = 8000,
    per_shard: int = 2000,
) -> ShapesPaths:
    """Generate (once) and return the built-in dataset's files.

    Args:
        root: output folder (default ``$MMKIT_DATA/shapes-v1`` or ``~/.cache/mmkit/shapes-v1``).
        num_train, num_val: image-caption pairs in the training and held-out splits.
        num_images: unpaired images (MIM). num_text: unpaired captions (MLM).
        per_shard: samples per tar shard.

    Files already present (from an identical call) are reused; a ``DONE`` marker is written
    last, so an interrupted generation is redone rather than half-used.
    """
    root = Path(root) if root is not None else default_root()
    spec = f"{num_train} {num_val} {num_images} {num_text} {per_shard}"
    done = root / "DONE"

    def listing() -> ShapesPaths:
        return ShapesPaths(
            root=root,
            train_pairs=sorted(root.glob("train-pairs-*.tar")),
            val_pairs=sorted(root.glob("val-pairs-*.tar")),
            images=sorted(root.glob("images-*.tar")),
            text=[root / "text.txt"],
        )

    if done.exists() and done.read_text() == spec:
        return listing()
    root.mkdir(parents=True, exist_ok=True)
    with file_lock(root / ".lock"):  # every rank of a run may call this at once: one writes, the rest wait
        if done.exists() and done.read_text() == spec:
            return listing()
        done.unlink(missing_ok=True)
        for old in root.glob("*.tar"):
            old.unlink()
        _write_shards(str(root / "train-pairs-{:04d}.tar"), num_train, per_shard, seed=1, with_text=True)
        _write_shards(str(root / "val-pairs-{:04d}.tar"), num_val, per_shard, seed=2, with_text=True)
        _write_shards(str(root / "images-{:04d}.tar"), num_images, per_shard, seed=3, with_text=False)
        rng = random.Random(4)
        lines = [make_example(rng)[1] for _ in range(num_text)]
        tmp = root / "text.tmp"
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.replace(tmp, root / "text.txt")
        done.write_text(spec)
    return listing()


def recipe_data_paths(
    dataset: str, train_pairs: list[str], val_pairs: list[str], images: list[str], text: list[str]
) -> tuple[list, list, list, list]:
    """``(train pairs, val pairs, images, text)`` of a recipe's data config: the built-in set's files for
    ``dataset="shapes"`` (generated on first use, under a file lock), else the configured patterns."""
    if dataset == "shapes":
        p = shapes_dataset()
        return p.train_pairs, p.val_pairs, p.images, p.text
    if not train_pairs:
        raise InputError("data.dataset=files needs data.train_pairs (tar shard patterns)")
    return train_pairs, val_pairs, images, text
