"""The DALL-E dVAE's input map, shared by the data pipeline (which makes the tokenizer's input) and
the tokenizers (which read it).

The dVAE models pixels with a "logit-Laplace" distribution on ``[eps, 1 - eps]``, so its input is an
image in ``[0, 1]`` mapped by ``(1 - 2 eps) x + eps`` with ``eps = 0.1`` (Ramesh et al. 2021,
"Zero-Shot Text-to-Image Generation", section 2.1 and appendix A.3; FLAVA's tokenizer input, see
``docs/FLAVA.md``). It lives here, below both ``mmkit.data`` and ``mmkit.tokenizers``, so that
importing the models (which use the tokenizer) loads nothing of the data pipeline.
"""

from __future__ import annotations

from torch import Tensor

#: the DALL-E "logit-Laplace" epsilon: the dVAE sees pixels mapped into [eps, 1 - eps].
DALLE_EPS = 0.1


def dalle_preprocess(images: Tensor) -> Tensor:
    """Map ``[0, 1]`` pixels into the dVAE's input range: ``(1 - 2 eps) x + eps = 0.8 x + 0.1``.

    Args:
        images: ``(B, 3, H, W)`` (or ``(3, H, W)``) float in ``[0, 1]`` (already resized, 112² for FLAVA).
    """
    return (1 - 2 * DALLE_EPS) * images + DALLE_EPS
