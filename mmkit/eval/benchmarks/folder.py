"""Class folders: ``<path>/<split>/<class>/<image>`` (ImageNet's ``train/<wnid>/`` and a ``val/`` laid out
the same way, or any ``torchvision.datasets.ImageFolder``-style set).

Classes are the subfolders in sorted order (as ``ImageFolder`` numbers them). When the folder names
are ids (ImageNet's WordNet ids), ``classnames`` names a mapping file: ImageNet's
``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``: the first name is used), a
``wnid<TAB>name`` or ``wnid name`` file, a JSON object ``{folder: name}``, or a list (one name per
line, or a JSON list) in the sorted folders' order.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from mmkit.data.sources import ImageFolder
from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample, read_lines
from mmkit.utils.bounded import parse_json, read_text_file
from mmkit.utils.errors import InputError, MissingError


class ClassFolders(BenchmarkSet):
    """One split of a class-folder set.

    Args:
        path: the root holding ``<split>/``.
        split: the split folder's name.
        classnames: optional mapping or list file (see the module docstring), absolute or under ``path``.
    """

    layout = "folder"
    validation_splits = ("val",)

    def __init__(self, path: str | Path, split: str = "val", classnames: str | Path | None = None) -> None:
        super().__init__(path, split)
        root = Path(path) / split
        if not root.is_dir():
            raise MissingError(f"{root} does not exist: the folder layout reads <path>/<split>/<class>/<image>")
        try:
            self.source = ImageFolder(root, labels=True, name=f"{path} [{split}]")
        except ValueError as e:
            raise BenchmarkFormatError(root, f"no images in class subfolders ({e})") from None
        self.folders = self.source.classes
        self.root = root
        self.mapping_file = None
        if classnames is not None:
            mapping = Path(classnames)
            mapping = mapping if mapping.is_absolute() or mapping.exists() else Path(path) / mapping
            if not mapping.is_file():
                raise MissingError(f"classnames file {mapping} does not exist")
            self.mapping_file = mapping
            self.classnames = _names_from(mapping, self.folders)
        else:
            self.classnames = [f.replace("_", " ") for f in self.folders]

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[Sample]:
        for _, sample in self.shard(0, 1):
            yield sample

    def shard(self, worker: int, count: int) -> Iterator[tuple[int, Sample]]:
        """``(index, sample)`` of every ``count``-th image from ``worker`` on (only those files are read)."""
        for index in range(worker, len(self.source), count):
            try:
                record = self.source[index]
            except OSError as e:
                key = str(self.source._files[index].relative_to(self.root))
                yield (
                    index,
                    Sample(key, None, self.source._labels[index], error=f"cannot read {key}: {e.strerror or e}"),
                )
                continue
            yield index, Sample(record.key, record.image, record.label)

    def files(self) -> list[Path]:
        extra = [self.mapping_file] if self.mapping_file else []
        return [*self.source._files, *extra]


def _names_from(mapping: Path, folders: list[str]) -> list[str]:
    """Class names for ``folders`` from a mapping or list file."""
    if mapping.suffix == ".json":
        try:
            data = parse_json(read_text_file(mapping, "classnames file"), "the file")
        except InputError as e:
            raise BenchmarkFormatError(mapping, f"invalid JSON ({e})") from None
        if isinstance(data, dict):
            return [_first_name(str(data[f]), mapping, f) if f in data else _missing(mapping, f) for f in folders]
        if isinstance(data, list):
            return _as_list([str(x) for x in data], mapping, folders)
        raise BenchmarkFormatError(mapping, "must hold an object {folder: name} or a list of names")
    lines = read_lines(mapping)
    pairs = [line.replace("\t", " ").split(" ", 1) for line in lines]
    if all(len(p) == 2 for p in pairs) and {p[0] for p in pairs} >= set(folders):
        table = {p[0]: p[1] for p in pairs}
        return [_first_name(table[f], mapping, f) for f in folders]
    return _as_list(lines, mapping, folders)


def _as_list(names: list[str], mapping: Path, folders: list[str]) -> list[str]:
    if len(names) != len(folders):
        raise BenchmarkFormatError(
            mapping, f"lists {len(names)} names for {len(folders)} class folders and maps none of {folders[:3]}"
        )
    return names


def _first_name(value: str, mapping: Path, folder: str) -> str:
    name = value.split(",")[0].strip()
    if not name:
        raise BenchmarkFormatError(mapping, f"the name of {folder!r} is empty")
    return name


def _missing(mapping: Path, folder: str) -> str:
    raise BenchmarkFormatError(mapping, f"has no name for class folder {folder!r}")
