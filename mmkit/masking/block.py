"""BEiT-style block masking of the image patch grid.

The law (Bao et al., 2021, "BEiT", Algorithm 1; FLAVA's released processor defaults, see
``docs/FLAVA.md``): starting from an empty grid, repeatedly try to add one rectangular
block until ``num_masking_patches`` patches are masked or a round adds nothing. Each
round makes up to ``max_attempts`` tries: draw a target area ``s ~ U(min_block, m)``
where ``m = min(max_block, patches still to mask)``, an aspect ratio ``r`` log-uniform in
``[min_aspect, max_aspect]``, then ``h = round(sqrt(s r))``, ``w = round(sqrt(s / r))``
and a uniformly placed ``h x w`` rectangle (``h`` and ``w`` strictly smaller than the
grid). The rectangle is kept when it adds between 1 and ``m`` new patches. So the total
never exceeds ``num_masking_patches`` and usually ends a little below it.

All randomness comes from an explicit :class:`torch.Generator`, so a mask stream is
reproducible and its state can be checkpointed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mmkit.utils.errors import InputError


@dataclass
class BlockMaskConfig:
    """Parameters of :class:`BlockMaskGenerator`; defaults are FLAVA's on a 14 x 14 grid."""

    grid_size: tuple[int, int] = (14, 14)
    num_masking_patches: int = 75
    min_block: int = 16
    max_block: int | None = None  # None: num_masking_patches
    min_aspect: float = 0.3
    max_aspect: float | None = None  # None: 1 / min_aspect
    max_attempts: int = 10


class BlockMaskGenerator:
    """Draw BEiT block masks.

    Args:
        grid_size: ``(Gh, Gw)`` patch grid (or an int for a square grid).
        num_masking_patches: target number of masked patches (75 of 196 in FLAVA, ~38%).
        min_block: smallest block area tried.
        max_block: largest block area tried (default ``num_masking_patches``).
        min_aspect: smallest aspect ratio ``h / w``; ``max_aspect`` defaults to ``1 / min_aspect``.
        max_attempts: tries per block before a round gives up.

    Call with a generator: ``mask = gen(generator=g)`` -> bool ``(Gh, Gw)``, True = masked;
    ``gen.batch(n, generator=g)`` -> ``(n, Gh * Gw)``.
    """

    def __init__(
        self,
        grid_size: int | tuple[int, int] = (14, 14),
        num_masking_patches: int = 75,
        min_block: int = 16,
        max_block: int | None = None,
        min_aspect: float = 0.3,
        max_aspect: float | None = None,
        max_attempts: int = 10,
    ) -> None:
        self.height, self.width = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        if not 0 <= num_masking_patches <= self.height * self.width:
            raise InputError(
                f"num_masking_patches={num_masking_patches} must lie in [0, {self.height * self.width}] "
                f"for a {self.height}x{self.width} grid"
            )
        if min_aspect <= 0:
            raise InputError(f"min_aspect must be positive, got {min_aspect}")
        self.num_masking_patches = num_masking_patches
        self.min_block = min_block
        self.max_block = num_masking_patches if max_block is None else max_block
        max_aspect = 1 / min_aspect if max_aspect is None else max_aspect
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect))
        self.max_attempts = max_attempts

    @classmethod
    def from_config(cls, cfg: BlockMaskConfig) -> BlockMaskGenerator:
        return cls(**vars(cfg))

    @classmethod
    def flava(cls, grid_size: int | tuple[int, int] = 14) -> BlockMaskGenerator:
        """FLAVA's law scaled to any grid: 75/196 of the patches masked, blocks of at least 16/196
        of them (exactly the released defaults on the 14 x 14 grid)."""
        h, w = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
        n = h * w
        return cls((h, w), num_masking_patches=round(75 / 196 * n), min_block=max(1, round(16 / 196 * n)))

    @property
    def num_patches(self) -> int:
        return self.height * self.width

    def propose(self, budget: int, u: Tensor | list[float]) -> tuple[int, int, int, int] | None:
        """One block proposal from four uniforms: ``(h, w, top, left)``, or None if it does not fit.

        ``area ~ U(min_block, budget)``, ``log(h / w) ~ U(log min_aspect, log max_aspect)``,
        position uniform over the grid.
        """
        ua, ur, ut, ul = (float(x) for x in u)
        area = self.min_block + (budget - self.min_block) * ua
        aspect = math.exp(self.log_aspect[0] + (self.log_aspect[1] - self.log_aspect[0]) * ur)
        h = round(math.sqrt(area * aspect))
        w = round(math.sqrt(area / aspect))
        if not (w < self.width and h < self.height):
            return None
        top = min(int(ut * (self.height - h + 1)), self.height - h)
        left = min(int(ul * (self.width - w + 1)), self.width - w)
        return h, w, top, left

    def _try_block(self, mask: Tensor, budget: int, u: list[float]) -> int:
        """One round: up to ``max_attempts`` proposals; returns how many patches it masked."""
        for attempt in range(self.max_attempts):
            block = self.propose(budget, u[4 * attempt : 4 * attempt + 4])
            if block is None:
                continue
            h, w, top, left = block
            region = mask[top : top + h, left : left + w]
            new = h * w - int(region.sum())
            if 0 < new <= budget:
                region.fill_(True)
                return new
        return 0

    def __call__(self, generator: torch.Generator | None = None) -> Tensor:
        """One mask: bool ``(Gh, Gw)``, True = masked."""
        mask = torch.zeros(self.height, self.width, dtype=torch.bool)
        count = 0
        while count < self.num_masking_patches:
            budget = min(self.num_masking_patches - count, self.max_block)
            u = torch.rand(4 * self.max_attempts, generator=generator, dtype=torch.float64).tolist()
            added = self._try_block(mask, budget, u)
            if added == 0:
                break
            count += added
        return mask

    def batch(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent masks, bool ``(n, Gh * Gw)`` (row-major, the ViT patch order)."""
        return torch.stack([self(generator).flatten() for _ in range(n)])
