"""Decoding a record's raw bytes: its text (UTF-8 or a JSON field) and its image (an RGB ``PIL.Image``,
16-bit grayscale scaled, transparency composited over white, decompression bombs refused from the header).

The sources (:mod:`mmkit.data.sources`) hand out raw bytes; decoding happens here, in the loader's
workers, where a record that cannot be decoded becomes a skipped record instead of crashing the run.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import Any

from mmkit.data.records import Record
from mmkit.utils.errors import InputError

#: The default pixel limit (width x height) of :func:`decode_image`: a larger image is refused before its
#: pixels are decoded, as a possible decompression bomb (a small file that decodes to gigabytes, e.g. a
#: 30000x30000 one-colour PNG of a few kilobytes). It is PIL's own default ``PIL.Image.MAX_IMAGE_PIXELS``
#: (89,478,485 pixels, about 9459x9459; 256 MiB as 24-bit RGB): far above any image a vision-language model
#: is trained on (they are resized to a few hundred pixels), and the size above which PIL itself warns.
#: :func:`decode_image` reads it at each call, so assigning it (here: ``mmkit.data.decoding.MAX_IMAGE_PIXELS``;
#: ``mmkit.data.sources`` re-exports its starting value) changes the limit of every loader; a limit
#: above twice PIL's own also needs ``PIL.Image.MAX_IMAGE_PIXELS`` raised, as PIL refuses such images itself.
MAX_IMAGE_PIXELS = 89_478_485


def caption_problem(field_name: str, value: Any) -> str:
    """Why a caption value that is not a string cannot be used (``str()`` would make "None" or "3" of it)."""
    if value is None:
        return f"caption field {field_name!r} is null"
    return f"caption field {field_name!r} is not a string (got {type(value).__name__})"


def decode_text(record: Record) -> str:
    """The record's text: ``record.text``, or its raw bytes decoded as UTF-8 (``.txt``) or JSON.

    A JSON caption must be a string: null, a number, a bool, a list or an object is an error, not
    its ``str()``.

    Raises:
        ValueError: not UTF-8, invalid JSON, a missing or non-string field, or empty after stripping.
    """
    if record.text is None and "text_error" in record.meta:
        raise InputError(record.meta["text_error"])
    if record.text is None and "text_bytes" in record.meta:
        raw: bytes = record.meta["text_bytes"]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"text is not UTF-8 ({e.reason} at byte {e.start})") from None
        if record.meta.get("text_format") == ".json":
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON: {e}") from None
            field_name = record.meta.get("caption_field", "caption")
            if not isinstance(obj, dict) or field_name not in obj:
                raise InputError(f"JSON has no {field_name!r} field")
            if not isinstance(obj[field_name], str):
                raise InputError(caption_problem(field_name, obj[field_name]))
            text = obj[field_name]
        record.text = text
    text = (record.text or "").strip()
    if not text:
        raise InputError("empty text")
    return text


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


def _to_rgb(im):
    """A decoded ``PIL.Image`` as 8-bit RGB.

    * 16-bit grayscale (modes ``I;16*``, and ``I``, as which PIL opens 16-bit PNG / TIFF in some versions;
      values are taken as 0..65535) keeps its top 8 bits (``value >> 8``); a plain ``convert("RGB")`` clips
      every value above 255 to white.
    * Transparency (an alpha band, or a transparent palette entry / colour) is composited over white;
      dropping the alpha would show whatever colour the transparent pixels happen to hold.
    """
    from PIL import Image

    if im.mode in _SIXTEEN_BIT_MODES:
        import numpy as np

        values = np.asarray(im)
        gray = Image.fromarray((np.clip(values, 0, 65535) >> 8).astype(np.uint8))
        transparent = im.info.get("transparency")
        if isinstance(transparent, int):  # a 16-bit colour key (PNG tRNS)
            alpha = Image.fromarray(np.where(values == transparent, 0, 255).astype(np.uint8))
            gray = Image.merge("LA", (gray, alpha))
        im = gray
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    return im.convert("RGB")


def peek_jpeg(record: Record, max_pixels: int | None = None) -> tuple[int, int] | None:
    """``(width, height)`` of a record whose image is a complete baseline/progressive JPEG, read from its
    header without decoding a pixel; ``None`` for anything else (another format, a missing end-of-image
    marker: possibly truncated), which the caller decodes with :func:`decode_image` instead.

    Raises:
        ValueError: a JPEG over the pixel limit (as :func:`decode_image`).
    """
    from PIL import Image

    data = record.image
    # the end-of-image marker, allowing some zero padding after it (only the tail is looked at: no copy)
    if data is None or not data.startswith(b"\xff\xd8") or not data[-1024:].rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                if im.format != "JPEG" or im.mode not in ("RGB", "L", "CMYK", "YCbCr"):
                    return None
                width, height = im.size
    except (OSError, Image.DecompressionBombError, ValueError):
        return None  # let decode_image produce the reason
    if width * height > limit:
        raise InputError(
            f"image is {width}x{height} ({width * height:,} pixels), over the limit of {limit:,} pixels: "
            "a possible decompression bomb, refused before decoding (raise mmkit.data.decoding.MAX_IMAGE_PIXELS "
            "or decode_image's max_pixels to accept it)"
        )
    return width, height


def decode_image(record: Record, max_pixels: int | None = None):
    """The record's image as an RGB ``PIL.Image`` (fully decoded, so truncation is caught here).

    16-bit grayscale is scaled to 8 bits and transparency composited over white (see :func:`_to_rgb`).
    An image of more than ``max_pixels`` pixels is refused from its header, before any pixel is
    decoded: a decompression bomb costs nothing. PIL's own decompression-bomb warning is superseded by
    this check, and its error (past twice ``PIL.Image.MAX_IMAGE_PIXELS``) becomes the same ValueError.

    Args:
        record: the record; its ``image`` holds the encoded bytes.
        max_pixels: the largest width x height accepted; None: :data:`MAX_IMAGE_PIXELS` (read at each call).

    Raises:
        ValueError: no image, an image that cannot be decoded, or one over the pixel limit (naming its size
            and the limit). The loader makes each a skipped record with this reason.
    """
    from PIL import Image

    if record.image is None:
        raise InputError(record.meta.get("error", "no image"))
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    try:
        with warnings.catch_warnings():
            # the size check below replaces PIL's warning (at its MAX_IMAGE_PIXELS, this module's default)
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(record.image)) as im:
                width, height = im.size
                if width * height > limit:
                    raise _ImageTooLarge(
                        f"image is {width}x{height} ({width * height:,} pixels), over the limit of {limit:,} pixels: "
                        "a possible decompression bomb, refused before decoding (raise "
                        "mmkit.data.decoding.MAX_IMAGE_PIXELS or decode_image's max_pixels to accept it)"
                    )
                im.load()
                return _to_rgb(im)
    except _ImageTooLarge as e:
        raise InputError(str(e)) from None
    except Image.DecompressionBombError as e:  # PIL's hard limit, checked inside Image.open
        raise InputError(
            f"image refused before decoding as a possible decompression bomb: {e} (PIL's own limit is twice "
            f"PIL.Image.MAX_IMAGE_PIXELS; the limit here is {limit:,} pixels)"
        ) from None
    except Exception as e:  # PIL raises many types for bad data
        raise InputError(f"cannot decode image ({type(e).__name__}: {e})") from None


class _ImageTooLarge(Exception):
    """Raised inside :func:`decode_image` past the pixel limit (kept apart from PIL's decoding errors)."""
