"""Is a contrastive run learning? Two signs read off its held-out embeddings at each evaluation.

* **Collapse**: a tower that gives (nearly) the same embedding to every input. Its mean pairwise
  cosine similarity is close to 1; a tower that tells inputs apart stays well below.
* **No progress**: the held-out softmax contrastive loss over a batch of ``n`` pairs is ``ln n`` when
  every pair scores alike (chance); a run still within a few percent of it after some hundreds of
  steps has not started to align the towers.

:class:`HealthMonitor` logs the cosines as ``health/image_cosine`` / ``health/text_cosine`` and warns,
once per run, in plain words with the likely causes and the config keys to try. Both signs were
seen on FLAVA's tiny preset with the released model's initialisation std (0.02 at width 32: held-out
text embeddings at a mean cosine of 0.99999, the contrastive loss near ``ln 64`` for hundreds of
steps); ``docs/INIT.md`` has the measurements.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from mmkit.utils.config import at_least, fraction
from mmkit.utils.errors import InputError


def mean_pairwise_cosine(embeddings: Tensor) -> float:
    """Mean cosine similarity over all pairs ``i != j`` of ``embeddings (N, P)`` (any norm), in
    ``[-1/(N-1), 1]``; 1 when every row points the same way. ``O(N P)``: ``(|sum e|^2 - N) / (N (N-1))``
    over the unit rows."""
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise InputError(f"embeddings must be (N >= 2, P), got {tuple(embeddings.shape)}")
    e = F.normalize(embeddings.detach().double(), dim=-1)
    n = e.shape[0]
    total = e.sum(0)
    return float((total @ total - n) / (n * (n - 1)))


@dataclass
class HealthConfig:
    """When the held-out evaluation calls a run stuck (the recipes' ``health.*`` keys).

    Attributes:
        collapse_cosine: a tower whose held-out embeddings have a mean pairwise cosine at or above
            this is collapsed.
        stuck_after: steps before either sign counts (a run may start collapsed and leave it quickly);
            None: the recipe's warmup (``optim.warmup_steps``), and at least :data:`MIN_STUCK_AFTER`.
        chance_margin: the contrastive loss has "not moved" while it is above ``(1 - chance_margin) * ln n``.
        enabled: off: log the cosines, never warn.
    """

    collapse_cosine: float = fraction(0.95)
    stuck_after: int | None = at_least(0, None)
    chance_margin: float = fraction(0.05)
    enabled: bool = True


#: The fewest steps before a run is judged when ``stuck_after`` follows the warmup.
MIN_STUCK_AFTER = 300

ADVICE = (
    "Likely causes: an initialisation too small for the model's width (model.init_std: leave it unset "
    "to scale it with the width, or raise it), a learning rate too low or too high for the batch "
    "(optim.lr, optim.warmup_steps), other objectives drowning the contrastive one "
    "(model.pretraining.weights.*), or captions that do not describe their images (check the data "
    "with python -m mmkit.data.write_shards --inspect)."
)


class HealthMonitor:
    """Checks each held-out evaluation (see the module docstring); warns once per run.

    Args:
        config: thresholds. warn: where the one warning goes (e.g. rank 0's print).
        warmup_steps: the run's learning-rate warmup, which ``config.stuck_after=None`` waits for.
    """

    def __init__(
        self, config: HealthConfig | None = None, warn: Callable[[str], None] = print, warmup_steps: int = 0
    ) -> None:
        self.config = config or HealthConfig()
        self.warn = warn
        self.warned = False
        after = self.config.stuck_after
        self.stuck_after = max(MIN_STUCK_AFTER, warmup_steps) if after is None else after

    def __call__(
        self,
        step: int,
        image_embeddings: Tensor,
        text_embeddings: Tensor,
        contrastive_loss: float | None = None,
        batch_size: int | None = None,
    ) -> dict[str, float]:
        """Check one evaluation.

        Args:
            step: the training step evaluated.
            image_embeddings, text_embeddings: ``(N, P)`` held-out embeddings.
            contrastive_loss: the held-out softmax contrastive loss (None: not a softmax loss, e.g.
                SigLIP's sigmoid one: only collapse is checked).
            batch_size: pairs per held-out batch the loss was computed over (its chance is ``ln n``).

        Returns:
            ``{"health/image_cosine": c_i, "health/text_cosine": c_t}`` to log.
        """
        cos = {"image": mean_pairwise_cosine(image_embeddings), "text": mean_pairwise_cosine(text_embeddings)}
        cfg = self.config
        if cfg.enabled and not self.warned and step >= self.stuck_after and step > 0:
            problems = [
                f"the held-out {tower} embeddings are collapsed (mean pairwise cosine {c:.5f} >= "
                f"{cfg.collapse_cosine}: the {tower} tower gives nearly the same embedding to every input)"
                for tower, c in cos.items()
                if c >= cfg.collapse_cosine
            ]
            if contrastive_loss is not None and batch_size and batch_size > 1:
                chance = math.log(batch_size)
                if contrastive_loss > (1 - cfg.chance_margin) * chance:
                    problems.append(
                        f"the held-out contrastive loss {contrastive_loss:.3f} has not moved from chance "
                        f"(ln {batch_size} = {chance:.3f})"
                    )
            if problems:
                self.warned = True
                self.warn(f"warning: step {step}: training looks stuck: {'; '.join(problems)}. {ADVICE}")
        return {f"health/{tower}_cosine": c for tower, c in cos.items()}
