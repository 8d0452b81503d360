"""JPEG decoding on the training device (``ImageTransformConfig.decode="device"``): the workers only read
headers and crop boxes; ``finish`` decodes, crops, resizes and normalises where the batch is. Tested here
with the CPU as the device (the same torchvision call); on CUDA it is nvJPEG."""

from __future__ import annotations

import io
import random

import pytest
import torch

from mmkit.data import ImageTransform, ImageTransformConfig, PairCollator, SampleDataset
from mmkit.data.builtin import make_example
from mmkit.data.sources import Record
from mmkit.masking import BlockMaskGenerator, TokenMasker


def _jpeg(seed: int, size: tuple[int, int] = (80, 60)) -> tuple[bytes, str]:
    image, caption = make_example(random.Random(seed))
    buf = io.BytesIO()
    image.resize(size).save(buf, format="JPEG", quality=95)
    return buf.getvalue(), caption


def _png(seed: int) -> bytes:
    image, _ = make_example(random.Random(seed))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _Records:
    name = "mem"

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def _batch(records, tokenizer, decode: str, random_crop: bool = False):
    cfg = ImageTransformConfig(image_size=32, codebook_image_size=16, fast=True, decode=decode, random_crop=random_crop)
    transform = ImageTransform(cfg)
    ds = SampleDataset(_Records(records), "pair", transform, tokenizer, seed=3)
    tok = tokenizer
    collate = PairCollator(
        BlockMaskGenerator.flava(4),
        TokenMasker(tok.vocab_size, tok.mask_token_id, tok.special_token_ids, tok.pad_token_id),
        itm_negative_prob=0.0,
    )
    samples = [ds[i] for i in range(len(records))]
    if not all(isinstance(x, dict) for x in samples):
        return transform, None, samples
    return transform, collate(samples, generator=torch.Generator().manual_seed(0)), samples


@pytest.mark.parametrize("random_crop", [False, True])
def test_device_decode_matches_worker_decode(tokenizer, random_crop):
    records = [Record(f"k{i}", *_jpeg(i, (80 + 8 * i, 60))) for i in range(3)]
    records.insert(1, Record("png", _png(9), "a png among jpegs"))
    t_dev, dev, samples = _batch(records, tokenizer, "device", random_crop)
    t_ref, ref, _ = _batch(records, tokenizer, "worker", random_crop)
    assert [("jpeg" in s) for s in samples] == [True, False, True, True]  # the PNG is decoded in its worker
    assert dev.encoded_images.rows.tolist() == [0, 2, 3] and dev.pixel_values[0].abs().sum() == 0
    dev, ref = t_dev.finish(dev), t_ref.finish(ref)
    assert dev.encoded_images is None and dev.pixel_values.dtype == torch.float32
    assert "crop_box" not in dev.model_inputs() and "encoded_images" not in dev.model_inputs()
    # the PNG row is the worker's result exactly; the JPEG rows differ only by the resampler (torch's
    # antialiased bicubic vs PIL's): a few grey levels at edges, nothing systematic
    assert torch.equal(dev.pixel_values[1], ref.pixel_values[1])
    std = torch.tensor(ImageTransformConfig().std).view(3, 1, 1)
    levels = (dev.pixel_values - ref.pixel_values).abs() * std * 255
    assert levels.mean() < 1.5 and levels.max() < 60, (levels.mean(), levels.max())
    cb_levels = (dev.codebook_pixel_values - ref.codebook_pixel_values).abs() * 255 / 0.8
    assert cb_levels.mean() < 1.5, cb_levels.mean()


def test_truncated_jpeg_is_decoded_and_skipped_in_the_worker(tokenizer):
    data, caption = _jpeg(1)
    records = [Record("cut", data[: len(data) // 2], caption), Record("ok", *_jpeg(2))]
    _, _, samples = _batch(records, tokenizer, "device")
    assert not isinstance(samples[0], dict) and "jpeg" in samples[1]  # Skipped, with PIL's reason
    assert "truncated" in samples[0].reason, samples[0].reason


def test_decode_choice_is_checked():
    with pytest.raises(ValueError, match="decode must be 'worker' or 'device'"):
        ImageTransformConfig(decode="gpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (nvJPEG)")
def test_cuda_decode_matches_cpu_decode(tokenizer):
    records = [Record(f"k{i}", *_jpeg(i, (96, 64))) for i in range(4)]
    t, cpu_batch, _ = _batch(records, tokenizer, "device")
    _, gpu_batch, _ = _batch(records, tokenizer, "device")
    cpu = t.finish(cpu_batch).pixel_values
    gpu = t.finish(gpu_batch.to("cuda")).pixel_values.cpu()
    assert (cpu - gpu).abs().mean() < 0.02  # nvJPEG's IDCT differs from libjpeg's by a grey level at most
