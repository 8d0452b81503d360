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

This table is the one place FLAVA's objective names are written (the constants below); the reporting order of
the losses, the order the heads are built in and the side (image or text) a masked objective predicts are
fields of :class:`Objective`. ``compute`` reaches the model through :class:`PretrainingModel`'s public methods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor, nn

from mmkit.heads import ITMHead, MaskedPredictionHead, masked_labels
from mmkit.layers.init import init_std_for, init_weights
from mmkit.layers.transformer import EncoderOutput
from mmkit.utils.errors import InputError

if TYPE_CHECKING:
    from mmkit.losses import ContrastiveOutput
    from mmkit.models.flava import FLAVAConfig, FLAVAModel

#: FLAVA's objectives' names (each also a field of :class:`~mmkit.losses.FLAVALossWeights`).
#: ``CONTRASTIVE``'s loss is over the whole (gathered, and under accumulation accumulated) batch: in the two
#: passes of whole-batch accumulation it gives rows (:attr:`FLAVAPretrainingOutput.contrastive_rows`), not a loss
CONTRASTIVE, ITM, MMM_IMAGE, MMM_TEXT, MIM, MLM = "global_contrastive", "itm", "mmm_image", "mmm_text", "mim", "mlm"
#: what an objective may read (:class:`Views`)
VIEWS = ("image", "text", "masked_image", "masked_text", "fused")
KINDS = ("pair", "image", "text")
SIDES = ("image", "text")


@dataclass
class PretrainingInputs:
    """One pretraining batch, as :meth:`~mmkit.models.FLAVAForPreTraining.forward` takes it (each field optional).

    Attributes:
        pixel_values: ``(B, 3, H, W)`` encoder pixels (normalised).
        input_ids: ``(B, L)`` unmasked text (paired batches: captions after ITM swaps).
        attention_mask: ``(B, L)``, 1 = real token. token_type_ids: optional ``(B, L)``.
        patch_mask: bool ``(B, Np)``, True = masked patch (MIM / MMM image).
        masked_input_ids: ``(B, L)`` text after MLM masking.
        mlm_labels: ``(B, L)`` original ids at masked tokens, ``ignore_index`` elsewhere.
        codebook_pixel_values: ``(B, 3, h, w)`` tokenizer input (``h = 8 * grid``), or
        image_token_ids: ``(B, Np)`` precomputed tokenizer ids.
        itm_labels: ``(B,)`` 1 = matched pair, 0 = swapped caption. None = all matched, no ITM loss.
    """

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

    @classmethod
    def of(cls, inputs: Mapping[str, Tensor | None]) -> PretrainingInputs:
        """From keyword tensors (a collator's ``batch.model_inputs()``); an unknown name raises."""
        unknown = sorted(set(inputs) - set(INPUTS))
        if unknown:
            raise InputError(f"unknown pretraining inputs {unknown}; a batch has {', '.join(INPUTS)}")
        return cls(**inputs)

    def infer_kind(self) -> str:
        """``"pair"`` (pixels and text), ``"image"`` or ``"text"``; neither pixels nor text raises."""
        if self.pixel_values is not None and self.input_ids is not None:
            return "pair"
        if self.pixel_values is not None:
            return "image"
        if self.input_ids is not None or self.masked_input_ids is not None:
            return "text"
        raise InputError("a pretraining batch needs pixel_values, input_ids or both")


#: :class:`PretrainingInputs`' fields (read once: ``dataclasses.fields`` does not compile)
INPUTS = tuple(f.name for f in fields(PretrainingInputs))


@dataclass
class FLAVAPretrainingOutput:
    """What :meth:`~mmkit.models.FLAVAForPreTraining.forward` returns.

    Attributes:
        loss: scalar, the weighted sum of ``losses``.
        losses: each computed objective's (unweighted) loss by name, in the objectives' reporting order
            (``global_contrastive``, ``itm``, ``mmm_image``, ``mmm_text``, ``mim``, ``mlm``, then added ones).
        logits: ``mim`` / ``mmm_image`` ``(M_img, V_img)`` and ``mlm`` / ``mmm_text``
            ``(M_txt, V_txt)`` at masked positions only (with static shapes: ``(K, V)`` for a budget
            of ``K`` positions, the masked ones first); ``itm`` ``(B, 2)``;
            ``contrastive_image`` / ``contrastive_text`` ``(n, N)`` scaled similarities (every row;
            rows of ITM negatives are labelled ``ignore_index``).
        labels: the target of each ``logits`` entry (same keys; ``(M,)``/``(K,)`` or ``(B,)``/``(n,)``),
            ``ignore_index`` where a row does not count.
        overflow: with static shapes, per masked objective, how many masked positions did not fit
            the budget (a 0-d device tensor; 0 means the loss equals the default path's).
        kind: ``"pair"``, ``"image"`` or ``"text"``.
        image_embedding, text_embedding: ``(B, P)`` contrastive embeddings of a paired batch.
        contrastive_rows: in the two passes of whole-batch accumulation, what a paired batch gives the global
            contrastive loss over the whole accumulated batch (``FLAVAForPreTraining.whole_batch_loss``):
            ``image`` / ``text`` ``(B, P)`` and ``matched`` bool ``(B,)``; empty otherwise.
        gradient_term: given ``embedding_grads``, the scalar whose gradient is that loss's through this batch.
    """

    loss: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    logits: dict[str, Tensor] = field(default_factory=dict)
    labels: dict[str, Tensor] = field(default_factory=dict)
    overflow: dict[str, Tensor] = field(default_factory=dict)
    kind: str = "pair"
    image_embedding: Tensor | None = None
    text_embedding: Tensor | None = None
    contrastive_rows: dict[str, Tensor] = field(default_factory=dict)
    gradient_term: Tensor | None = None

    def record(self, name: str, prediction: MaskedPrediction) -> None:
        """Store a masked objective's loss, logits, labels and (static shapes) overflow under ``name``."""
        self.losses[name], self.logits[name], self.labels[name] = prediction.loss, prediction.logits, prediction.labels
        if prediction.overflow is not None:
            self.overflow[name] = prediction.overflow


@dataclass
class MaskedPrediction:
    """A masked objective's result: ``logits`` ``(M, V)`` (or ``(K, V)`` for a static budget of ``K``),
    ``labels`` ``(M,)`` / ``(K,)`` (regression: ``(M, p*p*C)``), the scalar ``loss`` and, with static
    shapes, ``overflow`` (a 0-d count of masked positions beyond the budget)."""

    logits: Tensor
    labels: Tensor
    loss: Tensor
    overflow: Tensor | None = None


class PretrainingModel(Protocol):
    """What an objective's ``compute`` may use of the model (:class:`~mmkit.models.FLAVAForPreTraining`)."""

    model: FLAVAModel
    ignore_index: int
    mim_target: str

    def head(self, name: str) -> nn.Module: ...

    def image_targets(
        self, codebook_pixel_values: Tensor | None, image_token_ids: Tensor | None, num_patches: int
    ) -> Tensor: ...

    def pixel_targets(self, pixel_values: Tensor) -> Tensor: ...

    def predict_masked(self, head: nn.Module, hidden: Tensor, labels: Tensor, side: str) -> MaskedPrediction: ...

    def regress_masked(
        self, head: nn.Module, hidden: Tensor, targets: Tensor, mask: Tensor, side: str
    ) -> MaskedPrediction: ...

    def score_contrastive(
        self, image: Tensor, text: Tensor, matched: Tensor | None, logit_scale: Tensor | None = None
    ) -> ContrastiveOutput: ...


@dataclass
class Views(PretrainingInputs):
    """One batch's inputs (:class:`PretrainingInputs`' fields) and the encoder outputs its objectives asked for.

    Attributes:
        kind: ``"pair"``, ``"image"`` or ``"text"``.
        out: the output the objectives write into.
        patch_mask: as bool ``(B, Np)`` when an objective masks the image.
        matched: bool ``(B,)`` of paired batches with ITM labels: the pairs whose caption is their own
            (every pair when none is); None without ITM labels.
        image, text: the clean encoders' outputs. masked_image, masked_text: with the patch / MLM
            masks applied when an objective masks that side (else the clean pass).
        fused: the fusion encoder's last hidden state on the masked passes,
            ``(B, 2 + Np + L, D)``: ``[CLS_M, CLS_I, patches, text]``.
    """

    kind: str = "pair"
    out: FLAVAPretrainingOutput | None = None
    matched: Tensor | None = None
    image: EncoderOutput | None = None
    text: EncoderOutput | None = None
    masked_image: EncoderOutput | None = None
    masked_text: EncoderOutput | None = None
    fused: Tensor | None = None
    _cache: dict[str, Tensor] = field(default_factory=dict)

    @classmethod
    def of_batch(cls, batch: PretrainingInputs) -> Views:
        """The views of ``batch``, with an empty output of its kind (and ``matched`` from its ITM labels)."""
        kind = batch.infer_kind()
        views = cls(**{name: getattr(batch, name) for name in INPUTS}, kind=kind)
        views.out = FLAVAPretrainingOutput(loss=torch.zeros(()), kind=kind)
        if kind == "pair" and batch.itm_labels is not None:
            matched = batch.itm_labels.reshape(-1) != 0
            views.matched = matched | ~matched.any()  # no matched pair at all: use every pair
        return views

    def image_labels(self, model: PretrainingModel) -> Tensor:
        """Tokenizer ids ``(B, Np)`` at the masked patches, ``ignore_index`` elsewhere (computed once)."""
        if "image_labels" not in self._cache:
            num_patches = self.masked_image.last_hidden_state.shape[1] - 1
            targets = model.image_targets(self.codebook_pixel_values, self.image_token_ids, num_patches)
            self._cache["image_labels"] = masked_labels(targets, self.patch_mask, model.ignore_index)
        return self._cache["image_labels"]

    def pixel_targets(self, model: PretrainingModel) -> Tensor:
        """Each patch's (normalised) pixels ``(B, Np, p*p*C)``, pixel MIM's targets (computed once)."""
        if "pixel_targets" not in self._cache:
            self._cache["pixel_targets"] = model.pixel_targets(self.pixel_values)
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
        side: ``"image"`` / ``"text"``: the modality a masked objective predicts (its prediction budget, and
            whether it needs the image tokenizer); None for the others.
        head_order: where its head is built and drawn (FLAVA's: the released order); None: after those.
        report_order: where its loss comes in ``losses``; None: after those with one.
    """

    name: str
    compute: Callable[[PretrainingModel, Views], None]
    kinds: tuple[str, ...] = ("pair",)
    needs: frozenset[str] = frozenset()
    masks: frozenset[str] = frozenset()
    head: Callable[[FLAVAConfig], nn.Module] | None = None
    head_width: Callable[[FLAVAConfig], int] | None = None
    unimodal: bool = False
    skip_without: tuple[str, ...] = ()
    side: str | None = None
    head_order: int | None = None
    report_order: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "needs", frozenset(self.needs))
        object.__setattr__(self, "masks", frozenset(self.masks))
        unknown = (set(self.needs) - set(VIEWS)) | (set(self.kinds) - set(KINDS)) | (set(self.masks) - set(SIDES))
        if self.side is not None and self.side not in SIDES:
            unknown.add(self.side)
        if unknown:
            raise InputError(f"objective {self.name!r}: unknown views, kinds, masks or side {sorted(unknown)}")

    def runs_on(self, kind: str, unimodal_on_pairs: bool) -> bool:
        """Whether it trains on batches of ``kind``."""
        return kind in self.kinds or (kind == "pair" and self.unimodal and unimodal_on_pairs)

    @property
    def head_name(self) -> str | None:
        """The module name of its head, ``<name>_head``; None without a head."""
        return None if self.head is None else f"{self.name}_head"

    def init_head(self, head: nn.Module, config: FLAVAConfig) -> None:
        """Initialise ``head`` (:func:`~mmkit.layers.init.init_weights` at the std of :attr:`head_width`)."""
        width = self.head_width(config) if self.head_width else config.multimodal.hidden_size
        std = init_std_for(width, config.init_std)
        head.apply(lambda m: init_weights(m, std=std))


def _ordered(objectives: Iterable[Objective], key: Callable[[Objective], int | None]) -> list[Objective]:
    """``objectives`` by ``key``, those without one after, in their own order."""
    return sorted(objectives, key=lambda o: (key(o) is None, key(o) or 0))


def head_build_order(objectives: Iterable[Objective]) -> list[Objective]:
    """The objectives with a head, in the order their heads are built and drawn (:attr:`Objective.head_order`)."""
    return _ordered((o for o in objectives if o.head is not None), lambda o: o.head_order)


def reporting_order(objectives: Iterable[Objective]) -> list[str]:
    """The objectives' names in the order their losses are reported (:attr:`Objective.report_order`)."""
    return [o.name for o in _ordered(objectives, lambda o: o.report_order)]


def trains_on(kind: str, weights: Any, objectives: Iterable[Objective] | None = None) -> bool:
    """Whether any objective of ``objectives`` (default :data:`FLAVA_OBJECTIVES`) with a weight above 0 in
    ``weights`` (:class:`~mmkit.losses.FLAVALossWeights`) trains on batches of ``kind`` by itself."""
    return any(kind in o.kinds and weights.active(o.name) for o in objectives or FLAVA_OBJECTIVES)


# -- FLAVA's six ---------------------------------------------------------------------------------------
def _global_contrastive(model: PretrainingModel, v: Views) -> None:
    out = v.out
    out.image_embedding, out.text_embedding = model.model.embed_image(v.image), model.model.embed_text(v.text)
    c = model.score_contrastive(out.image_embedding, out.text_embedding, v.matched)
    out.losses[CONTRASTIVE] = c.loss
    out.logits["contrastive_image"], out.logits["contrastive_text"] = c.logits_per_image, c.logits_per_text
    out.labels["contrastive_image"] = out.labels["contrastive_text"] = c.labels


def _mim(model: PretrainingModel, v: Views) -> None:
    hidden, head = v.masked_image.last_hidden_state[:, 1:], model.head(MIM)
    if model.mim_target == "pixels":
        v.out.record(MIM, model.regress_masked(head, hidden, v.pixel_targets(model), v.patch_mask, "image"))
    else:
        v.out.record(MIM, model.predict_masked(head, hidden, v.image_labels(model), "image"))


def _mlm(model: PretrainingModel, v: Views) -> None:
    v.out.record(MLM, model.predict_masked(model.head(MLM), v.masked_text.last_hidden_state, v.mlm_labels, "text"))


def _itm(model: PretrainingModel, v: Views) -> None:
    labels = v.itm_labels.reshape(-1).long()
    logits = model.head(ITM)(v.fused)
    v.out.logits[ITM], v.out.labels[ITM] = logits, labels
    v.out.losses[ITM] = torch.nn.functional.cross_entropy(logits, labels)


def _mmm_image(model: PretrainingModel, v: Views) -> None:
    hidden = v.fused[:, 2 : 1 + v.masked_image.last_hidden_state.shape[1]]  # the patches (after CLS_M, CLS_I)
    head = model.head(MMM_IMAGE)
    if model.mim_target == "pixels":
        mask = v.patch_mask if v.matched is None else v.patch_mask & v.matched[:, None]
        v.out.record(MMM_IMAGE, model.regress_masked(head, hidden, v.pixel_targets(model), mask, "image"))
    else:
        labels = v.only_matched(v.image_labels(model), model.ignore_index)
        v.out.record(MMM_IMAGE, model.predict_masked(head, hidden, labels, "image"))


def _mmm_text(model: PretrainingModel, v: Views) -> None:
    hidden = v.fused[:, v.fused.shape[1] - v.masked_text.last_hidden_state.shape[1] :]  # the text positions
    labels = v.only_matched(v.mlm_labels, model.ignore_index)
    v.out.record(MMM_TEXT, model.predict_masked(model.head(MMM_TEXT), hidden, labels, "text"))


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


#: FLAVA's objectives, in the order they are computed (their losses are reported in ``report_order``)
FLAVA_OBJECTIVES: tuple[Objective, ...] = (
    Objective(CONTRASTIVE, _global_contrastive, needs={"image", "text"}, report_order=0),
    Objective(
        MIM,
        _mim,
        kinds=("image",),
        needs={"masked_image"},
        masks={"image"},
        unimodal=True,
        side="image",
        head=_masked_head(lambda c: c.image, _image_vocab, "image"),
        head_width=lambda c: c.image.hidden_size,
        head_order=0,
        report_order=4,
    ),
    Objective(
        MLM,
        _mlm,
        kinds=("text",),
        needs={"masked_text"},
        masks={"text"},
        unimodal=True,
        side="text",
        head=_masked_head(lambda c: c.text, _text_vocab, "text"),
        head_width=lambda c: c.text.hidden_size,
        head_order=1,
        report_order=5,
    ),
    Objective(
        ITM,
        _itm,
        needs={"fused"},
        head=lambda c: ITMHead(c.multimodal.hidden_size),
        skip_without=("itm_labels",),
        head_order=4,
        report_order=1,
    ),
    Objective(
        MMM_IMAGE,
        _mmm_image,
        needs={"fused"},
        masks={"image"},
        side="image",
        head=_masked_head(lambda c: c.multimodal, _image_vocab, "image"),
        head_order=2,
        report_order=2,
    ),
    Objective(
        MMM_TEXT,
        _mmm_text,
        needs={"fused"},
        masks={"text"},
        side="text",
        head=_masked_head(lambda c: c.multimodal, _text_vocab, "text"),
        head_order=3,
        report_order=3,
    ),
)
