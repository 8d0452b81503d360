"""Optimisation pieces the recipes share: the ``optim`` config section, AdamW parameter groups and the
warmup-cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mmkit.utils import at_least, fraction, positive


def adamw_param_groups(model: nn.Module, weight_decay: float, no_decay: set[str] | None = None) -> list[dict]:
    """Two AdamW groups: decayed weights, and the rest (biases, norms, embeddings, tokens, ``logit_scale``).

    Frozen parameters (``requires_grad=False``, e.g. the image tokenizer) are left out entirely,
    so they have no optimiser state either.

    Args:
        model: the model, plain or DDP-wrapped (FSDP2 and ``torch.compile`` keep it in place); names are
            matched after stripping the wrappers' prefixes.
        weight_decay: decay of the first group.
        no_decay: names without decay (default: the unwrapped model's ``no_weight_decay()``, where it has one).
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if no_decay is None:
        no_decay = inner.no_weight_decay() if hasattr(inner, "no_weight_decay") else set()
    decay, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.removeprefix("module.").replace("_orig_mod.", "").replace("_checkpoint_wrapped_module.", "")
        (rest if clean in no_decay or p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier: linear from 0 to 1 over ``warmup_steps``, then cosine down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`warmup_cosine` (its ``state_dict`` is the step count)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, warmup_steps, total_steps, min_ratio)
    )


@dataclass
class OptimConfig:
    """The ``optim`` section every recipe shares (each recipe sets its own defaults)."""

    lr: float = positive(1e-3)
    weight_decay: float = at_least(0, 0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = positive(1e-8)
    warmup_steps: int = at_least(0, 100)
    total_steps: int = at_least(1, 1000)
    min_lr_ratio: float = fraction(0.0)
    grad_accum: int = at_least(1, 1)
    max_grad_norm: float | None = positive(1.0)
    # torch's fused AdamW: the whole update in one kernel per device (CUDA, CPU) instead of the default
    # multi-tensor (foreach) one; the same update to rounding
    fused: bool = False


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over :func:`adamw_param_groups` and the warmup-cosine schedule of ``cfg``."""
    groups = adamw_param_groups(model, cfg.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, fused=cfg.fused or None)
    return optimizer, warmup_cosine_scheduler(optimizer, cfg.warmup_steps, cfg.total_steps, cfg.min_lr_ratio)
