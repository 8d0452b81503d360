"""Zero-shot classification with prompt ensembles and a linear probe on frozen features."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: a small CLIP-style template ensemble; any list of "{}"-templates works.
DEFAULT_TEMPLATES = ("a photo of {}.", "a picture of {}.", "an image of {}.", "{}")


def class_embeddings(
    classnames: Sequence[str], embed_texts: Callable[[list[str]], Tensor], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> Tensor:
    """One ``(C, P)`` L2-normalised embedding per class: the mean of its normalised template embeddings.

    Args:
        classnames: ``C`` names. embed_texts: texts -> ``(n, P)`` embeddings.
        templates: strings with one ``{}`` for the class name (CLIP's prompt ensembling).
    """
    if not classnames:
        raise ValueError("zero-shot classification needs at least one class name")
    bad = [t for t in templates if t.count("{}") != 1]
    if bad:
        raise ValueError(f"templates need exactly one '{{}}' for the class name: {bad}")
    out = []
    for name in classnames:
        emb = F.normalize(embed_texts([t.format(name) for t in templates]).float(), dim=-1)
        out.append(F.normalize(emb.mean(0), dim=-1))
    return torch.stack(out)


def zero_shot_logits(image_embeddings: Tensor, class_embeds: Tensor) -> Tensor:
    """Cosine similarities ``(N, C)`` between ``(N, P)`` image and ``(C, P)`` class embeddings."""
    return F.normalize(image_embeddings.float(), dim=-1) @ class_embeds.T


def _fit_logistic(x: Tensor, y: Tensor, num_classes: int, wd: float, max_iter: int) -> tuple[Tensor, Tensor]:
    w = torch.zeros(num_classes, x.shape[1], device=x.device, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w.T + b, y) + wd * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    val_x: Tensor,
    val_y: Tensor,
    weight_decays: Sequence[float] = (1e-6, 1e-4, 1e-2, 1.0),
    max_iter: int = 200,
) -> dict:
    """Multinomial logistic regression on frozen features, L2 strength swept on the validation split.

    Features are standardised with the training mean/std. Each strength is fitted with L-BFGS;
    the one with the best validation accuracy is returned.

    Returns:
        ``{"weight_decay", "val_accuracy", "weight" (C, D), "bias" (C,), "mean", "std", "sweep"}``.
    """
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
    xt, xv = (train_x - mean) / std, (val_x - mean) / std
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    sweep = {}
    best = None
    for wd in weight_decays:
        w, b = _fit_logistic(xt, train_y, num_classes, wd, max_iter)
        with torch.no_grad():
            acc = ((xv @ w.T + b).argmax(1) == val_y).float().mean().item()
        sweep[wd] = acc
        if best is None or acc > best["val_accuracy"]:
            best = {"weight_decay": wd, "val_accuracy": acc, "weight": w, "bias": b}
    return {**best, "mean": mean, "std": std, "sweep": sweep}
