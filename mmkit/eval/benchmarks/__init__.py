"""Readers for the layouts evaluation benchmarks ship in, all yielding the same :class:`Sample`.

=========  ==========================================================================================
layout     what ``path`` is, and the layout's own keys
=========  ==========================================================================================
wds        CLIP_benchmark's WebDataset folder: ``classnames.txt``, ``zeroshot_classification_templates.txt``,
           ``<split>/*.tar`` (``<key>.webp|png|jpg`` + ``<key>.cls``, or ``.txt`` captions with
           ``dataset_type.txt`` = ``retrieval``); local or remote (``storage_options``)
folder     ``<path>/<split>/<class>/<image>``; ``classnames``: a mapping file (``LOC_synset_mapping.txt``)
cifar      the extracted CIFAR-10/100 archive (binary or python version)
mnist      the folder with the four IDX files (gzipped or not)
coco       ``annotations`` (the captions JSON) and ``images`` (the image folder), relative to ``path``
karpathy   ``annotations`` (``dataset_coco.json`` / ``dataset_flickr30k.json``); images at
           ``<path>/<filepath>/<filename>`` (or ``<path>/<images>/<filename>``)
parquet    a file, glob or hub-style folder; ``image_column``, ``label_column`` or ``text_column``
=========  ==========================================================================================

:func:`open_benchmark` builds one from a layout name and its keys (unknown keys are an error naming
the valid ones).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from mmkit.eval.benchmarks.base import BenchmarkFormatError, BenchmarkSet, Sample, clean_template
from mmkit.eval.benchmarks.cifar import Cifar
from mmkit.eval.benchmarks.coco import CocoCaptions, KarpathySplit
from mmkit.eval.benchmarks.folder import ClassFolders
from mmkit.eval.benchmarks.mnist import Mnist
from mmkit.eval.benchmarks.parquet import ParquetSet
from mmkit.eval.benchmarks.wds import WdsBenchmark
from mmkit.utils.errors import InputError

LAYOUTS: dict[str, type[BenchmarkSet]] = {
    "wds": WdsBenchmark,
    "folder": ClassFolders,
    "cifar": Cifar,
    "mnist": Mnist,
    "coco": CocoCaptions,
    "karpathy": KarpathySplit,
    "parquet": ParquetSet,
}


def layout_keys(layout: str) -> list[str]:
    """The keys a layout takes beside ``path`` and ``split``."""
    params = inspect.signature(LAYOUTS[layout].__init__).parameters
    return [p for p in params if p not in ("self", "path", "split")]


def open_benchmark(layout: str, path: str | Path, split: str, **keys: Any) -> BenchmarkSet:
    """The reader of ``layout`` on ``path``'s ``split``, with the layout's own ``keys``.

    Raises:
        ValueError: an unknown layout or key, naming the valid ones.
    """
    if layout not in LAYOUTS:
        raise InputError(f"unknown layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    valid = layout_keys(layout)
    unknown = sorted(set(keys) - set(valid))
    if unknown:
        raise InputError(
            f"layout {layout!r} has no key(s) {', '.join(unknown)}; its keys: {', '.join(valid) or 'none'}"
        )
    return LAYOUTS[layout](path, split, **keys)


__all__ = [
    "LAYOUTS",
    "BenchmarkFormatError",
    "BenchmarkSet",
    "Cifar",
    "ClassFolders",
    "CocoCaptions",
    "KarpathySplit",
    "Mnist",
    "ParquetSet",
    "Sample",
    "WdsBenchmark",
    "clean_template",
    "layout_keys",
    "open_benchmark",
]
