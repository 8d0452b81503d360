"""What every pretraining recipe shares: its settings (:class:`RunConfig`, :class:`PairDataConfig`), the
resume rule (:func:`frozen_fields`) and the skeleton (:class:`PretrainRecipe`). A recipe adds its
model's config, data mix, collators and export; ``recipes/flava/pretrain.py`` and
``recipes/clip/pretrain.py`` are the two written on it."""

from mmkit.pretrain.builtin import make_builtin_tokenizer
from mmkit.pretrain.config import RESUMABLE, PairDataConfig, RunConfig, frozen_fields
from mmkit.pretrain.recipe import PretrainRecipe

__all__ = ["RESUMABLE", "PairDataConfig", "PretrainRecipe", "RunConfig", "frozen_fields", "make_builtin_tokenizer"]
