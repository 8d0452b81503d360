"""Models composed from mmkit encoders: ``from mmkit.models import flava_model, FLAVAConfig``."""

from mmkit.models.flava import FLAVAConfig, FLAVAModel, FLAVAOutput, flava_model

__all__ = ["FLAVAConfig", "FLAVAModel", "FLAVAOutput", "flava_model"]
