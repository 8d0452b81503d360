"""CIFAR-10 and CIFAR-100 as their official archives extract (Krizhevsky 2009,
https://www.cs.toronto.edu/~kriz/cifar.html).

* binary version: ``cifar-10-batches-bin/`` (``data_batch_1.bin`` .. ``data_batch_5.bin``,
  ``test_batch.bin``, ``batches.meta.txt``): 10,000 records of ``<1 label byte><3,072 pixel bytes>``
  per file; ``cifar-100-binary/`` (``train.bin``, ``test.bin``, ``fine_label_names.txt``): records of
  ``<coarse byte><fine byte><3,072 pixel bytes>``. Pixels are the red, green, then blue 32x32 planes,
  rows first.
* python version: ``cifar-10-batches-py/`` (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``) and ``cifar-100-python/`` (``train``, ``test``, ``meta``): pickled dicts of a
  ``(N, 3072)`` uint8 array and label lists. They are read through an unpickler that admits only what
  those files hold (numpy's array reconstruction, its dtype, and the byte-string codec); anything
  else is refused, naming the class, so a planted file runs no code.

``path`` is the extracted folder, or a folder holding one of the four. Splits: ``train`` and ``test``.
CIFAR-100 uses the 100 fine labels.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample, read_lines
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.safe_pickle import allow_names, restricted_load

FOLDERS = ("cifar-10-batches-bin", "cifar-100-binary", "cifar-10-batches-py", "cifar-100-python")
PIXELS = 3 * 32 * 32


#: the globals a CIFAR python batch needs: numpy array reconstruction and dtype, and the codec Python 3
#: uses for byte strings in protocol-2 pickles
CIFAR_GLOBALS = allow_names(
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
)


def safe_unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f, CIFAR_GLOBALS, "a CIFAR batch", encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise BenchmarkFormatError(path, f"not a CIFAR python batch ({e})") from None
    if not isinstance(obj, dict):
        raise BenchmarkFormatError(path, f"holds a {type(obj).__name__}, not a dict")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class Cifar(BenchmarkSet):
    """One split of CIFAR-10 or CIFAR-100 (binary or python version, found under ``path``)."""

    layout = "cifar"

    def __init__(self, path: str | Path, split: str = "test") -> None:
        super().__init__(path, split)
        if split not in ("train", "test"):
            raise InputError(f"CIFAR has the splits 'train' and 'test', not {split!r}")
        root = Path(path)
        if root.name not in FOLDERS:
            found = [root / f for f in FOLDERS if (root / f).is_dir()]
            if len(found) != 1:
                raise MissingError(
                    f"{root} is not an extracted CIFAR archive: expected one of {', '.join(FOLDERS)} (or a folder "
                    f"holding exactly one){'; found ' + ', '.join(p.name for p in found) if found else ''}"
                )
            root = found[0]
        self.root, self.hundred, self.binary = root, "100" in root.name, root.name.endswith(("bin", "binary"))
        names = self._file_names()
        self.batch_files = [root / n for n in names]
        missing = [str(f) for f in self.batch_files if not f.is_file()]
        if missing:
            raise MissingError(f"CIFAR {split} file(s) missing: {', '.join(missing)}")
        self.classnames = self._classnames()
        self._arrays: dict[Path, tuple[np.ndarray, np.ndarray]] = {}
        record = PIXELS + (2 if self.hundred else 1)
        if self.binary:
            for f in self.batch_files:
                if f.stat().st_size % record:
                    raise BenchmarkFormatError(
                        f, f"size {f.stat().st_size} is not a whole number of {record}-byte records"
                    )
            self.counts = [f.stat().st_size // record for f in self.batch_files]
        else:
            self.counts = [len(self._python_batch(f)[1]) for f in self.batch_files]

    def _file_names(self) -> list[str]:
        if self.hundred:
            return [f"{self.split}.bin" if self.binary else self.split]
        if self.split == "train":
            return [f"data_batch_{i}{'.bin' if self.binary else ''}" for i in range(1, 6)]
        return ["test_batch.bin" if self.binary else "test_batch"]

    def _classnames(self) -> list[str]:
        if self.binary:
            meta = self.root / ("fine_label_names.txt" if self.hundred else "batches.meta.txt")
            if not meta.is_file():
                raise MissingError(f"CIFAR class names file {meta} is missing")
            names = read_lines(meta)
        else:
            meta = self.root / ("meta" if self.hundred else "batches.meta")
            if not meta.is_file():
                raise MissingError(f"CIFAR class names file {meta} is missing")
            field = "fine_label_names" if self.hundred else "label_names"
            data = safe_unpickle(meta)
            if field not in data:
                raise BenchmarkFormatError(meta, f"has no {field!r} field")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in data[field]]
        want = 100 if self.hundred else 10
        if len(names) != want:
            raise BenchmarkFormatError(meta, f"lists {len(names)} class names, expected {want}")
        return [n.replace("_", " ") for n in names]

    def _python_batch(self, f: Path) -> tuple[np.ndarray, np.ndarray]:
        if f not in self._arrays:
            data = safe_unpickle(f)
            field = "fine_labels" if self.hundred else "labels"
            for name in ("data", field):
                if name not in data:
                    raise BenchmarkFormatError(f, f"has no {name!r} field")
            pixels = np.asarray(data["data"], dtype=np.uint8)
            labels = np.asarray(data[field], dtype=np.int64)
            if pixels.ndim != 2 or pixels.shape[1] != PIXELS or len(pixels) != len(labels):
                raise BenchmarkFormatError(
                    f, f"'data' is {pixels.shape}, expected (N, {PIXELS}) with N = {len(labels)} labels"
                )
            self._arrays = {f: (pixels, labels)}  # one batch in memory at a time
        return self._arrays[f]

    def __len__(self) -> int:
        return sum(self.counts)

    def __iter__(self) -> Iterator[Sample]:
        from PIL import Image

        def image(row: np.ndarray):
            return Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0))

        index = 0
        for f, count in zip(self.batch_files, self.counts, strict=True):
            if self.binary:
                record = PIXELS + (2 if self.hundred else 1)
                with open(f, "rb") as fh:
                    for _ in range(count):
                        raw = fh.read(record)
                        row = np.frombuffer(raw, dtype=np.uint8)
                        yield Sample(f"{self.split}/{index}", image(row[-PIXELS:]), int(row[record - PIXELS - 1]))
                        index += 1
            else:
                pixels, labels = self._python_batch(f)
                for row, label in zip(pixels, labels, strict=True):
                    yield Sample(f"{self.split}/{index}", image(row), int(label))
                    index += 1

    def files(self) -> list[Path]:
        return self.batch_files
