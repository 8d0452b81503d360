"""FLAVA's image transform: the default path (two resizes, float in the workers) and the fast one
(one resize chain, uint8 until the device) against hand computations."""

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from mmkit.data import ImageTransform, ImageTransformConfig
from mmkit.data.collators import Batch
from mmkit.data.transforms import CLIP_MEAN, CLIP_STD, center_crop_box


def _picture(seed=0, size=(80, 64)):
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray(torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8).numpy())


def test_fast_images_are_uint8_and_finish_on_the_device_like_the_default_path():
    image = _picture()
    default = ImageTransform(ImageTransformConfig(32, 16))
    fast = ImageTransform(ImageTransformConfig(32, 16, fast=True))
    slow_out, fast_out = default(image), fast(image)
    assert fast_out["image"].dtype == torch.uint8 and fast_out["codebook_image"].dtype == torch.uint8
    # the encoder image: the same crop and resize, normalised later instead of in the worker
    batch = fast.finish(
        Batch(pixel_values=fast_out["image"][None], codebook_pixel_values=fast_out["codebook_image"][None])
    )
    torch.testing.assert_close(batch.pixel_values[0], slow_out["image"], atol=1e-5, rtol=0)
    mean, std = torch.tensor(CLIP_MEAN).view(3, 1, 1), torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(batch.pixel_values[0], (fast_out["image"].float() / 255 - mean) / std, atol=1e-5, rtol=0)
    # the tokenizer image: the encoder image's 2x2 block means (one resize chain), then 0.8 x + 0.1
    enc = pil_to_tensor(image.resize((32, 32), Image.Resampling.BICUBIC, box=center_crop_box(80, 64))).float()
    blocks = enc.reshape(3, 16, 2, 16, 2).mean(dim=(2, 4))
    assert (fast_out["codebook_image"].float() - blocks).abs().max() <= 0.5 + 1e-4  # PIL rounds the mean
    torch.testing.assert_close(batch.codebook_pixel_values[0], 0.8 * fast_out["codebook_image"].float() / 255 + 0.1)
    assert batch.codebook_pixel_values.min() >= 0.1 - 1e-6 and batch.codebook_pixel_values.max() <= 0.9 + 1e-6
    # the default path's batches pass through unchanged
    plain = Batch(pixel_values=slow_out["image"][None])
    assert default.finish(plain).pixel_values is plain.pixel_values


def test_fast_codebook_size_that_does_not_divide_resizes_the_encoder_image():
    out = ImageTransform(ImageTransformConfig(32, 12, fast=True))(_picture(1))
    assert out["codebook_image"].shape == (3, 12, 12) and out["image"].shape == (3, 32, 32)
