"""Collators: lists of transformed samples -> the batches :class:`~mmkit.models.FLAVAForPreTraining` takes.

A *sample* is a dict of tensors made by the data transforms:

==================  =====================  ==================================================
key                 shape / dtype          meaning
==================  =====================  ==================================================
``image``           ``(3, H, W)`` float    encoder pixels, normalised
``codebook_image``  ``(3, h, w)`` float    tokenizer input (``0.8 x + 0.1`` of [0,1] pixels)
``image_tokens``    ``(Np,)`` int64        precomputed tokenizer ids (instead of ``codebook_image``)
``input_ids``       ``(L_i,)`` int64       WordPiece ids with ``[CLS]``/``[SEP]``, unpadded
``word_ids``        ``(L_i,)`` int64       optional: word index per token (whole-word masking)
==================  =====================  ==================================================

Each collator owns a seeded :class:`torch.Generator` for its masks and negatives, with
``state_dict`` / ``load_state_dict``; inside a ``DataLoader`` worker that stream is re-seeded
once per worker (``seed + 1000 * worker_id``). The data loaders of :mod:`mmkit.data.loader`
instead pass a generator seeded per batch (``generator=``), which makes every batch
independent of which worker builds it and exactly reproducible after a resume.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mmkit.masking import BlockMaskGenerator, TokenMasker, itm_negatives
from mmkit.utils.errors import DataKeyError, InputError

Sample = dict[str, Tensor]


@dataclass
class EncodedImages:
    """JPEG files of some rows of a batch, still encoded: decoded on the training device by
    :meth:`~mmkit.data.ImageTransform.finish` (``ImageTransformConfig.decode="device"``).

    Attributes:
        data: ``k`` uint8 tensors ``(n_bytes,)``, the files. rows: ``(k,)`` int64, their rows in the batch.
        boxes: ``(k, 4)`` int64 crop boxes ``(left, top, right, bottom)`` in the decoded image.
    """

    data: list[Tensor]
    rows: Tensor
    boxes: Tensor


@dataclass
class Batch:
    """One batch of any kind; unused fields are None. See :meth:`FLAVAForPreTraining.forward` for shapes."""

    pixel_values: Tensor | None = None
    codebook_pixel_values: Tensor | None = None
    image_token_ids: Tensor | None = None
    patch_mask: Tensor | None = None
    input_ids: Tensor | None = None
    attention_mask: Tensor | None = None
    masked_input_ids: Tensor | None = None
    mlm_labels: Tensor | None = None
    itm_labels: Tensor | None = None
    source: str | None = None  # the data source it came from (set by MixedBatches)
    encoded_images: EncodedImages | None = None  # JPEGs to decode on the device (their pixel rows are zeros)

    @property
    def kind(self) -> str:
        """``"pair"``, ``"image"`` or ``"text"``."""
        if self.pixel_values is not None:
            return "pair" if self.input_ids is not None else "image"
        return "text"

    def __len__(self) -> int:
        for t in (self.pixel_values, self.input_ids, self.masked_input_ids, self.image_token_ids):
            if t is not None:
                return t.shape[0]
        return 0

    def model_inputs(self) -> dict[str, Tensor]:
        """The tensor fields that are set, as keyword arguments for the model."""
        return {f.name: v for f in fields(self) if isinstance(v := getattr(self, f.name), Tensor)}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device`` (still-encoded JPEGs stay where they are: the decoder
        reads them from host memory)."""
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in self.model_inputs().items()}
        return Batch(**moved, source=self.source, encoded_images=self.encoded_images)

    def pin_memory(self) -> Batch:
        pinned = {k: v.pin_memory() for k, v in self.model_inputs().items()}
        return Batch(**pinned, source=self.source, encoded_images=self.encoded_images)


class _Seeded:
    """A per-collator random stream with checkpointable state."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator = torch.Generator().manual_seed(seed)
        self._worker: int | None = None

    @property
    def generator(self) -> torch.Generator:
        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != info.id:
            self._worker = info.id
            self._generator.manual_seed(self.seed + 1000 * info.id)
        return self._generator

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "rng": self._generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["seed"] != self.seed:
            raise InputError(f"collator state was saved with seed {state['seed']}, this collator has {self.seed}")
        self._generator.set_state(state["rng"])


def _encoded(samples: Sequence[Sample]) -> EncodedImages | None:
    """The samples that carry a still-encoded JPEG (``"jpeg"``, ``"crop_box"``), if any."""
    rows = [i for i, s in enumerate(samples) if "jpeg" in s]
    if not rows:
        return None
    return EncodedImages(
        [samples[i]["jpeg"] for i in rows], torch.tensor(rows), torch.stack([samples[i]["crop_box"] for i in rows])
    )


def _stack(samples: Sequence[Sample], key: str, what: str) -> Tensor:
    missing = [i for i, s in enumerate(samples) if key not in s]
    if missing:
        raise DataKeyError(f"{what}: samples {missing[:5]} have no {key!r}")
    tensors = [s[key] for s in samples]
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        raise InputError(f"{what}: {key!r} has different shapes in one batch: {sorted(shapes)}; resize/crop first")
    return torch.stack(tensors)


def pad_sequences(sequences: Sequence[Tensor], pad_value: int, max_length: int | None = None) -> tuple[Tensor, Tensor]:
    """Right-pad 1-D int sequences.

    Args:
        sequences: ``B`` tensors ``(L_i,)``.
        pad_value: fill value.
        max_length: pad to this length (default: the longest sequence). A longer sequence
            raises: truncate in the tokenizer.

    Returns:
        ``(ids (B, L), attention_mask (B, L))``, mask 1 = real token.
    """
    longest = max(len(s) for s in sequences)
    length = longest if max_length is None else max_length
    if longest > length:
        raise InputError(
            f"a sequence has {longest} tokens, more than max_length={length}; truncate it in the tokenizer"
        )
    ids = torch.full((len(sequences), length), pad_value, dtype=torch.long)
    mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


class _ImagePart:
    def __init__(self, block_masker: BlockMaskGenerator) -> None:
        self.block_masker = block_masker

    def collate_images(self, samples: Sequence[Sample], g: torch.Generator, what: str) -> dict[str, Tensor]:
        out = {"pixel_values": _stack(samples, "image", what)}
        if all("image_tokens" in s for s in samples):
            out["image_token_ids"] = _stack(samples, "image_tokens", what).long()
        elif all("codebook_image" in s for s in samples):
            out["codebook_pixel_values"] = _stack(samples, "codebook_image", what)
        elif any("codebook_image" in s or "image_tokens" in s for s in samples):
            raise DataKeyError(
                f"{what}: some samples have tokenizer inputs or ids and some do not; every sample needs "
                "the same: 'codebook_image' (tokenizer input) or 'image_tokens'"
            )
        # neither: pixel-regression MIM (the targets are the encoder pixels themselves)
        out["patch_mask"] = self.block_masker.batch(len(samples), generator=g)
        out["encoded_images"] = _encoded(samples)
        return out


class _TextPart:
    def __init__(self, token_masker: TokenMasker, max_length: int | None, whole_word: bool) -> None:
        self.token_masker = token_masker
        self.max_length = max_length
        self.whole_word = whole_word

    def collate_text(self, texts: Sequence[Sample], g: torch.Generator) -> dict[str, Tensor]:
        """Masks are drawn on the batch's own length, then every field is padded to ``max_length``: the
        same captions get the same masks whatever the padded length (a compiled step's fixed length
        trains on the data an eager run sees)."""
        masker = self.token_masker
        ids, mask = pad_sequences([s["input_ids"] for s in texts], masker.pad_token_id)
        if self.max_length is not None and ids.shape[1] > self.max_length:
            raise InputError(
                f"a caption has {ids.shape[1]} tokens, more than max_length={self.max_length}; "
                "truncate it in the tokenizer"
            )
        word_ids = None
        if self.whole_word:
            if not all("word_ids" in s for s in texts):
                raise DataKeyError("whole-word masking needs 'word_ids' in every text sample")
            word_ids, _ = pad_sequences([s["word_ids"] for s in texts], 0, ids.shape[1])
        masked, labels = masker(ids, mask, word_ids, generator=g)
        out = {"input_ids": ids, "attention_mask": mask, "masked_input_ids": masked, "mlm_labels": labels}
        extra = 0 if self.max_length is None else self.max_length - ids.shape[1]
        fills = {
            "input_ids": masker.pad_token_id,
            "attention_mask": 0,
            "masked_input_ids": masker.pad_token_id,
            "mlm_labels": masker.ignore_index,
        }
        return {k: F.pad(v, (0, extra), value=fills[k]) for k, v in out.items()} if extra else out


class PairCollator(_Seeded, _ImagePart, _TextPart):
    """Image-text pairs -> a paired :class:`Batch` (contrastive, ITM, MMM).

    Order of work: choose ITM negatives (swap captions), block-mask every image, MLM-mask
    every caption (the swapped ones too: the model masks their MMM labels out).

    Args:
        block_masker: image masks. token_masker: text masks.
        itm_negative_prob: probability that a sample gets another sample's caption
            (0.1 in Meta's FLAVA pipeline; see ``docs/FLAVA.md``).
        max_length: pad captions to this length (default: longest in batch).
        whole_word: whole-word masking (samples need ``word_ids``).
        seed: seed of the collator's random stream.
    """

    def __init__(
        self,
        block_masker: BlockMaskGenerator,
        token_masker: TokenMasker,
        itm_negative_prob: float = 0.1,
        max_length: int | None = None,
        whole_word: bool = False,
        seed: int = 0,
    ) -> None:
        _Seeded.__init__(self, seed)
        _ImagePart.__init__(self, block_masker)
        _TextPart.__init__(self, token_masker, max_length, whole_word)
        self.itm_negative_prob = itm_negative_prob

    def __call__(self, samples: Sequence[Sample], generator: torch.Generator | None = None) -> Batch:
        """Collate; ``generator`` overrides the collator's own random stream for this batch."""
        if not samples:
            raise InputError("cannot collate an empty list of samples")
        g = generator or self.generator
        caption_index, itm_labels = itm_negatives(len(samples), self.itm_negative_prob, generator=g)
        texts = [samples[int(j)] for j in caption_index]
        return Batch(
            **self.collate_images(samples, g, "pair batch"),
            **self.collate_text(texts, g),
            itm_labels=itm_labels,
        )


class ImageCollator(_Seeded, _ImagePart):
    """Images -> an image-only :class:`Batch` (MIM). Args: block_masker, seed."""

    def __init__(self, block_masker: BlockMaskGenerator, seed: int = 0) -> None:
        _Seeded.__init__(self, seed)
        _ImagePart.__init__(self, block_masker)

    def __call__(self, samples: Sequence[Sample], generator: torch.Generator | None = None) -> Batch:
        if not samples:
            raise InputError("cannot collate an empty list of samples")
        return Batch(**self.collate_images(samples, generator or self.generator, "image batch"))


class TextCollator(_Seeded, _TextPart):
    """Texts -> a text-only :class:`Batch` (MLM). Args: token_masker, max_length, whole_word, seed."""

    def __init__(
        self, token_masker: TokenMasker, max_length: int | None = None, whole_word: bool = False, seed: int = 0
    ) -> None:
        _Seeded.__init__(self, seed)
        _TextPart.__init__(self, token_masker, max_length, whole_word)

    def __call__(self, samples: Sequence[Sample], generator: torch.Generator | None = None) -> Batch:
        if not samples:
            raise InputError("cannot collate an empty list of samples")
        text = self.collate_text(samples, generator or self.generator)
        return Batch(
            attention_mask=text["attention_mask"],
            masked_input_ids=text["masked_input_ids"],
            mlm_labels=text["mlm_labels"],
        )


class ContrastivePairCollator(_Seeded):
    """Image-text pairs -> a paired :class:`Batch` with only ``pixel_values``, ``input_ids`` and
    ``attention_mask``: what CLIP and SigLIP train on (no masks, no ITM negatives).

    Args:
        pad_token_id: the tokenizer's padding id.
        max_length: pad every caption to this length (SigLIP pools the last position, so its texts
            need one fixed length); default the longest in the batch.
        seed: seed of the collator's random stream (unused by the collation itself; kept so the
            loaders treat every collator alike).
    """

    def __init__(self, pad_token_id: int, max_length: int | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        self.pad_token_id = pad_token_id
        self.max_length = max_length

    def __call__(self, samples: Sequence[Sample], generator: torch.Generator | None = None) -> Batch:
        if not samples:
            raise InputError("cannot collate an empty list of samples")
        ids, mask = pad_sequences([s["input_ids"] for s in samples], self.pad_token_id, self.max_length)
        return Batch(
            pixel_values=_stack(samples, "image", "pair batch"),
            input_ids=ids,
            attention_mask=mask,
            encoded_images=_encoded(samples),
        )
