"""Multi-head self-attention with switchable kernels.

Three backends compute the same function:

``"sdpa"`` (default)
    :func:`torch.nn.functional.scaled_dot_product_attention`, which dispatches to
    FlashAttention / memory-efficient / fused CPU kernels where the inputs allow.
``"xformers"``
    ``xformers.ops.memory_efficient_attention``; only where its compiled kernel
    runs (CUDA tensors, xformers installed with ``pip install mmkit[xformers]``
    *for this PyTorch build*: availability is decided by running the kernel once,
    not by the import, see :func:`xformers_available`).
``"math"``
    a plain ``softmax(QK^T / sqrt(d)) V`` written out in PyTorch ops: the
    reference the fused paths are tested against. (To look at attention maps,
    use :meth:`MultiHeadSelfAttention.attention_probs`, whatever the backend.)

``"auto"`` picks xformers when it can run on the tensors it is given and sdpa
otherwise, so a model built with ``"auto"`` runs unchanged on CPU and GPU.
The backend is resolved once, at construction, and stored on the module
(``module.backend``); :func:`set_attention_backend` switches it for a whole model.

Mask convention (used throughout mmkit): ``attention_mask`` is ``(B, N)`` with
``True``/``1`` for tokens that take part in attention and ``False``/``0`` for
padding. Padded *keys* are ignored by every query; padded *query* rows are
still computed (their values are meaningless and callers ignore them).

A layer built with ``causal=True`` (CLIP's text encoder) also hides every key after
the query's own position; with right padding no query row is left without a key.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mmkit.utils.errors import InputError, StateError

AttentionBackend = Literal["auto", "sdpa", "xformers", "math"]
BACKENDS: tuple[str, ...] = ("auto", "sdpa", "xformers", "math")


@functools.cache
def _xformers_import_error() -> str | None:
    """Return why xformers cannot be used, or ``None`` when its kernels actually run.

    Importing ``xformers.ops`` is not enough: a wheel built for another PyTorch/CUDA
    imports fine, prints a warning and then has no operator for any input. So the
    check runs the kernel once on a tiny CUDA problem in each dtype mmkit uses
    (fp32 with a padding bias: the cutlass kernel; bf16: the flash kernels) and
    reports the first failure. The result is cached for the process.
    """
    try:
        import xformers.ops as xops
    except Exception as exc:  # ImportError, or a failing compiled-op load
        return f"xformers could not be imported ({type(exc).__name__}: {exc})"
    if not torch.cuda.is_available():
        return "xformers kernels need a CUDA device and none is available"
    for dtype in (torch.float32, torch.bfloat16):
        try:
            q = torch.zeros(1, 8, 2, 32, device="cuda", dtype=dtype)  # (B, N, H, Dh)
            bias = torch.zeros(1, 2, 8, 8, device="cuda", dtype=dtype)
            xops.memory_efficient_attention(q, q, q, attn_bias=bias if dtype == torch.float32 else None)
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return (
                f"xformers {getattr(sys.modules.get('xformers'), '__version__', '?')} is installed but its "
                f"kernel does not run in {dtype} on this machine ({type(exc).__name__}: {first}); "
                "usually its compiled ops were built for another PyTorch/CUDA version "
                "(`python -m xformers.info` shows which ops were built)"
            )
    return None


def xformers_available() -> bool:
    """Whether the xformers backend can run here: installed, a CUDA device present and its kernel runs."""
    return _xformers_import_error() is None


def resolve_attention_backend(backend: str) -> str:
    """Turn a requested backend into the one that will run.

    Args:
        backend: one of ``"auto"``, ``"sdpa"``, ``"xformers"``, ``"math"``.

    Returns:
        ``"sdpa"``, ``"xformers"`` or ``"math"``. ``"auto"`` resolves to
        ``"xformers"`` when :func:`xformers_available` and to ``"sdpa"`` otherwise.

    Raises:
        ValueError: for an unknown name.
        StateError: when ``"xformers"`` is asked for explicitly but cannot run;
            the message says why and what to use instead.
    """
    if backend not in BACKENDS:
        raise InputError(f"unknown attention backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "xformers" if xformers_available() else "sdpa"
    if backend == "xformers":
        reason = _xformers_import_error()
        if reason is not None:
            raise StateError(
                f"attention backend 'xformers' was requested but cannot run: {reason}. "
                "Install it with `pip install mmkit[xformers]` on a CUDA machine, "
                "or use attention_backend='sdpa' (or 'auto', which falls back to sdpa)."
            )
    return backend


def _check_mask(attention_mask: Tensor, batch: int, seq: int) -> Tensor:
    if attention_mask.shape != (batch, seq):
        raise InputError(
            f"attention_mask must have shape (batch, seq) = ({batch}, {seq}), got {tuple(attention_mask.shape)}"
        )
    return attention_mask.to(torch.bool)


def allowed_keys(keep: Tensor | None, n: int, causal: bool, device: torch.device) -> Tensor | None:
    """The bool mask of keys each query may attend to, or ``None`` when all may.

    Args:
        keep: optional bool ``(B, N)``, True for real (non-padding) tokens.
        n: sequence length ``N``.
        causal: also hide keys after the query position.

    Returns:
        ``(B, 1, N, N)`` with padding, ``(1, 1, N, N)`` causal without padding, or ``None``.
    """
    mask = None if keep is None else keep[:, None, None, :]
    if causal:
        tril = torch.ones(n, n, dtype=torch.bool, device=device).tril()[None, None]
        mask = tril if mask is None else mask & tril
    return mask


def math_attention(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None = None, dropout_p: float = 0.0, *, causal: bool = False
) -> tuple[Tensor, Tensor]:
    """Reference attention.

    Args:
        q, k, v: ``(B, H, N, Dh)``.
        keep: optional bool ``(B, N)``, True for keys that may be attended to.
        dropout_p: dropout on the attention probabilities.
        causal: query ``i`` attends only to keys ``<= i``.

    Returns:
        ``(out, probs)``: ``(B, H, N, Dh)`` and ``(B, H, N, N)``.
    """
    scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    allowed = allowed_keys(keep, q.shape[-2], causal, q.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return torch.matmul(probs, v), probs


def _xformers_attention(
    q: Tensor, k: Tensor, v: Tensor, keep: Tensor | None, dropout_p: float, causal: bool = False
) -> Tensor:
    """xformers memory-efficient attention on ``(B, H, N, Dh)`` inputs, returning ``(B, H, N, Dh)``."""
    import xformers.ops as xops

    bias = None
    if causal and keep is None:
        bias = xops.LowerTriangularMask()
    elif keep is not None:
        b, h, n, _ = q.shape
        # xformers wants a (B, H, Nq, Nk) additive bias whose rows start on 8-element
        # boundaries: allocate a padded buffer and slice it.
        n_pad = (n + 7) // 8 * 8
        buf = torch.zeros(b, h, n, n_pad, dtype=q.dtype, device=q.device)
        bias = buf[..., :n]
        bias.masked_fill_(~allowed_keys(keep, n, causal, q.device), float("-inf"))
    q, k, v = (rearrange(t, "b h n dh -> b n h dh") for t in (q, k, v))  # xformers' layout
    out = xops.memory_efficient_attention(q, k, v, attn_bias=bias, p=dropout_p)
    return rearrange(out, "b n h dh -> b h n dh")


class MultiHeadSelfAttention(nn.Module):
    """Multi-head self-attention with a fused QKV projection.

    Args:
        dim: model width ``D``.
        num_heads: number of heads ``H``; ``D`` must be divisible by it.
        qkv_bias: whether the Q/K/V projection has a bias.
        attention_dropout: dropout on attention probabilities (training only).
        proj_dropout: dropout after the output projection (training only).
        backend: ``"auto" | "sdpa" | "xformers" | "math"``, see module docs.
        causal: query ``i`` attends only to keys ``<= i`` (CLIP's text encoder).

    Parameters: ``qkv`` (``Linear(D, 3D)``; output rows are ``[q; k; v]``, each
    split into ``H`` contiguous blocks of ``D/H``) and ``out_proj``
    (``Linear(D, D)``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        proj_dropout: float = 0.0,
        backend: AttentionBackend = "sdpa",
        causal: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise InputError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.attention_dropout = attention_dropout
        self.causal = causal
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.out_proj = nn.Linear(dim, dim)
        self.proj_dropout = nn.Dropout(proj_dropout)
        self.set_backend(backend)

    def set_backend(self, backend: AttentionBackend) -> None:
        """Resolve and store the attention kernel (see :func:`resolve_attention_backend`)."""
        self.requested_backend = backend
        self.backend = resolve_attention_backend(backend)

    def extra_repr(self) -> str:
        causal = ", causal=True" if self.causal else ""
        return f"dim={self.dim}, num_heads={self.num_heads}, backend={self.backend!r}{causal}"

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The fused projection split into ``q, k, v``, each ``(B, H, N, Dh)``."""
        _, _, d = x.shape
        if d != self.dim:
            raise InputError(f"expected input width {self.dim}, got {d} (input shape {tuple(x.shape)})")
        qkv = rearrange(self.qkv(x), "b n (three h dh) -> three b h n dh", three=3, h=self.num_heads)
        q, k, v = qkv.unbind(0)  # each (B, H, N, Dh)
        return q, k, v

    def forward(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Attend over the sequence.

        Args:
            x: ``(B, N, D)`` float.
            attention_mask: optional ``(B, N)`` bool or 0/1, True/1 = real token, False/0 = padding.

        Returns:
            ``(B, N, D)``.
        """
        b, n, _ = x.shape
        q, k, v = self._qkv(x)
        keep = None if attention_mask is None else _check_mask(attention_mask, b, n)
        dropout_p = self.attention_dropout if self.training else 0.0

        backend = self.backend
        if backend == "xformers" and not x.is_cuda:
            if self.requested_backend != "auto":
                raise StateError(
                    "attention backend 'xformers' only runs on CUDA tensors but got a tensor on "
                    f"{x.device}; move the model to CUDA or use backend 'sdpa' / 'auto'"
                )
            backend = "sdpa"

        if backend == "sdpa":
            if self.causal and keep is None:  # the kernels' own causal path, no mask tensor
                out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
            else:
                mask = allowed_keys(keep, n, self.causal, x.device)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        elif backend == "xformers":
            out = _xformers_attention(q, k, v, keep, dropout_p, self.causal)
        else:
            out, _ = math_attention(q, k, v, keep, dropout_p, causal=self.causal)

        out = rearrange(out, "b h n dh -> b n (h dh)")  # the heads merged back
        return self.proj_dropout(self.out_proj(out))

    @torch.no_grad()
    def attention_probs(self, x: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The attention probabilities this layer would use, for inspection and plots.

        Fused kernels never materialise the attention matrix, so this recomputes it
        with the reference path (no dropout), whatever ``backend`` is set.

        Args:
            x: ``(B, N, D)``; attention_mask: optional ``(B, N)``, True = real token.

        Returns:
            ``(B, H, N, N)``; each row sums to 1 over the kept keys.
        """
        b, n, _ = x.shape
        q, k, v = self._qkv(x)
        keep = None if attention_mask is None else _check_mask(attention_mask, b, n)
        return math_attention(q, k, v, keep, causal=self.causal)[1]


def set_attention_backend(module: nn.Module, backend: AttentionBackend) -> nn.Module:
    """Switch every :class:`MultiHeadSelfAttention` inside ``module`` to ``backend``; returns ``module``."""
    resolve_attention_backend(backend)  # fail before touching anything
    for m in module.modules():
        if isinstance(m, MultiHeadSelfAttention):
            m.set_backend(backend)
    return module
