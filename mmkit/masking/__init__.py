"""Masking: BEiT block masks for images, BERT token masks for text, ITM negatives."""

from mmkit.masking.block import BlockMaskConfig, BlockMaskGenerator
from mmkit.masking.itm import itm_negatives
from mmkit.masking.text import IGNORE_INDEX, TokenMasker

__all__ = ["IGNORE_INDEX", "BlockMaskConfig", "BlockMaskGenerator", "TokenMasker", "itm_negatives"]
