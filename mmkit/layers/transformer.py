"""Pre-norm transformer layer and encoder.

A layer computes ``h = h + Attn(LN1(h)); h = h + MLP(LN2(h))`` (the ViT / FLAVA
block). The encoder stacks layers and ends with a final LayerNorm. It returns
the hidden states both *before* and *after* that norm, because FLAVA's fusion
encoder consumes the former and its contrastive / masked-prediction heads the
latter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mmkit.layers.attention import AttentionBackend, MultiHeadSelfAttention
from mmkit.layers.mlp import MLP


@dataclass
class EncoderOutput:
    """What every mmkit encoder returns.

    Attributes:
        last_hidden_state: ``(B, N, D)``, after the final LayerNorm.
        pre_norm_hidden_state: ``(B, N, D)``, the last layer's output before the final LayerNorm.
        pooler_output: ``(B, D)`` when the encoder has a pooler, else ``None``.
        hidden_states: when requested, the input of the first layer followed by each
            layer's output (``num_layers + 1`` tensors of ``(B, N, D)``, none normalised).
        attention_mask: ``(B, N)`` bool, True = real token, for the sequence in
            ``last_hidden_state`` (``None`` when every token is real).
    """

    last_hidden_state: Tensor
    pre_norm_hidden_state: Tensor
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attention_mask: Tensor | None = None


class TransformerLayer(nn.Module):
    """One pre-norm block, composed from the sub-modules it is given.

    Args:
        attention: maps ``(B, N, D)`` and an optional ``(B, N)`` keep-mask to ``(B, N, D)``.
        mlp: maps ``(B, N, D)`` to ``(B, N, D)``.
        norm1: applied before attention.
        norm2: applied before the MLP.

    Shapes: ``(B, N, D) -> (B, N, D)``.
    """

    def __init__(self, attention: nn.Module, mlp: nn.Module, norm1: nn.Module, norm2: nn.Module) -> None:
        super().__init__()
        self.norm1 = norm1
        self.attn = attention
        self.norm2 = norm2
        self.mlp = mlp

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), attention_mask)
        return x + self.mlp(self.norm2(x))


class TransformerEncoder(nn.Module):
    """A stack of layers followed by a final norm.

    Args:
        layers: the blocks, applied in order.
        norm: the final normalisation.
        input_norm: optional normalisation of the stack's input (CLIP's image encoder has one,
            ``pre_layrnorm`` in OpenAI's and transformers' names).

    Call :meth:`set_grad_checkpointing` to recompute each layer's activations in
    the backward pass instead of storing them (less memory, about one extra
    forward of compute).
    """

    def __init__(self, layers: list[nn.Module], norm: nn.Module, input_norm: nn.Module | None = None) -> None:
        super().__init__()
        self.input_norm = input_norm
        self.layers = nn.ModuleList(layers)
        self.norm = norm
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Turn per-layer activation checkpointing on or off."""
        self.grad_checkpointing = enable

    def forward(
        self, x: Tensor, attention_mask: Tensor | None = None, *, output_hidden_states: bool = False
    ) -> EncoderOutput:
        """Run the stack.

        Args:
            x: ``(B, N, D)``.
            attention_mask: optional ``(B, N)``, True/1 = real token, False/0 = padding.
            output_hidden_states: also return every layer's input/output (costs memory); the first
                is the input after ``input_norm``.

        Returns:
            :class:`EncoderOutput` with ``pooler_output=None``.
        """
        if attention_mask is not None:
            attention_mask = attention_mask.to(torch.bool)
        if self.input_norm is not None:
            x = self.input_norm(x)
        all_states: list[Tensor] | None = [x] if output_hidden_states else None
        use_ckpt = self.grad_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if use_ckpt:
                x = checkpoint(layer, x, attention_mask, use_reentrant=False)
            else:
                x = layer(x, attention_mask)
            if all_states is not None:
                all_states.append(x)
        return EncoderOutput(
            last_hidden_state=self.norm(x),
            pre_norm_hidden_state=x,
            hidden_states=tuple(all_states) if all_states is not None else None,
            attention_mask=attention_mask,
        )


@dataclass(frozen=True)
class AttentionOptions:
    """How every self-attention of a stack is built (:func:`transformer_encoder`).

    Attributes:
        qkv_bias: bias on the QKV projection.
        dropout: dropout on the attention probabilities (training only).
        backend: ``"sdpa" | "xformers" | "math" | "auto"``, see :mod:`mmkit.layers.attention`.
        causal: each token attends to itself and the tokens before it only.
    """

    qkv_bias: bool = True
    dropout: float = 0.0
    backend: AttentionBackend = "sdpa"
    causal: bool = False


def transformer_encoder(
    *,
    dim: int,
    num_layers: int,
    num_heads: int,
    mlp_dim: int,
    activation: str = "gelu",
    norm_eps: float = 1e-12,
    dropout: float = 0.0,
    input_norm: bool = False,
    attention: AttentionOptions = AttentionOptions(),
) -> TransformerEncoder:
    """Build a pre-norm :class:`TransformerEncoder` of ``num_layers`` identical blocks, ``(B, N, D) -> (B, N, D)``.

    Args:
        dim: width ``D``. num_layers: depth. num_heads: attention heads.
        mlp_dim: MLP inner width. activation: MLP activation name.
        norm_eps: LayerNorm epsilon for every norm (FLAVA uses 1e-12).
        dropout: residual-branch dropout (after the attention's output projection and in the MLP).
        input_norm: a LayerNorm before the first layer.
        attention: QKV bias, attention dropout, backend and causality (:class:`AttentionOptions`).
    """
    layers = [
        TransformerLayer(
            attention=MultiHeadSelfAttention(
                dim,
                num_heads,
                qkv_bias=attention.qkv_bias,
                attention_dropout=attention.dropout,
                proj_dropout=dropout,
                backend=attention.backend,
                causal=attention.causal,
            ),
            mlp=MLP(dim, mlp_dim, activation=activation, dropout=dropout),
            norm1=nn.LayerNorm(dim, eps=norm_eps),
            norm2=nn.LayerNorm(dim, eps=norm_eps),
        )
        for _ in range(num_layers)
    ]
    pre = nn.LayerNorm(dim, eps=norm_eps) if input_norm else None
    return TransformerEncoder(layers, nn.LayerNorm(dim, eps=norm_eps), input_norm=pre)
