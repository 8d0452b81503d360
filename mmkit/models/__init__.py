"""Models composed from mmkit encoders.

``from mmkit.models import flava_model, flava_model_for_pretraining, FLAVAConfig``; CLIP and SigLIP, from
the same blocks: ``clip_model``, ``siglip_model`` (:class:`DualEncoderModel`).

Loading, one function per family, each telling mmkit's layout from transformers' and taking a path or a
hub name: ``load_flava(path_or_name, pretraining=False)`` (:mod:`~mmkit.models.flava_load`),
``load_dual_encoder(path_or_name)`` (CLIP and SigLIP, :mod:`~mmkit.models.dual_encoder_load`), and
``load(path_or_name)`` for whichever family the checkpoint holds (:mod:`~mmkit.models.checkpoint`).
Each model's transformers layout is two modules, exported here: its key map (``flava_keys``,
``clip_keys``) and its config map (``flava_config_map``, ``clip_config_map``). Files are read and loaded
through :mod:`mmkit.utils.weights`, after :mod:`mmkit.models.fit_check` has compared the checkpoint's
tensor shapes (file headers) with the model its config describes (built on the meta device).
"""

from mmkit.models.checkpoint import checkpoint_family, export_config, load
from mmkit.models.clip import (
    CLIPConfig,
    DualEncoderConfig,
    DualEncoderForPreTraining,
    DualEncoderModel,
    DualEncoderOutput,
    SigLIPConfig,
    clip_model,
    dual_encoder_for_pretraining,
    dual_encoder_model,
    siglip_model,
)
from mmkit.models.clip_config_map import (
    clip_config_from_hf,
    clip_config_to_hf,
    siglip_config_from_hf,
    siglip_config_to_hf,
)
from mmkit.models.clip_keys import clip_from_hf, clip_to_hf, siglip_from_hf, siglip_to_hf
from mmkit.models.contrastive import EmbeddingGrads, gradient_term
from mmkit.models.dual_encoder_load import dual_encoder_config, load_dual_encoder, save_dual_encoder_hf
from mmkit.models.flava import CodebookConfig, FLAVAConfig, FLAVAModel, FLAVAOutput, PretrainingConfig, flava_model
from mmkit.models.flava_classification import (
    ClassificationHead,
    ClassificationOutput,
    FLAVAForClassification,
    flava_model_for_classification,
    load_classifier,
)
from mmkit.models.flava_config_map import flava_config_from_hf, flava_config_to_hf, flava_hf_unsupported
from mmkit.models.flava_keys import flava_from_hf, flava_pretraining_from_hf, flava_pretraining_to_hf, flava_to_hf
from mmkit.models.flava_load import load_flava, save_flava_hf
from mmkit.models.flava_objectives import (
    FLAVA_OBJECTIVES,
    MaskedPrediction,
    Objective,
    PretrainingInputs,
    PretrainingModel,
    Views,
    head_build_order,
    reporting_order,
    trains_on,
)
from mmkit.models.flava_pretraining import (
    RANDOM_CODEBOOK,
    FLAVAForPreTraining,
    FLAVAPretrainingOutput,
    RandomCodebookWarning,
    flava_model_for_pretraining,
    random_codebook,
    resolve_codebook_config,
)
from mmkit.models.materialize import initialize_flava, materialize_flava
from mmkit.models.tower_init import init_towers, resolve_tower_configs

__all__ = [
    "FLAVA_OBJECTIVES",
    "RANDOM_CODEBOOK",
    "CLIPConfig",
    "ClassificationHead",
    "ClassificationOutput",
    "CodebookConfig",
    "DualEncoderConfig",
    "DualEncoderForPreTraining",
    "DualEncoderModel",
    "DualEncoderOutput",
    "EmbeddingGrads",
    "FLAVAConfig",
    "FLAVAForClassification",
    "FLAVAForPreTraining",
    "FLAVAModel",
    "FLAVAOutput",
    "FLAVAPretrainingOutput",
    "MaskedPrediction",
    "Objective",
    "PretrainingConfig",
    "PretrainingInputs",
    "PretrainingModel",
    "RandomCodebookWarning",
    "SigLIPConfig",
    "Views",
    "checkpoint_family",
    "clip_config_from_hf",
    "clip_config_to_hf",
    "clip_from_hf",
    "clip_model",
    "clip_to_hf",
    "dual_encoder_config",
    "dual_encoder_for_pretraining",
    "dual_encoder_model",
    "export_config",
    "flava_config_from_hf",
    "flava_config_to_hf",
    "flava_from_hf",
    "flava_hf_unsupported",
    "flava_model",
    "flava_model_for_classification",
    "flava_model_for_pretraining",
    "flava_pretraining_from_hf",
    "flava_pretraining_to_hf",
    "flava_to_hf",
    "gradient_term",
    "head_build_order",
    "init_towers",
    "initialize_flava",
    "load",
    "load_classifier",
    "load_dual_encoder",
    "load_flava",
    "materialize_flava",
    "random_codebook",
    "reporting_order",
    "resolve_codebook_config",
    "resolve_tower_configs",
    "save_dual_encoder_hf",
    "save_flava_hf",
    "siglip_config_from_hf",
    "siglip_config_to_hf",
    "siglip_from_hf",
    "siglip_model",
    "siglip_to_hf",
    "trains_on",
]
