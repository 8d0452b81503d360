"""A discrete VAE to train your own image tokenizer (DALL-E's dVAE: encoder, decoder, Gumbel-softmax).

Facts from Ramesh et al., 2021 ("Zero-Shot Text-to-Image Generation", §2.1 and appendix A):

* The encoder is :class:`~mmkit.tokenizers.DalleEncoder`; the decoder mirrors it: a 1x1 conv from the
  ``vocab_size`` code channels to ``init_size`` (128) channels, groups of residual blocks with widths
  ``8, 4, 2, 1 x hidden`` and a 2x nearest upsampling after all but the last, then ReLU and a 1x1 conv
  to 6 channels (a mean and a log-scale per colour channel). A decoder block's residual path is
  ReLU-conv1x1(out/4)-ReLU-conv3x3-ReLU-conv3x3-ReLU-conv3x3(out) (the encoder's, reversed).
* Training relaxes the discrete codes with Gumbel-softmax, temperature annealed from 1 to 1/16; the
  prior is uniform over the codebook, so the KL term is ``sum q log q + log V`` per token, weighted by
  beta (raised from 0 to 6.6 early in training); the likelihood is the *logit-Laplace* distribution on
  pixels mapped into ``[eps, 1 - eps]`` with ``eps = 0.1`` (:func:`~mmkit.tokenizers.dalle_preprocess`).

Both terms are divided by the number of sub-pixels (``3 H W``), so ``beta`` weights them on the
ELBO's own scale: ``loss = (NLL + beta * KL) / (3 H W)`` per image, averaged over the batch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.tokenizers.dalle import DalleBlock, DalleEncoder
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.pixels import DALLE_EPS
from mmkit.utils.weights import load_strict, read_weights

DECODER_KERNELS = (1, 3, 3, 3)  # the encoder's residual path reversed


class DalleDecoder(nn.Module):
    """DALL-E dVAE decoder: (relaxed) one-hot codes to logit-Laplace pixel parameters.

    Args:
        hidden_size: base width (256 in DALL-E); group ``g`` has ``2**(G-g) x hidden`` channels.
        vocab_size: codebook size (input channels).
        num_groups, blocks_per_group: as the encoder's (4 and 2).
        init_size: width of the first 1x1 conv (128).
        out_channels: image channels (3); the output has twice as many (mean and log-scale).

    Shapes: ``(B, V, h, w) -> (B, 2 C, h * 2**(G-1), w * 2**(G-1))``.
    """

    def __init__(
        self,
        hidden_size: int = 256,
        vocab_size: int = 8192,
        num_groups: int = 4,
        blocks_per_group: int = 2,
        init_size: int = 128,
        out_channels: int = 3,
    ) -> None:
        super().__init__()
        self.vocab_size, self.out_channels = vocab_size, out_channels
        n_layers = num_groups * blocks_per_group
        self.input = nn.Conv2d(vocab_size, init_size, 1)
        width = init_size
        for g in range(1, num_groups + 1):
            out = hidden_size * 2 ** (num_groups - g)
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for b in range(1, blocks_per_group + 1):
                blocks[f"block_{b}"] = DalleBlock(width if b == 1 else out, out, n_layers, DECODER_KERNELS)
            if g < num_groups:
                blocks["upsample"] = nn.Upsample(scale_factor=2, mode="nearest")
            self.add_module(f"group_{g}", nn.Sequential(blocks))
            width = out
        self.num_groups = num_groups
        self.output = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=nn.Conv2d(width, 2 * out_channels, 1)))

    def forward(self, codes: Tensor) -> Tensor:
        """``codes`` ``(B, V, h, w)`` (one-hot or relaxed) -> ``(B, 2C, H, W)``: means, then log-scales."""
        if codes.ndim != 4 or codes.shape[1] != self.vocab_size:
            raise InputError(f"codes must be (B, {self.vocab_size}, h, w), got {tuple(codes.shape)}")
        x = self.input(codes)
        for g in range(1, self.num_groups + 1):
            x = getattr(self, f"group_{g}")(x)
        return self.output(x)


def logit_laplace_nll(params: Tensor, target: Tensor) -> Tensor:
    """Negative log-likelihood of ``target`` pixels under the logit-Laplace distribution, per sub-pixel.

    Args:
        params: ``(B, 2C, H, W)``: means ``mu`` and log-scales ``log b`` in logit space.
        target: ``(B, C, H, W)`` in ``(0, 1)`` (dVAE pixels, ``[eps, 1 - eps]``).

    Returns:
        ``(B, C, H, W)``: ``log(2 b) + log(x (1 - x)) + |logit(x) - mu| / b``.
    """
    c = target.shape[1]
    mu, log_b = params[:, :c].float(), params[:, c:].float()
    x = target.float()
    return math.log(2.0) + log_b + torch.log(x * (1 - x)) + (torch.logit(x) - mu).abs() * torch.exp(-log_b)


def logit_laplace_mean_pixels(params: Tensor) -> Tensor:
    """Reconstructed ``[0, 1]`` pixels from decoder output: ``sigmoid(mu)`` mapped back out of ``[eps, 1 - eps]``."""
    c = params.shape[1] // 2
    x = torch.sigmoid(params[:, :c].float())
    return ((x - DALLE_EPS) / (1 - 2 * DALLE_EPS)).clamp(0, 1)


@dataclass
class DVAEOutput:
    """What :meth:`DiscreteVAE.forward` returns (scalars are batch means).

    Attributes:
        loss: ``(nll + kl_weight * kl) / (3 H W)``. nll, kl: per image, summed over sub-pixels / tokens.
        logits: ``(B, V, h, w)`` encoder logits. ids: ``(B, h, w)`` their argmax.
        params: ``(B, 6, H, W)`` decoder output (from the relaxed codes).
    """

    loss: Tensor
    nll: Tensor
    kl: Tensor
    logits: Tensor
    ids: Tensor
    params: Tensor


class DiscreteVAE(nn.Module):
    """A :class:`DalleEncoder` and a :class:`DalleDecoder` trained together (see module docs).

    Args:
        encoder, decoder: with the same ``vocab_size``; the decoder upsamples by the encoder's downsampling.
    """

    def __init__(self, encoder: DalleEncoder, decoder: DalleDecoder) -> None:
        super().__init__()
        if encoder.vocab_size != decoder.vocab_size:
            raise InputError(f"encoder vocab {encoder.vocab_size} != decoder vocab {decoder.vocab_size}")
        self.encoder, self.decoder = encoder, decoder

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    def forward(
        self,
        pixels: Tensor,
        temperature: float = 1.0,
        kl_weight: float = 0.0,
        generator: torch.Generator | None = None,
        straight_through: bool = False,
        recon_loss: str = "logit_laplace",
        pixel_sigma: float = 0.1,
    ) -> DVAEOutput:
        """One training step's losses.

        Args:
            pixels: ``(B, 3, H, W)`` dVAE pixels (``0.8 x + 0.1``; H, W multiples of the downsampling).
            temperature: Gumbel-softmax temperature tau.
            kl_weight: beta.
            generator: for the Gumbel noise (None: the global RNG).
            straight_through: decode the one-hot argmax of the relaxed sample (gradients through the
                relaxation), so training decodes the same hard codes as tokenization does. DALL-E
                decodes the relaxed sample itself (False).
            recon_loss: ``"logit_laplace"`` (DALL-E's likelihood) or ``"gaussian"``: a fixed-variance
                Gaussian on the reconstructed ``[0, 1]`` pixels, i.e. squared error / (2 pixel_sigma²)
                (the simpler choice, which trains much faster at small scale: benchmarks/RESULTS.md).
        """
        logits = self.encoder(pixels)
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
        gumbel = -torch.log((-torch.log(u.clamp_min(1e-20))).clamp_min(1e-20))  # Gumbel(0, 1) noise
        soft = F.softmax((logits.float() + gumbel) / temperature, dim=1)
        if straight_through:
            hard = F.one_hot(soft.argmax(1), soft.shape[1]).permute(0, 3, 1, 2).to(soft.dtype)
            soft = hard + soft - soft.detach()
        params = self.decoder(soft.to(logits.dtype))
        subpixels = pixels[0].numel()
        if recon_loss == "logit_laplace":
            nll = logit_laplace_nll(params, pixels).flatten(1).sum(1)
        elif recon_loss == "gaussian":
            target = ((pixels.float() - DALLE_EPS) / (1 - 2 * DALLE_EPS)).clamp(0, 1)
            mean = (torch.sigmoid(params[:, : pixels.shape[1]].float()) - DALLE_EPS) / (1 - 2 * DALLE_EPS)
            err = mean - target  # unclamped, so the gradient never vanishes at the range's ends
            nll = (err**2).flatten(1).sum(1) / (2 * pixel_sigma**2)
        else:
            raise InputError(f"recon_loss must be 'logit_laplace' or 'gaussian', got {recon_loss!r}")
        log_q = F.log_softmax(logits.float(), dim=1)
        kl = (log_q.exp() * log_q).sum(1).flatten(1).sum(1) + math.log(self.vocab_size) * logits[0, 0].numel()
        loss = ((nll + kl_weight * kl) / subpixels).mean()
        return DVAEOutput(loss, nll.mean(), kl.mean(), logits, logits.argmax(1), params)

    @torch.no_grad()
    def reconstruct(self, pixels: Tensor) -> Tensor:
        """Encode to hard codes (what FLAVA uses as targets), decode, return ``[0, 1]`` pixels ``(B, 3, H, W)``."""
        ids = self.encoder(pixels).argmax(1)
        return self.decode_ids(ids)

    @torch.no_grad()
    def decode_ids(self, ids: Tensor) -> Tensor:
        """``(B, h, w)`` code ids -> ``(B, 3, H, W)`` pixels in ``[0, 1]``."""
        one_hot = F.one_hot(ids, self.vocab_size).permute(0, 3, 1, 2).to(self.decoder.input.weight.dtype)
        return logit_laplace_mean_pixels(self.decoder(one_hot))

    # -- what the training runtime asks (mmkit.train.Parallelizable) -------------------------------
    def shard_units(self) -> list[nn.Module]:
        """None: a convolution stack without repeated transformer layers (one FSDP2 unit, no per-layer
        checkpointing)."""
        return []

    def gathering_losses(self) -> list[nn.Module]:
        """None: the reconstruction loss is per sample."""
        return []


def codebook_usage(ids: Tensor, vocab_size: int) -> dict[str, float]:
    """How the codebook is used by a set of code ids.

    Returns:
        ``perplexity`` (``exp`` of the entropy of the code histogram: ``vocab_size`` when every code is
        equally used, 1 when one code takes all), ``used`` (fraction of codes seen at least once) and
        ``dead`` (number of codes never seen).
    """
    counts = torch.bincount(ids.flatten().long(), minlength=vocab_size).double()
    p = counts / counts.sum()
    entropy = -(p[p > 0] * p[p > 0].log()).sum().item()
    used = int((counts > 0).sum().item())
    return {"perplexity": math.exp(entropy), "used": used / vocab_size, "dead": float(vocab_size - used)}


def gumbel_temperature(step: int, start: float = 1.0, end: float = 1 / 16, steps: int = 150_000) -> float:
    """DALL-E's annealing: cosine from ``start`` to ``end`` over ``steps``, then ``end``."""
    if step >= steps:
        return end
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * step / steps))


def kl_weight_schedule(step: int, weight: float = 6.6, warmup: int = 5000) -> float:
    """DALL-E's KL weight: cosine from 0 to ``weight`` over ``warmup`` steps, then ``weight``."""
    if step >= warmup:
        return weight
    return weight * 0.5 * (1 - math.cos(math.pi * step / warmup))


# ------------------------------------------------------------------------------------------
# Saving and loading a trained dVAE
# ------------------------------------------------------------------------------------------
DVAE_CONFIG = "dvae_config.json"


def save_dvae(model: DiscreteVAE, directory: str | Path, image_size: int) -> Path:
    """Write a trained dVAE so that FLAVA pretraining can use its encoder as the image tokenizer.

    Files: ``encoder.safetensors`` (the encoder alone, the names
    :func:`~mmkit.tokenizers.dalle_encoder_from_checkpoint` reads), ``decoder.safetensors`` and
    ``dvae_config.json`` (sizes, the training image size and the encoder's fingerprint). Written into a
    temporary folder and renamed, so a crash leaves no half-written tokenizer.
    """
    from safetensors.torch import save_file

    from mmkit.tokenizers.dalle import tokenizer_fingerprint

    directory = Path(directory)
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    enc, dec = model.encoder, model.decoder
    save_file({k: v.detach().contiguous().cpu() for k, v in enc.state_dict().items()}, str(tmp / "encoder.safetensors"))
    save_file({k: v.detach().contiguous().cpu() for k, v in dec.state_dict().items()}, str(tmp / "decoder.safetensors"))
    config = {
        "hidden_size": enc.hidden_size,
        "vocab_size": enc.vocab_size,
        "num_groups": enc.num_groups,
        "blocks_per_group": enc.blocks_per_group,
        "init_size": dec.input.out_channels,
        "image_size": image_size,
        "fingerprint": tokenizer_fingerprint(enc),
    }
    (tmp / DVAE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_dvae(directory: str | Path) -> tuple[DiscreteVAE, dict]:
    """Read what :func:`save_dvae` wrote; returns ``(model, config)``."""
    directory = Path(directory)
    if not (directory / DVAE_CONFIG).is_file():
        raise MissingError(
            f"{directory} is not a saved dVAE (no {DVAE_CONFIG}); train one with recipes/dalle/train_tokenizer.py"
        )
    cfg = json.loads((directory / DVAE_CONFIG).read_text())
    sizes = {k: cfg[k] for k in ("hidden_size", "vocab_size", "num_groups", "blocks_per_group")}
    encoder = DalleEncoder(**sizes)
    decoder = DalleDecoder(**sizes, init_size=cfg["init_size"])
    for module, name in ((encoder, "encoder"), (decoder, "decoder")):
        file = directory / f"{name}.safetensors"
        load_strict(module, read_weights(file), str(file), target=f"dVAE {name}", kind="mmkit")
    return DiscreteVAE(encoder, decoder), cfg
