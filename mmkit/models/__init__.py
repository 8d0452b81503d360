"""Models composed from mmkit encoders.

``from mmkit.models import flava_model, flava_model_for_pretraining, FLAVAConfig``; the encoders of any
FLAVA checkpoint (mmkit export or transformers directory): ``load_flava_model(path)``.
CLIP and SigLIP, from the same blocks: ``clip_model``, ``siglip_model`` (:class:`DualEncoderModel`);
any CLIP/SigLIP checkpoint: ``load_dual_encoder(path)``.
"""

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
from mmkit.models.clip_hf import export_config, load_dual_encoder
from mmkit.models.flava import CodebookConfig, FLAVAConfig, FLAVAModel, FLAVAOutput, PretrainingConfig, flava_model
from mmkit.models.flava_classification import (
    ClassificationHead,
    ClassificationOutput,
    FLAVAForClassification,
    LoadReport,
    flava_model_for_classification,
    load_classifier,
)
from mmkit.models.flava_hf import EncoderLoadReport, hf_unsupported, load_flava_model
from mmkit.models.flava_objectives import FLAVA_OBJECTIVES, Objective, Views
from mmkit.models.flava_pretraining import (
    RANDOM_CODEBOOK,
    FLAVAForPreTraining,
    FLAVAPretrainingOutput,
    RandomCodebookWarning,
    flava_model_for_pretraining,
    random_codebook,
    resolve_codebook_config,
)
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
    "EncoderLoadReport",
    "FLAVAConfig",
    "FLAVAForClassification",
    "FLAVAForPreTraining",
    "FLAVAModel",
    "FLAVAOutput",
    "FLAVAPretrainingOutput",
    "LoadReport",
    "Objective",
    "PretrainingConfig",
    "RandomCodebookWarning",
    "SigLIPConfig",
    "Views",
    "clip_model",
    "dual_encoder_for_pretraining",
    "dual_encoder_model",
    "export_config",
    "flava_model",
    "flava_model_for_classification",
    "flava_model_for_pretraining",
    "hf_unsupported",
    "init_towers",
    "load_classifier",
    "load_dual_encoder",
    "load_flava_model",
    "random_codebook",
    "resolve_codebook_config",
    "resolve_tower_configs",
    "siglip_model",
]
