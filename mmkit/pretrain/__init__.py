"""What every pretraining recipe shares: its settings (:class:`RunConfig`, :class:`PairDataConfig`), the
resume rule (:func:`frozen_fields`), whether a step's contrastive loss sees the whole accumulated batch
(:func:`whole_batch`) and the skeleton (:class:`PretrainRecipe`). A recipe adds its
model's config, data mix, collators and export; ``recipes/flava/pretrain.py`` and
``recipes/clip/pretrain.py`` are the two written on it."""

from mmkit.pretrain.builtin import make_builtin_tokenizer
from mmkit.pretrain.config import RESUMABLE, PairDataConfig, PretrainOptimConfig, RunConfig, frozen_fields, whole_batch
from mmkit.pretrain.recipe import DataPaths, PretrainRecipe, RecipeData, whole_batch_forward

__all__ = [
    "RESUMABLE",
    "DataPaths",
    "PairDataConfig",
    "PretrainOptimConfig",
    "PretrainRecipe",
    "RecipeData",
    "RunConfig",
    "frozen_fields",
    "make_builtin_tokenizer",
    "whole_batch",
    "whole_batch_forward",
]
