"""Data: sources in users' formats, image transforms, collators, deterministic sharded loading,
source mixing with exact resume, a recipe's training and held-out sources (streamed or indexed), and
the built-in "shapes" dataset.

``FLAVADataset`` and ``FLAVABatch`` are the former names of :class:`SampleDataset` and :class:`Batch`
(kept as aliases: the classes serve every model)."""

from mmkit.data.builtin import ShapesPaths, recipe_data_paths, shapes_dataset
from mmkit.data.collators import (
    Batch,
    ContrastivePairCollator,
    EncodedImages,
    ImageCollator,
    PairCollator,
    TextCollator,
    pad_sequences,
)
from mmkit.data.loader import (
    CollateWithSkips,
    DataQualityError,
    MixedBatches,
    SampleDataset,
    ShardedBatchSampler,
    Skipped,
    make_loader,
)
from mmkit.data.sources import (
    ImageFolder,
    Manifest,
    Record,
    Source,
    TarShards,
    TextLines,
    decode_image,
    decode_text,
    expand_paths,
    read_table,
)
from mmkit.data.streaming import is_url, make_stream_loader, read_token_info, resolve_shards
from mmkit.data.tasks import (
    TASKS,
    ClassificationCollator,
    ClassificationDataset,
    LabeledPairs,
    LabeledRows,
    LabeledText,
    ShapesTask,
    collate_classification,
)
from mmkit.data.training_sources import HeldOutRecords, TrainingSource, heldout_source
from mmkit.data.transforms import ImageTransform, ImageTransformConfig
from mmkit.data.vqa_answers import (
    build_answer_vocab,
    normalize_answer,
    vqa_answer_score,
    vqa_official_accuracy,
    vqa_official_score,
    vqa_soft_scores,
)

FLAVADataset = SampleDataset
FLAVABatch = Batch

__all__ = [
    "TASKS",
    "Batch",
    "ClassificationCollator",
    "ClassificationDataset",
    "CollateWithSkips",
    "ContrastivePairCollator",
    "DataQualityError",
    "EncodedImages",
    "FLAVABatch",
    "FLAVADataset",
    "HeldOutRecords",
    "ImageCollator",
    "ImageFolder",
    "ImageTransform",
    "ImageTransformConfig",
    "LabeledPairs",
    "LabeledRows",
    "LabeledText",
    "Manifest",
    "MixedBatches",
    "PairCollator",
    "Record",
    "SampleDataset",
    "ShapesPaths",
    "ShapesTask",
    "ShardedBatchSampler",
    "Skipped",
    "Source",
    "TarShards",
    "TextCollator",
    "TextLines",
    "TrainingSource",
    "build_answer_vocab",
    "collate_classification",
    "decode_image",
    "decode_text",
    "expand_paths",
    "heldout_source",
    "is_url",
    "make_loader",
    "make_stream_loader",
    "normalize_answer",
    "pad_sequences",
    "read_table",
    "read_token_info",
    "recipe_data_paths",
    "resolve_shards",
    "shapes_dataset",
    "vqa_answer_score",
    "vqa_official_accuracy",
    "vqa_official_score",
    "vqa_soft_scores",
]
