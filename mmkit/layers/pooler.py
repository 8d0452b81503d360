"""Poolers that turn a token sequence into one vector.

* :class:`Pooler`: ``tanh(dense(x[:, 0]))`` (BERT, FLAVA).
* :class:`TokenPool`: one token as it is: the first (CLIP's image CLS), the first end-of-text
  token (CLIP's text) or the last position (SigLIP's text).
* :class:`AttentionPool`: a learned query attends over all tokens, then a residual MLP
  (SigLIP's "MAP" head; Zhai et al., "Sigmoid Loss for Language Image Pre-Training", ICCV 2023,
  after Lee et al.'s set-transformer pooling).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.layers.mlp import MLP
from mmkit.utils.errors import InputError

TokenPoolMode = Literal["first", "eot", "last"]


class Pooler(nn.Module):
    """BERT-style pooler: ``tanh(dense(x[:, 0]))``.

    Args:
        dim: width ``D``.

    Shapes: ``(B, N, D) -> (B, D)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: Tensor) -> Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class TokenPool(nn.Module):
    """Pick one token per sequence, without any weights.

    Args:
        mode: ``"first"`` (position 0), ``"eot"`` (the first position whose id is ``eos_token_id``;
            with ``eos_token_id=None`` the position of the largest id, OpenAI CLIP's original rule,
            where end-of-text is the last id of the vocabulary) or ``"last"`` (position ``N - 1``
            whatever the padding, as SigLIP, which pads every text to its full length).
        eos_token_id: the end-of-text id for ``"eot"``.

    Shapes: ``(B, N, D)`` and, for ``"eot"``, ``input_ids`` ``(B, N)`` -> ``(B, D)``.
    """

    def __init__(self, mode: TokenPoolMode = "first", eos_token_id: int | None = None) -> None:
        super().__init__()
        if mode not in ("first", "eot", "last"):
            raise InputError(f"TokenPool mode must be 'first', 'eot' or 'last', got {mode!r}")
        self.mode = mode
        self.eos_token_id = eos_token_id

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}" + (f", eos_token_id={self.eos_token_id}" if self.mode == "eot" else "")

    def forward(self, hidden_states: Tensor, input_ids: Tensor | None = None) -> Tensor:
        """``hidden_states (B, N, D)`` (and for ``"eot"`` ``input_ids (B, N)``) -> ``(B, D)``."""
        if self.mode == "first":
            return hidden_states[:, 0]
        if self.mode == "last":
            return hidden_states[:, -1]
        if input_ids is None:
            raise InputError("TokenPool('eot') needs the input_ids to find the end-of-text token")
        if self.eos_token_id is None:
            position = input_ids.argmax(dim=-1)
        else:
            # the first eos (padding may use the same id); a row without one pools position 0
            position = (input_ids == self.eos_token_id).int().argmax(dim=-1)
        return hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), position]


class AttentionPool(nn.Module):
    """Multi-head attention pooling: ``h = Attn(probe, x, x); h = h + MLP(LN(h))``.

    One learned ``probe`` query attends over every token; the result goes through a pre-norm
    residual MLP. The attention's projections are one fused ``qkv`` linear whose output rows are
    ``[q; k; v]`` (the layout of :class:`torch.nn.MultiheadAttention`'s ``in_proj_weight``), so the
    probe uses the first ``D`` rows and the tokens the other ``2D``.

    Args:
        dim: width ``D``. num_heads: attention heads. mlp_dim: MLP inner width.
        activation: MLP activation name. norm_eps: LayerNorm epsilon.

    Shapes: ``(B, N, D)`` with an optional ``(B, N)`` keep-mask -> ``(B, D)``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, activation: str = "gelu_tanh", norm_eps: float = 1e-6):
        super().__init__()
        if dim % num_heads != 0:
            raise InputError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out_proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, mlp_dim, activation=activation)
        nn.init.trunc_normal_(self.probe, std=0.02)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """``hidden_states (B, N, D)``, optional ``attention_mask (B, N)`` (True/1 = real token) -> ``(B, D)``."""
        b, n, d = hidden_states.shape
        h, dh = self.num_heads, d // self.num_heads
        w, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(self.probe.to(hidden_states.dtype), w[:d], None if bias is None else bias[:d])
        kv = F.linear(hidden_states, w[d:], None if bias is None else bias[d:])
        q = q.view(1, 1, h, dh).transpose(1, 2).expand(b, h, 1, dh)  # (B, H, 1, Dh)
        k, v = kv.view(b, n, 2, h, dh).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, Dh)
        mask = None if attention_mask is None else attention_mask.to(torch.bool)[:, None, None, :]
        pooled = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, 1, Dh)
        pooled = self.out_proj(pooled.transpose(1, 2).reshape(b, d))
        return pooled + self.mlp(self.norm(pooled))
