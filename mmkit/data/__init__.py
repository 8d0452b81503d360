"""Data: collators now; sources, transforms, mixing and the built-in dataset follow."""

from mmkit.data.collators import FLAVABatch, ImageCollator, PairCollator, TextCollator, pad_sequences

__all__ = ["FLAVABatch", "ImageCollator", "PairCollator", "TextCollator", "pad_sequences"]
