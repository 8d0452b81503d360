"""FLAVA's pretraining objectives as a table: each a name, the head it uses, the inputs it needs and the
function that computes it (paper §3.2-3.5).

:class:`~mmkit.models.FLAVAForPreTraining` runs a batch like this: it picks the objectives whose weight
is above 0 and that train on the batch's kind (``pair``, ``image``, ``text``), runs each encoder once
for what they need together (:class:`Views`: the clean image and text for the contrastive loss, the
masked ones and the fusion encoder for ITM and masked modelling; clean and masked stacked into one
pass when both are needed), then calls each objective's ``compute``, which writes its loss (and its
logits and labels) into the output. Adding an objective is one :class:`Objective` (a function, and a
head builder if it has a head) passed to :func:`~mmkit.models.flava_model_for_pretraining` and one
weight in ``pretraining.weights.extra``::

    def toy(model, views):
        views.out.losses["toy"] = model.toy_head(views.fused[:, 0]).pow(2).mean()

    objective = Objective("toy", toy, needs={"fused"}, head=lambda cfg: nn.Linear(cfg.multimodal.hidden_size, 1))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mmkit.heads import ITMHead, MaskedPredictionHead, masked_labels
from mmkit.layers.transformer import EncoderOutput

if TYPE_CHECKING:
    from mmkit.models.flava import FLAVAConfig
    from mmkit.models.flava_pretraining import FLAVAForPreTraining, FLAVAPretrainingOutput

#: the objective whose loss is over the whole (gathered, and under accumulation accumulated) batch: in the two
#: passes of whole-batch accumulation it gives rows (:attr:`FLAVAPretrainingOutput.contrastive_rows`), not a loss
CONTRASTIVE = "global_contrastive"
#: what an objective may read (:class:`Views`)
VIEWS = ("image", "text", "masked_image", "masked_text", "fused")
KINDS = ("pair", "image", "text")


@dataclass
class Views:
    """One batch's inputs and the encoder outputs its objectives asked for.

    Attributes:
        kind: ``"pair"``, ``"image"`` or ``"text"``.
        out: the output the objectives write into.
        pixel_values ... itm_labels: the batch, as :meth:`FLAVAForPreTraining.forward` took it
            (``patch_mask`` as bool ``(B, Np)`` when an objective masks the image).
        matched: bool ``(B,)`` of paired batches with ITM labels: the pairs whose caption is their own
            (every pair when none is); None without ITM labels.
        image, text: the clean encoders' outputs. masked_image, masked_text: with the patch / MLM
            masks applied when an objective masks that side (else the clean pass).
        fused: the fusion encoder's last hidden state on the masked passes,
            ``(B, 2 + Np + L, D)``: ``[CLS_M, CLS_I, patches, text]``.
    """

    kind: str
    out: FLAVAPretrainingOutput
    pixel_values: Tensor | None = None
    input_ids: Tensor | None = None
    attention_mask: Tensor | None = None
    token_type_ids: Tensor | None = None
    patch_mask: Tensor | None = None
    masked_input_ids: Tensor | None = None
    mlm_labels: Tensor | None = None
    codebook_pixel_values: Tensor | None = None
    image_token_ids: Tensor | None = None
    itm_labels: Tensor | None = None
    matched: Tensor | None = None
    image: EncoderOutput | None = None
    text: EncoderOutput | None = None
    masked_image: EncoderOutput | None = None
    masked_text: EncoderOutput | None = None
    fused: Tensor | None = None
    _cache: dict[str, Tensor] = field(default_factory=dict)

    def image_labels(self, model: FLAVAForPreTraining) -> Tensor:
        """Tokenizer ids ``(B, Np)`` at the masked patches, ``ignore_index`` elsewhere (computed once)."""
        if "image_labels" not in self._cache:
            num_patches = self.masked_image.last_hidden_state.shape[1] - 1
            targets = model.image_targets(self.codebook_pixel_values, self.image_token_ids, num_patches)
            self._cache["image_labels"] = masked_labels(targets, self.patch_mask, model.ignore_index)
        return self._cache["image_labels"]

    def pixel_targets(self, model: FLAVAForPreTraining) -> Tensor:
        """Each patch's (normalised) pixels ``(B, Np, p*p*C)``, pixel MIM's targets (computed once)."""
        if "pixel_targets" not in self._cache:
            self._cache["pixel_targets"] = model._pixel_targets(self.pixel_values)
        return self._cache["pixel_targets"]

    def only_matched(self, labels: Tensor, ignore_index: int) -> Tensor:
        """``labels (B, N)`` with the rows of unmatched pairs set to ``ignore_index``."""
        if self.matched is None:
            return labels
        return torch.where(self.matched[:, None], labels, torch.full_like(labels, ignore_index))


@dataclass(frozen=True)
class Objective:
    """One pretraining objective.

    Attributes:
        name: its loss's name (the key of its weight and of ``losses``).
        compute: ``compute(model, views)`` writes ``views.out.losses[name]`` (and may write logits/labels).
        kinds: the batch kinds it trains on.
        needs: the :data:`VIEWS` it reads.
        masks: ``"image"`` / ``"text"``: the masked passes apply the patch mask / the MLM-masked ids.
        head: builds its head from the model config (registered as ``<name>_head``); None: no head.
        head_width: the width its head reads, for the initialisation's std (default: the fusion width).
        unimodal: a unimodal objective that also trains on pairs with ``pretraining.unimodal_losses_on_pairs``.
        skip_without: batch inputs without which it is skipped (ITM without ``itm_labels``).
    """

    name: str
    compute: Callable[[FLAVAForPreTraining, Views], None]
    kinds: tuple[str, ...] = ("pair",)
    needs: frozenset[str] = frozenset()
    masks: frozenset[str] = frozenset()
    head: Callable[[FLAVAConfig], nn.Module] | None = None
    head_width: Callable[[FLAVAConfig], int] | None = None
    unimodal: bool = False
    skip_without: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "masks", frozenset(self.masks))
        unknown = (
            (set(self.needs) - set(VIEWS)) | (set(self.kinds) - set(KINDS)) | (set(self.masks) - {"image", "text"})
        )
        if unknown:
            raise ValueError(f"objective {self.name!r}: unknown views, kinds or masks {sorted(unknown)}")

    def runs_on(self, kind: str, unimodal_on_pairs: bool) -> bool:
        return kind in self.kinds or (kind == "pair" and self.unimodal and unimodal_on_pairs)

    @property
    def head_name(self) -> str | None:
        return None if self.head is None else f"{self.name}_head"


# -- FLAVA's six ---------------------------------------------------------------------------------------
def _global_contrastive(model: FLAVAForPreTraining, v: Views) -> None:
    out, opts = v.out, model.config.pretraining
    img_emb, txt_emb = model.model.embed_image(v.image), model.model.embed_text(v.text)
    out.image_embedding, out.text_embedding = img_emb, txt_emb
    columns = v.matched if opts.contrastive_matched_only else None
    c = model.contrastive(img_emb, txt_emb, model.model.logit_scale, row_mask=v.matched, column_mask=columns)
    out.losses["global_contrastive"] = c.loss
    out.logits["contrastive_image"], out.logits["contrastive_text"] = c.logits_per_image, c.logits_per_text
    out.labels["contrastive_image"] = out.labels["contrastive_text"] = c.labels


def _mim(model: FLAVAForPreTraining, v: Views) -> None:
    hidden = v.masked_image.last_hidden_state[:, 1:]
    if model.mim_target == "pixels":
        model._masked_regression(model.mim_head, hidden, v.pixel_targets(model), v.patch_mask, "mim", v.out)
    else:
        model._masked_prediction(model.mim_head, hidden, v.image_labels(model), "mim", v.out)


def _mlm(model: FLAVAForPreTraining, v: Views) -> None:
    model._masked_prediction(model.mlm_head, v.masked_text.last_hidden_state, v.mlm_labels, "mlm", v.out)


def _itm(model: FLAVAForPreTraining, v: Views) -> None:
    labels = v.itm_labels.reshape(-1).long()
    logits = model.itm_head(v.fused)
    v.out.logits["itm"], v.out.labels["itm"] = logits, labels
    v.out.losses["itm"] = torch.nn.functional.cross_entropy(logits, labels)


def _mmm_image(model: FLAVAForPreTraining, v: Views) -> None:
    hidden = v.fused[:, 2 : 1 + v.masked_image.last_hidden_state.shape[1]]  # the patches (after CLS_M, CLS_I)
    if model.mim_target == "pixels":
        mask = v.patch_mask if v.matched is None else v.patch_mask & v.matched[:, None]
        model._masked_regression(model.mmm_image_head, hidden, v.pixel_targets(model), mask, "mmm_image", v.out)
    else:
        labels = v.only_matched(v.image_labels(model), model.ignore_index)
        model._masked_prediction(model.mmm_image_head, hidden, labels, "mmm_image", v.out)


def _mmm_text(model: FLAVAForPreTraining, v: Views) -> None:
    hidden = v.fused[:, v.fused.shape[1] - v.masked_text.last_hidden_state.shape[1] :]  # the text positions
    labels = v.only_matched(v.mlm_labels, model.ignore_index)
    model._masked_prediction(model.mmm_text_head, hidden, labels, "mmm_text", v.out)


def _image_vocab(cfg: FLAVAConfig) -> int:
    """MIM / MMM-image outputs: a codebook id distribution, or the pixels of one patch."""
    img = cfg.image
    return img.patch_size**2 * img.num_channels if cfg.pretraining.mim_target == "pixels" else cfg.codebook.vocab_size


def _masked_head(width: Callable[[FLAVAConfig], Any], vocab: Callable[[FLAVAConfig], int], side: str):
    def build(cfg: FLAVAConfig) -> nn.Module:
        act = getattr(cfg, side)
        return MaskedPredictionHead(width(cfg).hidden_size, vocab(cfg), act.activation, act.norm_eps)

    return build


def _text_vocab(cfg: FLAVAConfig) -> int:
    return cfg.text.vocab_size


#: FLAVA's objectives, in the order they are computed (the losses' order in the output)
FLAVA_OBJECTIVES: tuple[Objective, ...] = (
    Objective("global_contrastive", _global_contrastive, needs={"image", "text"}),
    Objective("mim", _mim, kinds=("image",), needs={"masked_image"}, masks={"image"}, unimodal=True,
              head=_masked_head(lambda c: c.image, _image_vocab, "image"), head_width=lambda c: c.image.hidden_size),
    Objective("mlm", _mlm, kinds=("text",), needs={"masked_text"}, masks={"text"}, unimodal=True,
              head=_masked_head(lambda c: c.text, _text_vocab, "text"), head_width=lambda c: c.text.hidden_size),
    Objective("itm", _itm, needs={"fused"}, head=lambda c: ITMHead(c.multimodal.hidden_size),
              skip_without=("itm_labels",)),
    Objective("mmm_image", _mmm_image, needs={"fused"}, masks={"image"},
              head=_masked_head(lambda c: c.multimodal, _image_vocab, "image")),
    Objective("mmm_text", _mmm_text, needs={"fused"}, masks={"text"},
              head=_masked_head(lambda c: c.multimodal, _text_vocab, "text")),
)  # fmt: skip
