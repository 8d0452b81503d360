"""Image, text and multimodal (fusion) encoders, usable alone in other models.

Every encoder shares one interface:

* ``forward(...) -> EncoderOutput`` with ``last_hidden_state`` (after the final
  norm), ``pre_norm_hidden_state``, ``pooler_output`` and, on request, every
  layer's hidden states;
* ``width``: the output feature size;
* ``set_grad_checkpointing(enable)``: per-layer activation checkpointing;
* ``no_weight_decay()``: parameter names that should take no weight decay;
* ``reset_parameters()``: the builders' initialisation (also after ``to_empty`` on a meta-built model).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmkit.layers.embeddings import PatchEmbedding, TextEmbedding
from mmkit.layers.init import REFERENCE_STD, init_module, no_weight_decay_names
from mmkit.layers.pooler import AttentionPool, TokenPool
from mmkit.layers.transformer import EncoderOutput, TransformerEncoder
from mmkit.utils.errors import InputError


class _Encoder(nn.Module):
    """Common plumbing: the transformer stack lives in ``self.encoder``."""

    encoder: TransformerEncoder
    #: std of the weights' initialisation (the builders set it from the width, ``init_std_for``)
    init_std: float = REFERENCE_STD
    #: start the learned tokens and position tables at 0 (FLAVA) rather than drawing them (CLIP, SigLIP)
    zero_init_tokens: bool = True

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every parameter by the builders' rule: :func:`~mmkit.layers.init.init_module` with
        ``init_std`` and ``zero_init_tokens``. Works on FSDP2's sharded parameters (each rank its shard)."""
        init_module(self, self.init_std, self.zero_init_tokens)

    @property
    def width(self) -> int:
        return self.encoder.norm.normalized_shape[0]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each layer's activations in backward instead of storing them."""
        self.encoder.set_grad_checkpointing(enable)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that take no weight decay (biases, norms, embeddings, tokens)."""
        return no_weight_decay_names(self)

    def _pool(self, out: EncoderOutput, input_ids: Tensor | None = None) -> EncoderOutput:
        if isinstance(self.pooler, TokenPool):
            out.pooler_output = self.pooler(out.last_hidden_state, input_ids)
        elif isinstance(self.pooler, AttentionPool):
            out.pooler_output = self.pooler(out.last_hidden_state, out.attention_mask)
        elif self.pooler is not None:
            out.pooler_output = self.pooler(out.last_hidden_state)
        return out


class ImageEncoder(_Encoder):
    """ViT: patch embedding, pre-norm transformer, final norm, optional pooler.

    Args:
        embeddings: a :class:`~mmkit.layers.PatchEmbedding`.
        encoder: a :class:`~mmkit.layers.TransformerEncoder` of the same width.
        pooler: optional module ``(B, N, D) -> (B, D)`` (a :class:`~mmkit.layers.Pooler`,
            :class:`~mmkit.layers.TokenPool` or :class:`~mmkit.layers.AttentionPool`).
        patch_dropout: FLIP's patch dropout (Li et al., "Scaling Language-Image Pre-training via
            Masking", CVPR 2023): in training mode each image keeps a random ``1 - patch_dropout`` of
            its patch tokens (at least one; CLS always), in their original order; eval mode keeps all.
            Not combined with ``patch_mask`` (masked modelling needs every position).
    """

    def __init__(
        self,
        embeddings: PatchEmbedding,
        encoder: TransformerEncoder,
        pooler: nn.Module | None,
        patch_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not 0.0 <= patch_dropout < 1.0:
            raise InputError(f"patch_dropout must be in [0, 1), got {patch_dropout}")
        self.embeddings = embeddings
        self.encoder = encoder
        self.pooler = pooler
        self.patch_dropout = patch_dropout

    def forward(
        self, pixel_values: Tensor, patch_mask: Tensor | None = None, *, output_hidden_states: bool = False
    ) -> EncoderOutput:
        """Encode images.

        Args:
            pixel_values: ``(B, C, H, W)`` float, normalised; other resolutions than the
                configured one interpolate the position embeddings.
            patch_mask: optional bool ``(B, Np)`` or ``(B, Gh, Gw)``, True = masked patch.
            output_hidden_states: also return every layer's hidden states.

        Returns:
            :class:`~mmkit.layers.EncoderOutput` over ``1 + Np`` tokens (CLS first; ``Np`` without a CLS
            token; with patch dropout in training mode ``1 + max(1, round((1 - patch_dropout) * Np))``);
            ``pooler_output`` is ``(B, D)``.
        """
        x = self.embeddings(pixel_values, patch_mask)
        if self.training and self.patch_dropout > 0 and patch_mask is None:
            x = drop_patches(x, self.patch_dropout, num_prefix_tokens=self.embeddings.num_prefix_tokens)
        return self._pool(self.encoder(x, output_hidden_states=output_hidden_states))


def drop_patches(
    tokens: Tensor, fraction: float, generator: torch.Generator | None = None, *, num_prefix_tokens: int = 1
) -> Tensor:
    """``(B, P + Np, D)`` -> ``(B, P + k, D)``: the ``P = num_prefix_tokens`` prefix tokens (CLS) and a random
    ``k = max(1, round((1 - fraction) * Np))`` of each row's patch tokens, kept in their original order
    (each row its own random subset)."""
    b, n, d = tokens.shape
    p = num_prefix_tokens
    keep = max(1, round((1 - fraction) * (n - p)))
    scores = torch.rand(b, n - p, device=tokens.device, generator=generator)
    kept = scores.topk(keep, dim=1).indices.sort(dim=1).values + p  # positions after the prefix
    patches = tokens.gather(1, kept.unsqueeze(-1).expand(b, keep, d))
    return torch.cat([tokens[:, :p], patches], dim=1)


class TextEncoder(_Encoder):
    """Text transformer: BERT-style embeddings, pre-norm transformer, final norm, optional pooler.

    Args:
        embeddings: a :class:`~mmkit.layers.TextEmbedding`.
        encoder: a :class:`~mmkit.layers.TransformerEncoder` of the same width.
        pooler: optional module ``(B, N, D) -> (B, D)``.
    """

    def __init__(self, embeddings: TextEmbedding, encoder: TransformerEncoder, pooler: nn.Module | None) -> None:
        super().__init__()
        self.embeddings = embeddings
        self.encoder = encoder
        self.pooler = pooler

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """The builders' initialisation (:meth:`_Encoder.reset_parameters`) and the position-id buffer,
        which is in no state dict and which ``to_empty`` leaves unset."""
        super().reset_parameters()
        self.embeddings.reset_buffers()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        *,
        output_hidden_states: bool = False,
    ) -> EncoderOutput:
        """Encode token ids.

        Args:
            input_ids: ``(B, L)`` int64.
            attention_mask: optional ``(B, L)``, True/1 = real token, False/0 = padding.
            token_type_ids: optional ``(B, L)`` segment ids. position_ids: optional ``(B, L)``.
            output_hidden_states: also return every layer's hidden states.

        Returns:
            :class:`~mmkit.layers.EncoderOutput` over ``L`` tokens; ``pooler_output`` is
            ``(B, D)``, from token 0 (``[CLS]``) for FLAVA, from the pooler's token otherwise.
        """
        x = self.embeddings(input_ids, token_type_ids, position_ids)
        out = self.encoder(x, attention_mask, output_hidden_states=output_hidden_states)
        return self._pool(out, input_ids)


class MultimodalEncoder(_Encoder):
    """Fusion transformer over already-projected image and text tokens, with its own CLS.

    Args:
        encoder: a :class:`~mmkit.layers.TransformerEncoder`.
        pooler: optional module ``(B, N, D) -> (B, D)``.
        use_cls_token: prepend a learned ``CLS_M`` token.
    """

    def __init__(self, encoder: TransformerEncoder, pooler: nn.Module | None, use_cls_token: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.pooler = pooler
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.width)) if use_cls_token else None
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, *, output_hidden_states: bool = False
    ) -> EncoderOutput:
        """Fuse a token sequence.

        Args:
            hidden_states: ``(B, N, D)``, e.g. ``cat([image tokens, text tokens], 1)``.
            attention_mask: optional ``(B, N)``, True/1 = real token; the CLS token is
                always kept.
            output_hidden_states: also return every layer's hidden states.

        Returns:
            :class:`~mmkit.layers.EncoderOutput` over ``1 + N`` tokens (``CLS_M`` first).
        """
        if hidden_states.ndim != 3 or hidden_states.shape[-1] != self.width:
            raise InputError(f"hidden_states must be (B, N, {self.width}), got {tuple(hidden_states.shape)}")
        b = hidden_states.shape[0]
        if self.cls_token is not None:
            cls = self.cls_token.expand(b, -1, -1).to(hidden_states.dtype)
            hidden_states = torch.cat([cls, hidden_states], dim=1)
            if attention_mask is not None:
                keep_cls = torch.ones(b, 1, dtype=torch.bool, device=attention_mask.device)
                attention_mask = torch.cat([keep_cls, attention_mask.to(torch.bool)], dim=1)
        return self._pool(self.encoder(hidden_states, attention_mask, output_hidden_states=output_hidden_states))
