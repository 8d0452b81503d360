"""Data: sources in users' formats, FLAVA transforms, collators, deterministic sharded loading,
source mixing with exact resume, and the built-in "shapes" dataset."""

from mmkit.data.builtin import ShapesPaths, recipe_data_paths, shapes_dataset
from mmkit.data.collators import (
    ContrastivePairCollator,
    EncodedImages,
    FLAVABatch,
    ImageCollator,
    PairCollator,
    TextCollator,
    pad_sequences,
)
from mmkit.data.loader import (
    CollateWithSkips,
    DataQualityError,
    FLAVADataset,
    MixedBatches,
    ShardedBatchSampler,
    Skipped,
    make_loader,
)
from mmkit.data.sources import ImageFolder, Manifest, Record, Source, TarShards, TextLines, expand_paths
from mmkit.data.transforms import FLAVAImageTransform, ImageTransformConfig

__all__ = [
    "CollateWithSkips",
    "ContrastivePairCollator",
    "DataQualityError",
    "EncodedImages",
    "FLAVABatch",
    "FLAVADataset",
    "FLAVAImageTransform",
    "ImageCollator",
    "ImageFolder",
    "ImageTransformConfig",
    "Manifest",
    "MixedBatches",
    "PairCollator",
    "Record",
    "ShapesPaths",
    "ShardedBatchSampler",
    "Skipped",
    "Source",
    "TarShards",
    "TextCollator",
    "TextLines",
    "expand_paths",
    "make_loader",
    "pad_sequences",
    "recipe_data_paths",
    "shapes_dataset",
]
