"""FLAVA's input transforms: one decode gives the encoder pixels and the dVAE pixels of the same crop.

Image (released FLAVA processor, see ``docs/FLAVA.md``): resize the shorter side and centre-
crop (or, with ``random_crop``, a random resized crop), then
* encoder input: ``image_size`` (224) bicubic, scaled to [0,1], normalised with CLIP's mean/std;
* tokenizer input: the same crop at ``codebook_image_size`` (112) with Lanczos, scaled to
  [0,1], then ``0.8 x + 0.1`` (:func:`dalle_preprocess`).
Every random choice comes from a ``torch.Generator`` the caller seeds per sample, so a
resumed run crops exactly as the uninterrupted one would.

The dVAE's input map (:func:`~mmkit.utils.pixels.dalle_preprocess`, ``DALLE_EPS``) lives in
:mod:`mmkit.utils.pixels`, below this package and ``mmkit.tokenizers`` alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mmkit.utils.errors import InputError
from mmkit.utils.pixels import DALLE_EPS as DALLE_EPS
from mmkit.utils.pixels import dalle_preprocess as dalle_preprocess

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ImageTransformConfig:
    """Attributes:
    image_size: encoder input side (224 for FLAVA).
    codebook_image_size: tokenizer input side (112), or 0 to skip the tokenizer input.
    random_crop: random resized crop (``scale``, ``ratio``) instead of resize + centre crop.
    mean, std: encoder normalisation (CLIP's).
    fast: less CPU per sample in the data workers: one resize chain (the tokenizer input is the
        encoder image reduced by an integer factor with a box filter, not a second Lanczos resize of
        the original) and ``uint8`` outputs, normalised on the training device by
        :meth:`ImageTransform.finish`. Off by default: the released FLAVA resizes twice.
    decode: ``"worker"`` (PIL in the data workers) or ``"device"``: JPEG files travel encoded and
        :meth:`ImageTransform.finish` decodes them on the training device
        (``torchvision.io.decode_jpeg(device="cuda")``, nvJPEG), crops, resizes (bicubic, antialiased)
        and normalises there; the workers only read the header for the crop box. Other formats and
        JPEGs without an end-of-image marker are decoded in the workers as with ``fast``. Implies ``fast``.
    """

    image_size: int = 224
    codebook_image_size: int = 112
    random_crop: bool = False
    fast: bool = False
    scale: tuple[float, float] = (0.9, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    decode: str = "worker"

    def __post_init__(self) -> None:
        if self.decode not in ("worker", "device"):
            raise InputError(f"decode must be 'worker' or 'device', got {self.decode!r}")


def random_resized_crop_box(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], g: torch.Generator
) -> tuple[int, int, int, int]:
    """Box ``(left, top, right, bottom)`` of a crop with area fraction ~ U(scale) and log-uniform
    aspect ratio in ``ratio`` (10 tries, then the largest centred crop of an allowed ratio)."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(u[2] * (width - w + 1))
            top = int(u[3] * (height - h + 1))
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def center_crop_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The largest centred square."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _decode_jpegs(files: list[Tensor], device: torch.device) -> list[Tensor]:
    """``uint8 (3, H, W)`` RGB images on ``device`` from encoded JPEG files (host tensors), in one batched
    call (nvJPEG on CUDA). TorchCodec (``pip install torchcodec``, the decoders that replace torchvision's
    from torchvision 0.29 on) when installed, else ``torchvision.io.decode_jpeg``."""
    try:
        from torchcodec.decoders import decode_jpeg

        return decode_jpeg(files, mode="RGB", device=device)
    except ImportError:
        import warnings

        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():  # deprecated in favour of TorchCodec, still the same kernel
            warnings.simplefilter("ignore", DeprecationWarning)
            return decode_jpeg(files, mode=ImageReadMode.RGB, device=device)


class ImageTransform:
    """PIL image -> ``{"image": (3, S, S) normalised, "codebook_image": (3, s, s) in [0.1, 0.9]}``."""

    def __init__(self, config: ImageTransformConfig | None = None) -> None:
        self.config = config or ImageTransformConfig()
        mean = torch.tensor(self.config.mean).view(3, 1, 1)
        std = torch.tensor(self.config.std).view(3, 1, 1)
        self._scale = 1.0 / (255.0 * std)
        self._shift = -mean / std

    def finish(self, batch):
        """On the training device: decode the batch's still-encoded JPEGs (``decode="device"``), then a
        ``uint8`` batch's pixels -> normalised encoder pixels and ``[0.1, 0.9]`` tokenizer pixels (what the
        default path makes in the workers). Other batches pass through unchanged. Works on a
        :class:`~mmkit.data.collators.Batch` in place."""
        if getattr(batch, "encoded_images", None) is not None:
            self._decode(batch)
        px = batch.pixel_values
        if px is not None and px.dtype == torch.uint8:
            shift, scale = self._shift.to(px.device), self._scale.to(px.device)
            batch.pixel_values = torch.addcmul(shift, px.float(), scale)
        cb = batch.codebook_pixel_values
        if cb is not None and cb.dtype == torch.uint8:
            batch.codebook_pixel_values = dalle_preprocess(cb.float().mul_(1 / 255))
        return batch

    def from_record(self, record, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """A :class:`~mmkit.data.sources.Record`'s image -> the sample's image fields. With
        ``decode="device"`` a complete JPEG is not decoded here: the sample carries the file (``"jpeg"``),
        its crop box (``"crop_box"``) and all-zero ``uint8`` placeholders for the pixels."""
        from mmkit.data.decoding import decode_image, peek_jpeg

        cfg = self.config
        size = peek_jpeg(record) if cfg.decode == "device" else None
        if size is None:
            return self(decode_image(record), generator)
        w, h = size
        if cfg.random_crop:
            box = random_resized_crop_box(w, h, cfg.scale, cfg.ratio, generator or torch.Generator())
        else:
            box = center_crop_box(w, h)
        out = {
            "image": torch.zeros(3, cfg.image_size, cfg.image_size, dtype=torch.uint8),
            "jpeg": torch.frombuffer(bytearray(record.image), dtype=torch.uint8),
            "crop_box": torch.tensor(box, dtype=torch.int64),
        }
        if cfg.codebook_image_size:
            out["codebook_image"] = torch.zeros(3, cfg.codebook_image_size, cfg.codebook_image_size, dtype=torch.uint8)
        return out

    def _decode(self, batch) -> None:
        """Decode ``batch.encoded_images`` where ``batch.pixel_values`` lives, crop, resize into their rows."""
        import torch.nn.functional as F

        enc, device = batch.encoded_images, batch.pixel_values.device
        try:
            images = _decode_jpegs(enc.data, device)
        except (RuntimeError, ValueError) as e:
            raise InputError(
                f"decoding {len(enc.data)} JPEG files on {device} failed ({e}); "
                "set data.image_decode=worker to decode (and skip bad files) in the data workers"
            ) from None
        s, cb = self.config.image_size, self.config.codebook_image_size
        for row, image, (left, top, right, bottom) in zip(enc.rows.tolist(), images, enc.boxes.tolist(), strict=True):
            crop = image[:, top:bottom, left:right].unsqueeze(0).float()
            big = F.interpolate(crop, size=(s, s), mode="bicubic", antialias=True, align_corners=False)
            big = big.round_().clamp_(0, 255)
            batch.pixel_values[row] = big[0].to(torch.uint8)
            if cb and batch.codebook_pixel_values is not None:
                if s % cb == 0:
                    small = F.avg_pool2d(big, s // cb)  # the box filter of the fast path
                else:
                    small = F.interpolate(big, size=(cb, cb), mode="bicubic", antialias=True, align_corners=False)
                batch.codebook_pixel_values[row] = small.round_().clamp_(0, 255)[0].to(torch.uint8)
        batch.encoded_images = None

    def __call__(self, image, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        cfg = self.config
        w, h = image.size
        if cfg.random_crop:
            box = random_resized_crop_box(w, h, cfg.scale, cfg.ratio, generator or torch.Generator())
        else:
            box = center_crop_box(w, h)
        size = (cfg.image_size, cfg.image_size)
        resized = image.resize(size, Image.Resampling.BICUBIC, box=box)
        pixels = pil_to_tensor(resized)
        if cfg.fast or cfg.decode == "device":
            return self._fast(resized, pixels)
        # (x / 255 - mean) / std as one multiply-add: this runs per sample in the data workers
        out = {"image": torch.addcmul(self._shift, pixels.float(), self._scale)}
        if cfg.codebook_image_size:
            cb = (cfg.codebook_image_size, cfg.codebook_image_size)
            small = pil_to_tensor(image.resize(cb, Image.Resampling.LANCZOS, box=box))
            out["codebook_image"] = dalle_preprocess(small.float().mul_(1 / 255))
        return out

    def _fast(self, resized, pixels: Tensor) -> dict[str, Tensor]:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor

        out = {"image": pixels}
        s, cb = self.config.image_size, self.config.codebook_image_size
        if cb:
            if s % cb == 0:
                small = resized.reduce(s // cb)  # box filter: each token pixel the mean of a block
            else:
                small = resized.resize((cb, cb), Image.Resampling.LANCZOS)
            out["codebook_image"] = pil_to_tensor(small)
        return out
