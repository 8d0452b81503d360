"""Models composed from mmkit encoders.

``from mmkit.models import flava_model, flava_model_for_pretraining, FLAVAConfig``; the encoders of any
FLAVA checkpoint (mmkit export or transformers directory): ``load_flava_model(path)``.
CLIP and SigLIP, from the same blocks: ``clip_model``, ``siglip_model`` (:class:`DualEncoderModel`);
any CLIP/SigLIP checkpoint: ``load_dual_encoder(path)``. Each model's transformers layout (key map,
config map, directory reader and writer) is in its ``*_hf`` module and exported here; files are read and
loaded through :mod:`mmkit.utils.weights`, after :mod:`mmkit.models.fit_check` has compared the
checkpoint's tensor shapes (file headers) with the model its config describes (built on the meta device).
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
from mmkit.models.clip_hf import (
    clip_config_from_hf,
    clip_config_to_hf,
    clip_from_hf,
    clip_model_from_hf,
    clip_to_hf,
    export_config,
    load_dual_encoder,
    save_dual_encoder_hf,
    siglip_config_from_hf,
    siglip_config_to_hf,
    siglip_from_hf,
    siglip_model_from_hf,
    siglip_to_hf,
)
from mmkit.models.contrastive import EmbeddingGrads, gradient_term
from mmkit.models.flava import CodebookConfig, FLAVAConfig, FLAVAModel, FLAVAOutput, PretrainingConfig, flava_model
from mmkit.models.flava_classification import (
    ClassificationHead,
    ClassificationOutput,
    FLAVAForClassification,
    flava_model_for_classification,
    load_classifier,
)
from mmkit.models.flava_hf import (
    config_from_hf,
    config_to_hf,
    flava_from_hf,
    flava_model_for_pretraining_from_hf,
    flava_pretraining_from_hf,
    flava_pretraining_to_hf,
    flava_to_hf,
    hf_unsupported,
    load_hf_checkpoint,
    save_hf_checkpoint,
)
from mmkit.models.flava_load import flava_model_from_hf, load_flava_model, load_flava_weights
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
    "Objective",
    "PretrainingConfig",
    "RandomCodebookWarning",
    "SigLIPConfig",
    "Views",
    "clip_config_from_hf",
    "clip_config_to_hf",
    "clip_from_hf",
    "clip_model",
    "clip_model_from_hf",
    "clip_to_hf",
    "config_from_hf",
    "config_to_hf",
    "dual_encoder_for_pretraining",
    "dual_encoder_model",
    "export_config",
    "flava_from_hf",
    "flava_model",
    "flava_model_for_classification",
    "flava_model_for_pretraining",
    "flava_model_for_pretraining_from_hf",
    "flava_model_from_hf",
    "flava_pretraining_from_hf",
    "flava_pretraining_to_hf",
    "flava_to_hf",
    "gradient_term",
    "hf_unsupported",
    "init_towers",
    "initialize_flava",
    "load_classifier",
    "load_dual_encoder",
    "load_flava_model",
    "load_flava_weights",
    "load_hf_checkpoint",
    "materialize_flava",
    "random_codebook",
    "resolve_codebook_config",
    "resolve_tower_configs",
    "save_dual_encoder_hf",
    "save_hf_checkpoint",
    "siglip_config_from_hf",
    "siglip_config_to_hf",
    "siglip_from_hf",
    "siglip_model",
    "siglip_model_from_hf",
    "siglip_to_hf",
]
