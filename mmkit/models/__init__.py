"""Models composed from mmkit encoders.

``from mmkit.models import flava_model, flava_model_for_pretraining, FLAVAConfig``
"""

from mmkit.models.flava import CodebookConfig, FLAVAConfig, FLAVAModel, FLAVAOutput, PretrainingConfig, flava_model
from mmkit.models.flava_pretraining import FLAVAForPreTraining, FLAVAPretrainingOutput, flava_model_for_pretraining

__all__ = [
    "CodebookConfig",
    "FLAVAConfig",
    "FLAVAForPreTraining",
    "FLAVAModel",
    "FLAVAOutput",
    "FLAVAPretrainingOutput",
    "PretrainingConfig",
    "flava_model",
    "flava_model_for_pretraining",
]
