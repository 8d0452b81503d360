"""MNIST (and Fashion-MNIST, KMNIST: the same files) in the IDX format LeCun et al. ship
(http://yann.lecun.com/exdb/mnist/): ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each optionally gzipped (``.gz``), or with the
last dash written as a dot (``t10k-images.idx3-ubyte``, as some mirrors name them).

An IDX file is a big-endian header — two zero bytes, a type byte (``0x08``: unsigned bytes), the number
of dimensions, then each dimension as a 4-byte integer — followed by the values. The image size the header
declares is checked against the pixel bound of decoded images before anything is read (a 30-byte header
may declare 15000x15000 pixels), and images are read one at a time. Images are ``(N, 28,
28)``; labels ``(N,)``. Splits: ``train`` and ``test``. Class names: the digits ``0`` to ``9``.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample
from mmkit.utils.bounded import over_limit
from mmkit.utils.errors import InputError, MissingError

PREFIX = {"train": "train", "test": "t10k"}


def _find(root: Path, stem: str) -> Path:
    base, _, kind = stem.rpartition("-")  # "t10k-images" + "idx3-ubyte"
    for name in (stem, f"{base}.{kind}"):
        for suffix in ("", ".gz"):
            if (root / f"{name}{suffix}").is_file():
                return root / f"{name}{suffix}"
    raise MissingError(f"{root}: no {stem} file (nor .gz, nor {base}.{kind})")


def _open(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx_header(f, path: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions of an IDX file of unsigned bytes with ``ndim`` dimensions, read from ``f``."""
    head = f.read(4)
    if len(head) < 4 or head[:2] != b"\x00\x00":
        raise BenchmarkFormatError(path, "not an IDX file (it must start with two zero bytes)")
    if head[2] != 0x08:
        raise BenchmarkFormatError(path, f"IDX type 0x{head[2]:02x}, expected 0x08 (unsigned bytes)")
    if head[3] != ndim:
        raise BenchmarkFormatError(path, f"IDX file of {head[3]} dimensions, expected {ndim}")
    raw = f.read(4 * ndim)
    if len(raw) < 4 * ndim:
        raise BenchmarkFormatError(path, "IDX header is truncated")
    return struct.unpack(f">{ndim}I", raw)


def _check_image_size(path: Path, rows: int, cols: int) -> None:
    """The images an IDX header declares must be decodable images: at least one pixel, within the pixel
    bound of decoded images (:data:`mmkit.data.decoding.MAX_IMAGE_PIXELS`) and the per-sample byte limit
    (``max_sample_bytes``), checked before a pixel is read."""
    from mmkit.data import decoding

    pixels, limit = rows * cols, decoding.MAX_IMAGE_PIXELS
    if pixels == 0:
        raise BenchmarkFormatError(path, f"IDX images of {rows}x{cols} hold no pixel")
    if pixels > limit:
        raise BenchmarkFormatError(
            path,
            f"IDX images of {rows}x{cols} ({pixels:,} pixels) are over the limit of "
            f"{limit:,} pixels of decoded images: refused before reading",
        )
    problem = over_limit(f"an IDX image of {rows}x{cols}", pixels)
    if problem:
        raise BenchmarkFormatError(path, problem)


class Mnist(BenchmarkSet):
    """One split of an MNIST-format set; ``path`` is the folder with the four IDX files."""

    layout = "mnist"

    def __init__(self, path: str | Path, split: str = "test") -> None:
        super().__init__(path, split)
        if split not in PREFIX:
            raise InputError(f"MNIST has the splits 'train' and 'test', not {split!r}")
        root = Path(path)
        if not root.is_dir():
            raise MissingError(f"{root} does not exist: the mnist layout reads a folder of four IDX files")
        self.images = _find(root, f"{PREFIX[split]}-images-idx3-ubyte")
        self.labels = _find(root, f"{PREFIX[split]}-labels-idx1-ubyte")
        with _open(self.images) as f:
            self.count, self.rows, self.cols = read_idx_header(f, self.images, 3)
        _check_image_size(self.images, self.rows, self.cols)
        with _open(self.labels) as f:
            (labels,) = read_idx_header(f, self.labels, 1)
        if labels != self.count:
            raise BenchmarkFormatError(self.labels, f"holds {labels} labels for {self.count} images in {self.images}")
        self.classnames = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Sample]:
        from PIL import Image

        size = self.rows * self.cols
        with _open(self.images) as fi, _open(self.labels) as fl:
            read_idx_header(fi, self.images, 3)
            read_idx_header(fl, self.labels, 1)
            for i in range(self.count):
                pixels, label = fi.read(size), fl.read(1)
                if len(pixels) < size or not label:
                    raise BenchmarkFormatError(
                        self.images if len(pixels) < size else self.labels, f"ends after {i} of {self.count} records"
                    )
                image = Image.fromarray(np.frombuffer(pixels, dtype=np.uint8).reshape(self.rows, self.cols))
                yield Sample(f"{self.split}/{i}", image, label[0])

    def files(self) -> list[Path]:
        return [self.images, self.labels]
