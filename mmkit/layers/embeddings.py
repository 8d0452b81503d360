"""Input embeddings: image patches and text tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from mmkit.utils.errors import InputError


def _pair(x: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(x, int):
        return (x, x)
    if len(x) != 2:
        raise InputError(f"expected an int or a pair (height, width), got {x!r}")
    return (int(x[0]), int(x[1]))


def interpolate_position_embeddings(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]) -> Tensor:
    """Resize a grid of learned patch position embeddings with bicubic interpolation.

    Args:
        pos: ``(1, Gh*Gw, D)``, row-major over the old grid.
        old_grid: ``(Gh, Gw)``. new_grid: ``(Gh', Gw')``.

    Returns:
        ``(1, Gh'*Gw', D)`` (``align_corners=False``, as DINO / ViT / FLAVA do).
    """
    if old_grid == new_grid:
        return pos
    grid = rearrange(pos, "1 (gh gw) d -> 1 d gh gw", gh=old_grid[0], gw=old_grid[1])
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False)
    return rearrange(grid, "1 d gh gw -> 1 (gh gw) d")


class PatchEmbedding(nn.Module):
    """ViT input: patchify, replace masked patches, prepend CLS, add positions.

    ``embed = concat(cls, where(mask, mask_token, conv(x))) + pos``: masked patches
    are replaced by the learned mask token *before* CLS and position embeddings
    are added (BEiT / FLAVA). Inputs at another resolution than ``image_size`` get
    bicubically interpolated position embeddings.

    Args:
        image_size: training resolution, int or ``(H, W)``.
        patch_size: patch side, int or ``(ph, pw)``.
        in_channels: image channels.
        dim: embedding width ``D``.
        use_cls_token: prepend a learned CLS token.
        use_mask_token: create a learned mask token (needed for masked image modelling).
        dropout: dropout on the result (training only).
        bias: the patch convolution has a bias (CLIP's has none).

    Parameters: ``proj`` (conv ``C -> D``, kernel = stride = patch), ``cls_token``
    ``(1, 1, D)``, ``mask_token`` ``(1, 1, D)``, ``position_embeddings`` ``(1, 1 + Np, D)``.
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_channels: int = 3,
        dim: int = 768,
        *,
        use_cls_token: bool = True,
        use_mask_token: bool = False,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.image_size = _pair(image_size)
        self.patch_size = _pair(patch_size)
        for s, p in zip(self.image_size, self.patch_size, strict=True):
            if s % p != 0:
                raise InputError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")
        self.grid_size = (self.image_size[0] // self.patch_size[0], self.image_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens = int(use_cls_token)
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=self.patch_size, stride=self.patch_size, bias=bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim)) if use_cls_token else None
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if use_mask_token else None
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.num_patches, dim))
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.position_embeddings, std=0.02)
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.mask_token is not None:
            nn.init.trunc_normal_(self.mask_token, std=0.02)

    def _position_embeddings_for(self, grid: tuple[int, int]) -> Tensor:
        pos = self.position_embeddings
        if grid == self.grid_size:
            return pos
        k = self.num_prefix_tokens
        patch_pos = interpolate_position_embeddings(pos[:, k:], self.grid_size, grid)
        return torch.cat([pos[:, :k], patch_pos], dim=1)

    def forward(self, pixel_values: Tensor, patch_mask: Tensor | None = None) -> Tensor:
        """Embed an image batch.

        Args:
            pixel_values: ``(B, C, H, W)``; ``H`` and ``W`` multiples of the patch size.
            patch_mask: optional bool ``(B, Np)`` or ``(B, Gh, Gw)``, True = patch is
                masked (replaced by the mask token).

        Returns:
            ``(B, 1 + Np, D)`` (``(B, Np, D)`` without a CLS token).
        """
        if pixel_values.ndim != 4 or pixel_values.shape[1] != self.proj.in_channels:
            raise InputError(
                f"pixel_values must be (B, {self.proj.in_channels}, H, W), got {tuple(pixel_values.shape)}"
            )
        h, w = pixel_values.shape[-2:]
        if h % self.patch_size[0] or w % self.patch_size[1]:
            raise InputError(f"image size ({h}, {w}) is not a multiple of the patch size {self.patch_size}")
        grid = (h // self.patch_size[0], w // self.patch_size[1])
        x = rearrange(self.proj(pixel_values), "b d gh gw -> b (gh gw) d")  # the patches, row-major
        b, n, _ = x.shape
        if patch_mask is not None:
            if self.mask_token is None:
                raise InputError("patch_mask was given but this embedding has no mask token (use_mask_token=False)")
            patch_mask = rearrange(patch_mask, "b ... -> b (...)")  # (B, Np) or (B, Gh, Gw) -> (B, Np)
            if patch_mask.shape != (b, n):
                raise InputError(f"patch_mask must hold (B, Np) = ({b}, {n}) entries, got {tuple(patch_mask.shape)}")
            x = torch.where(patch_mask.to(torch.bool).unsqueeze(-1), self.mask_token.to(x.dtype), x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(b, -1, -1).to(x.dtype), x], dim=1)
        x = x + self._position_embeddings_for(grid)
        return self.dropout(x)

    @torch.no_grad()
    def resize_position_embeddings(self, image_size: int | tuple[int, int]) -> None:
        """Permanently resample the position embeddings for a new training resolution
        (e.g. 224 -> 480 before VQA finetuning); updates ``image_size``/``grid_size``."""
        image_size = _pair(image_size)
        grid = (image_size[0] // self.patch_size[0], image_size[1] // self.patch_size[1])
        new = self._position_embeddings_for(grid)
        self.position_embeddings = nn.Parameter(new.clone())
        self.image_size, self.grid_size, self.num_patches = image_size, grid, grid[0] * grid[1]


class TextEmbedding(nn.Module):
    """BERT-style token embedding: ``LayerNorm(word + position + token_type)``.

    CLIP and SigLIP use the plain form ``word + position``: ``type_vocab_size=0`` and
    ``use_norm=False``.

    Args:
        vocab_size: number of word ids.
        dim: width ``D``.
        max_positions: longest sequence the position table covers.
        type_vocab_size: number of segment ids (2 for BERT sentence pairs; 0: no segment table).
        pad_token_id: id of the padding token (its embedding gets no gradient); ``None``: every id
            is trained (SigLIP pools the last position, which is often padding).
        norm_eps: LayerNorm epsilon.
        dropout: dropout on the result (training only).
        use_norm: end with a LayerNorm.
    """

    def __init__(
        self,
        vocab_size: int = 30522,
        dim: int = 768,
        max_positions: int = 512,
        type_vocab_size: int = 2,
        pad_token_id: int | None = 0,
        *,
        norm_eps: float = 1e-12,
        dropout: float = 0.0,
        use_norm: bool = True,
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim, padding_idx=pad_token_id)
        self.position_embeddings = nn.Embedding(max_positions, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim) if type_vocab_size > 0 else None
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if use_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.pad_token_id = pad_token_id
        self.max_positions = max_positions
        self.register_buffer("position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False)

    @torch.no_grad()
    def reset_buffers(self) -> None:
        """Set ``position_ids`` ``(1, max_positions)`` to ``0..max_positions-1`` on its device (a buffer in no
        state dict: ``to_empty`` leaves it unset)."""
        ids = self.position_ids
        ids.copy_(torch.arange(ids.shape[1], device=ids.device).unsqueeze(0))

    def forward(
        self, input_ids: Tensor, token_type_ids: Tensor | None = None, position_ids: Tensor | None = None
    ) -> Tensor:
        """Embed token ids.

        Args:
            input_ids: ``(B, L)`` int64.
            token_type_ids: optional ``(B, L)``, default all 0 (an error without a segment table).
            position_ids: optional ``(B, L)`` or ``(1, L)``, default ``0..L-1``.

        Returns:
            ``(B, L, D)``.
        """
        if input_ids.ndim != 2:
            raise InputError(f"input_ids must be (B, L), got shape {tuple(input_ids.shape)}")
        length = input_ids.shape[1]
        if length > self.max_positions:
            raise InputError(
                f"sequence length {length} exceeds max_positions={self.max_positions}; "
                "truncate the text (tokenizer max_length) or build the encoder with more positions"
            )
        if position_ids is None:
            position_ids = self.position_ids[:, :length]
        words, positions = self.word_embeddings(input_ids), self.position_embeddings(position_ids)
        if self.token_type_embeddings is None:
            if token_type_ids is not None:
                raise InputError("token_type_ids were given; this embedding has no segment table (type_vocab_size=0)")
            x = words + positions
        else:  # summed in BERT's order: word, segment, position
            seg = self.token_type_embeddings
            token_type = seg.weight[0] if token_type_ids is None else seg(token_type_ids)
            x = words + token_type + positions
        return self.dropout(self.norm(x))
