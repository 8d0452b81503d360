"""FLAVA with its pretraining heads, image tokenizer and objectives.

One call takes a batch of any of FLAVA's three kinds (paper §3.2-3.5) and returns every
loss of that kind:

* **paired** (``pixel_values`` and ``input_ids``): global contrastive on the *unmasked*
  image and text, then one *masked* pass (block-masked image, MLM-masked text) through
  the fusion encoder for ITM (all pairs) and MMM image / MMM text (matched pairs only);
  optionally MIM and MLM from the same masked unimodal passes;
* **image** (``pixel_values`` only): MIM on the masked image;
* **text** (``input_ids`` only): MLM on the masked text.

The objectives are a table (:mod:`mmkit.models.flava_objectives`): each a name, its head, the views
it reads and the function computing it; the forward picks the ones a batch trains, runs the encoders
once for what they need together and calls each. An added objective is one more entry.

Compared with transformers' ``FlavaForPreTraining`` it never runs an encoder whose output
no objective reads (transformers runs the unmasked pass for image-only and text-only
batches too), projects only masked positions through the vocabulary decoders, and can take
precomputed tokenizer ids instead of running the dVAE in the step.

With :meth:`FLAVAForPreTraining.set_static_shapes` every shape of a step depends on the batch
shapes only (the masked objectives predict a fixed budget of positions, see
:func:`~mmkit.heads.select_budget`), and nothing reads the device from the host, so
``torch.compile(model, fullgraph=True)`` compiles each batch kind whole (and CUDA graphs can
replay it). Its losses equal the default path's while the budget holds every masked position.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.heads import (
    budget_indices,
    prediction_budget,
    select_budget,
    select_masked,
)
from mmkit.layers.init import no_weight_decay_names
from mmkit.layers.transformer import EncoderOutput
from mmkit.losses import ContrastiveLoss, ContrastiveOutput, FLAVAPretrainingLoss, masked_cross_entropy
from mmkit.models.contrastive import EmbeddingGrads, gradient_term
from mmkit.models.flava import FLAVAConfig, FLAVAModel, flava_model
from mmkit.models.flava_objectives import (
    CONTRASTIVE,
    FLAVA_OBJECTIVES,
    FLAVAPretrainingOutput,
    MaskedPrediction,
    Objective,
    PretrainingInputs,
    Views,
    head_build_order,
    reporting_order,
)
from mmkit.tokenizers import DalleEncoder, ImageTokenizer, dalle_encoder_from_checkpoint
from mmkit.utils.config import replace_config
from mmkit.utils.errors import InputError
from mmkit.utils.weights import load_strict


class FLAVAForPreTraining(nn.Module):
    """:class:`FLAVAModel` plus the MIM / MLM / MMM / ITM heads, the frozen image tokenizer
    and the parameter-free losses. Build it with :func:`flava_model_for_pretraining`.

    Args:
        model: the encoders and projections.
        mim_head, mlm_head: on the image / text encoder outputs (after final norm).
        mmm_image_head, mmm_text_head: on the fusion encoder's image / text tokens.
        itm_head: on the fusion encoder's ``CLS_M``.
        image_tokenizer: frozen dVAE making MIM targets, or None (then batches carry ``image_token_ids``).
        config: the :class:`FLAVAConfig` (its ``pretraining`` section sets weights and options).
    """

    def __init__(
        self,
        model: FLAVAModel,
        heads: Mapping[str, nn.Module],
        image_tokenizer: ImageTokenizer | None,
        config: FLAVAConfig,
        objectives: Sequence[Objective] = FLAVA_OBJECTIVES,
    ) -> None:
        super().__init__()
        self.model = model
        for name, head in heads.items():  # mim_head, mlm_head, ...: the state dict's names
            self.add_module(name, head)
        self.image_tokenizer = image_tokenizer
        self.config = config
        self.objectives = tuple(objectives)
        opts = config.pretraining
        self.weights = opts.weights
        names = [o.name for o in self.objectives]
        missing = [o.head_name for o in self.objectives if o.head_name is not None and o.head_name not in heads]
        if len(set(names)) != len(names) or missing:
            raise InputError(f"objectives {names}: names must be unique and every head given (missing: {missing})")
        for name in names:
            self.weights.get(name)  # every objective has a weight (pretraining.weights.extra for added ones)
        self.ignore_index = opts.ignore_index
        self.mim_target, self.pixel_norm = opts.mim_target, opts.pixel_norm
        self.contrastive = ContrastiveLoss(gather_with_grad=opts.contrastive_gather_with_grad)
        self.loss_fn = FLAVAPretrainingLoss(opts.weights)
        self.static_shapes = False
        #: the loss whose chance level is ``ln(batch)`` (a health check's reference)
        self.chance_loss = CONTRASTIVE
        self.report_order = reporting_order(self.objectives)
        self.budgets = {"image": DEFAULT_BUDGETS["image"], "text": DEFAULT_BUDGETS["text"]}

    def set_static_shapes(
        self, enabled: bool = True, image_budget: float | None = None, text_budget: float | None = None
    ) -> FLAVAForPreTraining:
        """Predict a fixed budget of positions per masked objective, so that every shape of a step
        depends on the batch shapes only and ``torch.compile(fullgraph=True)`` takes it whole. In
        training mode only: in eval mode (held-out scoring) the exact masked positions are predicted.

        Args:
            enabled: False goes back to predicting exactly the masked positions (the default;
                faster in eager mode, where the budget's padding is pure cost).
            image_budget: fraction of ``B * Np`` patch positions that MIM and MMM image predict
                (default 0.4: FLAVA's block masks cover at most 75 of 196 patches, 0.383, so the
                budget always holds them).
            text_budget: fraction of ``B * L`` token positions that MLM and MMM text predict
                (default 0.25: BERT masking chooses each real token with probability 0.15, so a
                batch overflows only by chance: at most 6 in 1000 batches of 2 x 40 tokens, 1 in a
                million of 8 x 40, never in practice from 16 x 40 on, padding and special tokens
                only lowering it; whole-word masking chooses words, so check its batches. An
                overflow drops the excess positions, the last in row-major order, from that
                batch's loss and is counted in ``FLAVAPretrainingOutput.overflow``).

        Returns ``self``.
        """
        for name, value in (("image", image_budget), ("text", text_budget)):
            if value is not None:
                prediction_budget(1, value)  # checks the range
                self.budgets[name] = value
        self.static_shapes = enabled
        return self

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as :func:`flava_model_for_pretraining` does: the model (:meth:`FLAVAModel.reset_parameters`),
        the frozen codebook (its ``codebook.checkpoint``'s weights, or drawn as ``DalleEncoder`` draws them), then
        each head in :attr:`Objective.head_order` (:meth:`Objective.init_head`). On plain tensors and FSDP2's
        sharded ones alike (each rank fills its shard); after ``to_empty`` this is :func:`materialize_flava`."""
        self.model.reset_parameters()
        if self.image_tokenizer is not None:
            checkpoint = self.config.codebook.checkpoint
            if checkpoint:
                source = dalle_encoder_from_checkpoint(checkpoint)
                load_strict(self.image_tokenizer.encoder, source.state_dict(), checkpoint, target="codebook")
            else:
                for module in self.image_tokenizer.encoder.modules():
                    if isinstance(module, nn.Conv2d):
                        module.reset_parameters()
        for objective in head_build_order(self.objectives):
            objective.init_head(self.head(objective.name), self.config)

    def shard_units(self) -> list[nn.Module]:
        """The repeated transformer layers of the three encoders, in order (:meth:`FLAVAModel.shard_units`):
        each a unit of activation checkpointing and FSDP sharding. The heads and the tokenizer are none."""
        return self.model.shard_units()

    def gathering_losses(self) -> list[nn.Module]:
        """The losses that gather embeddings across ranks (and carry ``rows_per_rank``): the global contrastive."""
        return [self.contrastive]

    def set_cross_rank(self, enabled: bool) -> None:
        """Score the contrastive loss against every rank's batch (training) or this rank's only
        (evaluation on the same data on every rank)."""
        self.contrastive.cross_rank = enabled

    # -- helpers --------------------------------------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names that take no weight decay (biases, norms, embeddings, tokens, ``logit_scale``)."""
        return no_weight_decay_names(self)

    def trainable_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """Named parameters the optimiser should see (the frozen tokenizer excluded)."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def image_targets(
        self, codebook_pixel_values: Tensor | None, image_token_ids: Tensor | None, num_patches: int
    ) -> Tensor:
        """Tokenizer ids ``(B, Np)``: the precomputed ones, or the tokenizer run on ``codebook_pixel_values``."""
        if image_token_ids is None:
            if codebook_pixel_values is None:
                raise InputError(
                    "masked image objectives need targets: pass codebook_pixel_values (dVAE input, "
                    "0.8x+0.1 of [0,1] pixels) or precomputed image_token_ids"
                )
            if self.image_tokenizer is None:
                raise InputError(
                    "this model has no image tokenizer (config.codebook.enabled=False): pass image_token_ids"
                )
            image_token_ids = self.image_tokenizer(codebook_pixel_values)
        image_token_ids = image_token_ids.reshape(image_token_ids.shape[0], -1)
        if image_token_ids.shape[1] != num_patches:
            raise InputError(
                f"image targets have {image_token_ids.shape[1]} tokens per image but the ViT has {num_patches} "
                "patches; the tokenizer grid (codebook image_size / 8) must equal the patch grid"
            )
        return image_token_ids

    def head(self, name: str) -> nn.Module:
        """The head of objective ``name`` (the module ``<name>_head``)."""
        return self.get_submodule(f"{name}_head")

    def pixel_targets(self, pixel_values: Tensor) -> Tensor:
        """Pixel MIM's targets: each patch's pixels ``(B, Np, p*p*C)`` (normalised per patch with ``pixel_norm``)."""
        patch = self.model.image_encoder.embeddings.patch_size
        return patchify(pixel_values.float(), patch[0] if isinstance(patch, tuple) else patch, self.pixel_norm)

    def regress_masked(
        self, head: nn.Module, hidden: Tensor, targets: Tensor, mask: Tensor, side: str
    ) -> MaskedPrediction:
        """Pixel MIM: predict the (normalised) pixels of masked patches only; mean squared error.

        ``hidden (B, Np, D)``, ``targets (B, Np, p*p*C)``, ``mask`` bool ``(B, Np)``, ``side`` the budget's
        (``"image"``). Static shapes: a budget of ``K`` patches, the padding weighted 0; logits and labels
        ``(K, p*p*C)``; otherwise ``(M, p*p*C)`` at the ``M`` masked patches."""
        mask = mask.bool()
        if self.static_shapes and self.training:
            index, overflow = budget_indices(mask.reshape(-1), self._budget(side, mask.numel()))
            pred = head(hidden.reshape(-1, hidden.shape[-1])[index])
            y = targets.reshape(-1, targets.shape[-1])[index]
            weight = mask.reshape(-1)[index].float()
            squared = ((pred.float() - y) ** 2).sum(-1)
            loss = (squared * weight).sum() / (weight.sum() * y.shape[-1]).clamp_min(1)
            return MaskedPrediction(pred, y, loss, overflow)
        pred = head(hidden[mask])
        y = targets[mask]
        return MaskedPrediction(pred, y, torch.nn.functional.mse_loss(pred.float(), y) if len(y) else pred.sum() * 0.0)

    def predict_masked(self, head: nn.Module, hidden: Tensor, labels: Tensor, side: str) -> MaskedPrediction:
        """Cross-entropy of ``head`` at the labelled positions of ``hidden (B, N, D)``, ``labels (B, N)``:
        exactly those (``(M, V)`` logits), or with static shapes the ``side``'s budget of ``K`` (``(K, V)``)."""
        overflow = None
        if self.static_shapes and self.training:
            h, y, overflow = select_budget(hidden, labels, self._budget(side, labels.numel()), self.ignore_index)
        else:
            h, y = select_masked(hidden, labels, self.ignore_index)
        logits = head(h)
        return MaskedPrediction(logits, y, masked_cross_entropy(logits, y, self.ignore_index), overflow)

    def score_contrastive(
        self, image: Tensor, text: Tensor, matched: Tensor | None, logit_scale: Tensor | None = None
    ) -> ContrastiveOutput:
        """The global contrastive loss of embeddings ``image`` / ``text`` ``(n, P)``, gathered across ranks:
        rows of the ``matched`` pairs (bool ``(n,)``; None: all) count, and with ``contrastive_matched_only``
        only they are columns. ``logit_scale`` defaults to the model's."""
        columns = matched if self.config.pretraining.contrastive_matched_only else None
        scale = self.model.logit_scale if logit_scale is None else logit_scale
        return self.contrastive(image, text, scale, row_mask=matched, column_mask=columns)

    def _budget(self, side: str, num_positions: int) -> int:
        return prediction_budget(num_positions, self.budgets[side])

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        batch: PretrainingInputs | None = None,
        *,
        embed_only: bool = False,
        embedding_grads: EmbeddingGrads | None = None,
        **inputs: Tensor | None,
    ) -> FLAVAPretrainingOutput:
        """Compute the objectives of one batch; which ones depends on the inputs given.

        Args:
            batch: the batch as one :class:`~mmkit.models.flava_objectives.PretrainingInputs` (its fields and
                shapes: ``pixel_values`` ``(B, 3, H, W)``, ``input_ids`` ``(B, L)``, bool ``patch_mask``
                ``(B, Np)``, ...), or
            **inputs: the same fields as keywords (``model(**batch.model_inputs())``); an unknown name raises.
            embed_only, embedding_grads: the first and second pass of whole-batch accumulation
                (:meth:`_whole_batch_pass`).

        Returns:
            :class:`FLAVAPretrainingOutput`, its ``losses`` in the objectives' reporting order.
        """
        if batch is not None and (inputs or not isinstance(batch, PretrainingInputs)):
            raise InputError(
                f"pass one PretrainingInputs or its tensors as keywords (pixel_values=..., ...), not both "
                f"nor a {type(batch).__name__}"
            )
        views = Views.of_batch(batch if batch is not None else PretrainingInputs.of(inputs))
        active = self._objectives_for(views)
        if embed_only or embedding_grads is not None:
            return self._whole_batch_pass(views, active, embedding_grads)
        self._encode(views, active)
        for objective in active:
            objective.compute(self, views)
        out = views.out
        out.loss = self.loss_fn(out.losses)
        out.losses = {name: out.losses[name] for name in self.report_order if name in out.losses}
        return out

    def _objectives_for(self, views: Views) -> list[Objective]:
        """The objectives with a weight that train on this batch's kind and have its inputs, checked."""
        on_pairs = self.config.pretraining.unimodal_losses_on_pairs
        runs = [o for o in self.objectives if o.runs_on(views.kind, on_pairs) and self.weights.active(o.name)]
        if not runs:
            trains = [o.name for o in self.objectives if o.runs_on(views.kind, on_pairs)]
            raise InputError(
                f"no objective with a weight above 0 trains on {views.kind} batches (those that do: "
                f"{', '.join(trains) or 'none'})"
            )
        active = [o for o in runs if all(getattr(views, k) is not None for k in o.skip_without)]
        masking = {side: [o.name for o in active if side in o.masks] for side in ("image", "text")}
        if masking["image"]:
            views.patch_mask = self._require_mask(views.patch_mask, ", ".join(masking["image"]))
        if masking["text"] and (views.masked_input_ids is None or views.mlm_labels is None):
            raise InputError(
                f"{', '.join(masking['text'])}: needs masked_input_ids and mlm_labels; the collators make them"
            )
        return active

    def _whole_batch_pass(
        self, views: Views, active: list[Objective], grads: EmbeddingGrads | None
    ) -> FLAVAPretrainingOutput:
        """A pass of whole-batch accumulation (:mod:`mmkit.train.whole_batch`): the global contrastive objective
        gives its rows (clean embeddings, matched pairs), not its loss. The first pass (``grads`` None) runs the
        clean encoders only, the second the other objectives too and the gradient term; both run the clean
        passes alone and first, so that the second makes the first's random draws (dropout, patch dropout)."""
        out = views.out
        contrastive = any(o.name == CONTRASTIVE for o in active)
        if contrastive or grads is not None:
            self._encode(views, active, replay=True, clean_only=grads is None)
        if contrastive:
            image, text = self.model.embed_image(views.image), self.model.embed_text(views.text)
            matched = views.matched if views.matched is not None else image.new_ones(image.shape[0], dtype=torch.bool)
            out.image_embedding, out.text_embedding = image, text
            out.contrastive_rows = {"image": image, "text": text, "matched": matched}
        if grads is None:
            return out
        for objective in active:
            if objective.name != CONTRASTIVE:
                objective.compute(self, views)
        device = (views.pixel_values if views.pixel_values is not None else views.masked_input_ids).device
        out.loss = self.loss_fn(out.losses) if out.losses else torch.zeros((), device=device)
        out.gradient_term = gradient_term(out.contrastive_rows, self.loss_parameters(), grads)
        return out

    def loss_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters the global contrastive loss reads: ``logit_scale``."""
        return {"logit_scale": self.model.logit_scale}

    def whole_batch_loss(self, rows: dict[str, Tensor], params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The global contrastive loss over ``rows`` (``image`` / ``text`` ``(n, P)``, ``matched`` bool ``(n,)``) with
        ``params`` (:meth:`loss_parameters`' values), gathered across ranks: ``(weight * loss, {name: loss})``."""
        c = self.score_contrastive(rows["image"], rows["text"], rows["matched"], params["logit_scale"])
        return self.weights.get(CONTRASTIVE) * c.loss, {CONTRASTIVE: c.loss}

    def _encode(self, views: Views, active: list[Objective], replay: bool = False, clean_only: bool = False) -> None:
        """Run each encoder once for what ``active`` needs (clean and masked passes stacked into one).

        ``replay`` (whole-batch accumulation): the clean passes run alone and first, image then text
        (:meth:`_encode_clean`); the masked passes and the fusion encoder follow, unless ``clean_only``."""
        needs = set().union(*(o.needs for o in active))
        masks = set().union(*(o.masks for o in active))
        fused = "fused" in needs
        want = {side: [side in needs, f"masked_{side}" in needs or fused] for side in ("image", "text")}
        mask = views.patch_mask if "image" in masks else None
        ids = views.masked_input_ids if "text" in masks else None
        if replay:
            self._encode_clean(views, want, mask, ids)
        if clean_only:
            return
        if any(want["image"]):
            image, masked = self._clean_and_masked_image(views.pixel_values, mask, *want["image"])
            views.image, views.masked_image = _either(image, views.image), _either(masked, views.masked_image)
        if any(want["text"]):
            text, masked = self._clean_and_masked_text(
                views.input_ids, ids, views.attention_mask, views.token_type_ids, *want["text"]
            )
            views.text, views.masked_text = _either(text, views.text), _either(masked, views.masked_text)
        if fused:
            views.fused = self.model.encode_multimodal(views.masked_image, views.masked_text).last_hidden_state

    def _encode_clean(self, views: Views, want: dict[str, list[bool]], mask: Tensor | None, ids: Tensor | None) -> None:
        """The clean passes ``want`` asks for, alone (each marked done there): a side without a mask takes its
        masked view from the same pass; with one, the clean image pass gets an all-False mask, as its half of
        a stacked pass would (no patch dropout there)."""
        if want["image"][0]:
            stacked = mask is not None and want["image"][1]
            views.image = self.model.encode_image(views.pixel_values, torch.zeros_like(mask) if stacked else None)
            if mask is None and want["image"][1]:
                views.masked_image, want["image"][1] = views.image, False
            want["image"][0] = False
        if want["text"][0]:
            views.text = self.model.encode_text(views.input_ids, views.attention_mask, views.token_type_ids)
            if ids is None and want["text"][1]:
                views.masked_text, want["text"][1] = views.text, False
            want["text"][0] = False

    def _clean_and_masked_image(
        self, pixel_values: Tensor, patch_mask: Tensor | None, need_clean: bool, need_masked: bool
    ) -> tuple[EncoderOutput | None, EncoderOutput | None]:
        """Image encoder outputs without and with the patch mask (the same pass when there is no mask)."""
        enc = self.model.encode_image
        if patch_mask is None or not (need_clean and need_masked):
            out = enc(pixel_values, patch_mask) if (need_clean or need_masked) else None
            return (out if need_clean else None), (out if need_masked else None)
        both = enc(torch.cat([pixel_values, pixel_values]), torch.cat([torch.zeros_like(patch_mask), patch_mask]))
        return _split_batch(both, pixel_values.shape[0])

    def _clean_and_masked_text(
        self,
        input_ids: Tensor,
        masked_input_ids: Tensor | None,
        attention_mask: Tensor | None,
        token_type_ids: Tensor | None,
        need_clean: bool,
        need_masked: bool,
    ) -> tuple[EncoderOutput | None, EncoderOutput | None]:
        """Text encoder outputs on the clean and the MLM-masked ids (the same pass without masked ids)."""
        enc = self.model.encode_text
        if masked_input_ids is None or not (need_clean and need_masked):
            ids = masked_input_ids if (masked_input_ids is not None and need_masked) else input_ids
            out = enc(ids, attention_mask, token_type_ids) if (need_clean or need_masked) else None
            return (out if need_clean else None), (out if need_masked else None)

        def twice(t: Tensor | None) -> Tensor | None:
            return None if t is None else torch.cat([t, t])

        both = enc(torch.cat([input_ids, masked_input_ids]), twice(attention_mask), twice(token_type_ids))
        return _split_batch(both, input_ids.shape[0])

    def _require_mask(self, patch_mask: Tensor | None, what: str) -> Tensor:
        if patch_mask is None:
            raise InputError(f"{what}: needs patch_mask (bool (B, Np), True = masked); the collators make it")
        return patch_mask.reshape(patch_mask.shape[0], -1).bool()


class RandomCodebookWarning(UserWarning):
    """A pretraining model was built with a randomly initialised image tokenizer (see :data:`RANDOM_CODEBOOK`)."""


def build_to_load(config: FLAVAConfig) -> FLAVAForPreTraining:
    """:func:`flava_model_for_pretraining` for a model whose weights (the tokenizer's too) are loaded next:
    no warning about the tokenizer's random initialisation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomCodebookWarning)
        return flava_model_for_pretraining(config)


#: What the builder warns and the pretraining recipe refuses (:attr:`CodebookConfig.allow_random`).
RANDOM_CODEBOOK = (
    "the image tokenizer is randomly initialised: its ids carry almost nothing about the image, so the MIM "
    "and MMM-image losses fall to ~0 within a few hundred steps while their gradients crowd out the other "
    "objectives'. Set codebook.checkpoint (a dVAE from recipes/dalle/train_tokenizer.py or a DALL-E "
    "encoder) or pretraining.mim_target='pixels' (no tokenizer)"
)


def random_codebook(cfg: FLAVAConfig) -> bool:
    """Whether ``cfg`` trains masked-image objectives on a randomly initialised tokenizer it did not
    explicitly allow (:attr:`CodebookConfig.allow_random`)."""
    cb, opts = cfg.codebook, cfg.pretraining
    masked_image = any(opts.weights.active(o.name) for o in FLAVA_OBJECTIVES if o.side == "image")
    return cb.enabled and opts.mim_target == "tokens" and masked_image and not cb.checkpoint and not cb.allow_random


#: fraction of the positions a static-shape masked objective predicts (:meth:`FLAVAForPreTraining.set_static_shapes`)
DEFAULT_BUDGETS = {"image": 0.4, "text": 0.25}


def patchify(pixels: Tensor, patch_size: int, normalize: bool = True) -> Tensor:
    """Pixel targets for MIM: ``(B, C, H, W) -> (B, Np, p * p * C)`` in the ViT's patch order (row-major
    over the grid); with ``normalize`` each patch minus its mean over its own std (MAE, eps 1e-6)."""
    b, c, h, w = pixels.shape
    p = patch_size
    if h % p or w % p:
        raise InputError(f"image {h}x{w} is not a whole number of {p}x{p} patches")
    x = pixels.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), -1)
    if normalize:
        mean, var = x.mean(-1, keepdim=True), x.var(-1, keepdim=True, unbiased=False)
        x = (x - mean) / (var + 1e-6).sqrt()
    return x


def _either(a: EncoderOutput | None, b: EncoderOutput | None) -> EncoderOutput | None:
    """``a``, or ``b`` where ``a`` is None (an encoder output this pass did not make)."""
    return a if a is not None else b


def _split_batch(out: EncoderOutput, n: int) -> tuple[EncoderOutput, EncoderOutput]:
    """Split an encoder output over a batch of ``2n`` into its two halves."""

    def half(t: Tensor | None, i: int) -> Tensor | None:
        return None if t is None else t[i * n : (i + 1) * n]

    return tuple(  # type: ignore[return-value]
        EncoderOutput(
            last_hidden_state=half(out.last_hidden_state, i),
            pre_norm_hidden_state=half(out.pre_norm_hidden_state, i),
            pooler_output=half(out.pooler_output, i),
            attention_mask=half(out.attention_mask, i),
        )
        for i in (0, 1)
    )


def resolve_codebook_config(cfg: FLAVAConfig, encoder: DalleEncoder | None = None) -> FLAVAConfig:
    """Make ``cfg.codebook`` follow its tokenizer checkpoint (a trained dVAE or a released DALL-E encoder).

    With ``codebook.checkpoint`` set, the sizes and the vocabulary are read from the checkpoint and
    ``codebook.image_size`` becomes the ViT patch grid times the tokenizer's downsampling, so that
    the token grid equals the patch grid. Without a checkpoint ``cfg`` is returned unchanged.
    """
    cb = cfg.codebook
    if not (cb.enabled and cb.checkpoint):
        return cfg
    encoder = encoder or dalle_encoder_from_checkpoint(cb.checkpoint)
    grid = cfg.image.image_size // cfg.image.patch_size
    return replace_config(
        cfg,
        {
            "codebook.hidden_size": encoder.hidden_size,
            "codebook.vocab_size": encoder.vocab_size,
            "codebook.num_groups": encoder.num_groups,
            "codebook.blocks_per_group": encoder.blocks_per_group,
            "codebook.image_size": grid * encoder.downsample,
        },
    )


def flava_model_for_pretraining(
    config: FLAVAConfig | None = None,
    *,
    image_tokenizer: ImageTokenizer | None = None,
    objectives: Sequence[Objective] = FLAVA_OBJECTIVES,
    **overrides: Any,
) -> FLAVAForPreTraining:
    """Build FLAVA for pretraining (Singh et al., CVPR 2022): model, heads, frozen dVAE tokenizer.

    With the released sizes this is ≈357.6M parameters, 53.8M of them the frozen codebook.

    Args:
        config: a :class:`FLAVAConfig`; default ``FLAVAConfig()``.
        image_tokenizer: use this tokenizer instead of building one from ``config.codebook``. With
            ``codebook.checkpoint`` (a dVAE trained by ``recipes/dalle/train_tokenizer.py`` or a
            released DALL-E encoder) the codebook sizes, vocabulary and input size follow the
            checkpoint (:func:`resolve_codebook_config`).
        objectives: the objective table (:data:`~mmkit.models.FLAVA_OBJECTIVES`, plus any of your own:
            each added one's head is built from the config and its weight read from
            ``pretraining.weights.extra``).
        **overrides: :class:`FLAVAConfig` fields, e.g. ``**{"pretraining.weights.itm": 0.0}``
            or ``codebook={"enabled": False}``.
    """
    cfg = replace_config(config or FLAVAConfig(), overrides)
    grid = cfg.image.image_size // cfg.image.patch_size
    model = flava_model(cfg)
    cb = cfg.codebook
    pixels = cfg.pretraining.mim_target == "pixels"
    if image_tokenizer is None and cb.enabled and not pixels:
        if cb.checkpoint:
            encoder = dalle_encoder_from_checkpoint(cb.checkpoint)
            cfg = resolve_codebook_config(cfg, encoder)
            cb = cfg.codebook
        else:
            if random_codebook(cfg):
                warnings.warn(
                    RANDOM_CODEBOOK + " (codebook.allow_random=True silences this)", RandomCodebookWarning, stacklevel=2
                )
            encoder = DalleEncoder(cb.hidden_size, cb.vocab_size, cb.num_groups, cb.blocks_per_group)
        image_tokenizer = ImageTokenizer(encoder, channels_last=cb.channels_last)
    if image_tokenizer is not None:
        vocab = image_tokenizer.vocab_size
        token_grid = cb.image_size // image_tokenizer.encoder.downsample
        if token_grid != grid:
            raise InputError(
                f"tokenizer grid {token_grid} (codebook.image_size {cb.image_size} / "
                f"{image_tokenizer.encoder.downsample}) differs from the ViT patch grid {grid} "
                f"(image_size {cfg.image.image_size} / patch_size {cfg.image.patch_size})"
            )
        if vocab != cb.vocab_size:
            cfg = replace_config(cfg, {"codebook.vocab_size": vocab})
    heads = {}
    for objective in head_build_order(objectives):  # each built and drawn in turn: the released random stream
        heads[objective.head_name] = head = objective.head(cfg)
        objective.init_head(head, cfg)
    model.config = cfg
    return FLAVAForPreTraining(model, heads, image_tokenizer=image_tokenizer, config=cfg, objectives=objectives)
