"""The DALL-E dVAE encoder: the image tokenizer behind FLAVA's masked-image-modelling targets.

Architecture (Ramesh et al., 2021, "Zero-Shot Text-to-Image Generation"; as used by FLAVA,
see ``docs/FLAVA.md``): a 7x7 input conv to ``hidden`` channels, four groups of two
residual blocks with widths ``1, 2, 4, 8 x hidden`` and a 2x max-pool after groups 1-3
(112 -> 56 -> 28 -> 14), then ReLU and a 1x1 conv to ``vocab_size`` logits. A block is
``id_path(x) + (1 / n_layers**2) * res_path(x)`` with ``n_layers = groups x blocks = 8``;
``res_path`` is ReLU-conv3x3(out/4)-ReLU-conv3x3-ReLU-conv3x3-ReLU-conv1x1(out) and
``id_path`` a 1x1 conv only where the width changes.

Input pixels are in the dVAE's own space: the image resized to 112² (Lanczos in the data
pipeline), scaled to [0, 1], then mapped by :func:`dalle_preprocess` (``0.8 x + 0.1``). That map
and ``DALLE_EPS`` live in :mod:`mmkit.utils.pixels`, below both the data pipeline that makes the
tokenizer's input and this package, and are re-exported here.

Module names follow the DALL-E release (``input``, ``group_k.block_j.res_path.conv_i``,
``output.conv``), so original checkpoints map onto this module with only ``.w/.b`` renamed. The key
maps of the original and the transformers layouts are in :mod:`mmkit.tokenizers.dalle_keys`;
:func:`dalle_encoder_from_checkpoint` reads either.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mmkit.tokenizers.dalle_keys import dalle_from_hf, dalle_from_openai
from mmkit.tokenizers.dalle_keys import dalle_to_hf as dalle_to_hf
from mmkit.utils.errors import DataKeyError, InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from mmkit.utils.pixels import DALLE_EPS as DALLE_EPS
from mmkit.utils.pixels import dalle_preprocess as dalle_preprocess
from mmkit.utils.weights import load_strict, read_weights

logger = logging.getLogger(__name__)


class _ResPath(nn.Sequential):
    """ReLU-conv x4, widths ``out/4, out/4, out/4, out``; ``kernels`` per conv (encoder 3,3,3,1;
    the dVAE decoder 1,3,3,3)."""

    def __init__(self, n_in: int, n_out: int, kernels: tuple[int, int, int, int] = (3, 3, 3, 1)) -> None:
        hid = n_out // 4
        widths = (n_in, hid, hid, hid, n_out)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for i, k in enumerate(kernels, 1):
            layers[f"relu_{i}"] = nn.ReLU()
            layers[f"conv_{i}"] = nn.Conv2d(widths[i - 1], widths[i], k, padding=k // 2)
        super().__init__(layers)


class DalleBlock(nn.Module):
    """Residual block ``id_path(x) + post_gain * res_path(x)``; ``(B, n_in, H, W) -> (B, n_out, H, W)``.
    ``kernels``: the residual path's conv sizes (see :class:`_ResPath`)."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int] = (3, 3, 3, 1)) -> None:
        super().__init__()
        self.id_path = nn.Conv2d(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        self.res_path = _ResPath(n_in, n_out, kernels)
        self.post_gain = 1.0 / n_layers**2

    def forward(self, x: Tensor) -> Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class DalleEncoder(nn.Module):
    """DALL-E dVAE encoder: images to ``vocab_size``-way token logits on a 1/8-resolution grid.

    Args:
        hidden_size: base width (256 in DALL-E).
        vocab_size: codebook size (8192).
        num_groups: residual groups (4); widths double per group, a max-pool follows all but the last.
        blocks_per_group: residual blocks per group (2).
        in_channels: image channels (3).

    Shapes: ``(B, C, H, W) -> (B, V, H / 2**(G-1), W / 2**(G-1))``; 112² -> 14² for FLAVA.
    Full size: 53.8M parameters, about 52 GFLOP per 112² image.
    """

    def __init__(
        self,
        hidden_size: int = 256,
        vocab_size: int = 8192,
        num_groups: int = 4,
        blocks_per_group: int = 2,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.num_groups, self.blocks_per_group, self.in_channels = num_groups, blocks_per_group, in_channels
        n_layers = num_groups * blocks_per_group
        self.input = nn.Conv2d(in_channels, hidden_size, 7, padding=3)
        width = hidden_size
        for g in range(1, num_groups + 1):
            out = hidden_size * 2 ** (g - 1)
            blocks: OrderedDict[str, nn.Module] = OrderedDict()
            for b in range(1, blocks_per_group + 1):
                blocks[f"block_{b}"] = DalleBlock(width if b == 1 else out, out, n_layers)
            if g < num_groups:
                blocks["pool"] = nn.MaxPool2d(2)
            self.add_module(f"group_{g}", nn.Sequential(blocks))
            width = out
        self.output = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=nn.Conv2d(width, vocab_size, 1)))

    @property
    def downsample(self) -> int:
        """Input pixels per output token along each side (8 for four groups)."""
        return 2 ** (self.num_groups - 1)

    def forward(self, pixels: Tensor) -> Tensor:
        """Token logits.

        Args:
            pixels: ``(B, C, H, W)`` in the dVAE input space (see :func:`dalle_preprocess`).

        Returns:
            ``(B, vocab_size, H / 8, W / 8)`` logits.
        """
        if pixels.ndim != 4 or pixels.shape[1] != self.in_channels:
            raise InputError(f"pixels must be (B, {self.in_channels}, H, W), got {tuple(pixels.shape)}")
        x = self.input(pixels)
        for g in range(1, self.num_groups + 1):
            x = getattr(self, f"group_{g}")(x)
        return self.output(x)


class ImageTokenizer(nn.Module):
    """A frozen dVAE encoder that turns images into token ids (FLAVA's MIM targets).

    It is always in ``eval()`` mode, its parameters have ``requires_grad=False`` and it
    runs under ``torch.no_grad``. With ``channels_last=True`` it runs the convolutions in
    NHWC layout (same results; faster on most CPUs and GPUs, see ``benchmarks/``).

    Args:
        encoder: a :class:`DalleEncoder` (or any module mapping pixels to ``(B, V, h, w)`` logits).
        channels_last: run in channels-last memory layout.
    """

    def __init__(self, encoder: DalleEncoder, channels_last: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.channels_last = channels_last
        self.requires_grad_(False)
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)
        super().train(False)

    @property
    def vocab_size(self) -> int:
        return self.encoder.vocab_size

    def train(self, mode: bool = True) -> ImageTokenizer:
        """A frozen tokenizer stays in eval mode whatever its parent asks."""
        return super().train(False)

    @torch.no_grad()
    def logits(self, pixels: Tensor) -> Tensor:
        """``(B, 3, h, w)`` dVAE pixels -> ``(B, V, h/8, w/8)`` float logits.

        Always computed in the tokenizer's own dtype with autocast off: the ids are training
        targets, and a bf16 pass under the training loop's autocast could flip near-tied argmaxes,
        so in-loop ids would differ from ids cached by ``python -m mmkit.data.token_cache``.
        """
        dtype = next(self.encoder.parameters()).dtype
        pixels = pixels.to(dtype)
        if self.channels_last:
            pixels = pixels.contiguous(memory_format=torch.channels_last)
        with torch.autocast(pixels.device.type, enabled=False):
            return self.encoder(pixels).contiguous()

    @torch.no_grad()
    def forward(self, pixels: Tensor) -> Tensor:
        """Token ids.

        Args:
            pixels: ``(B, 3, h, w)`` in the dVAE input space (``0.8 x + 0.1`` of [0,1] pixels).

        Returns:
            ``(B, (h/8) * (w/8))`` int64 ids, row-major over the token grid (the patch order
            of the ViT when the grids match).
        """
        return self.logits(pixels).argmax(dim=1).flatten(1)


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------
def tokenizer_fingerprint(encoder: nn.Module) -> str:
    """A short hash of the tokenizer's weights (sha256 over names and float32 values, 16 hex digits):
    cached token ids record it, and pretraining checks it against the configured tokenizer."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_cached_ids(cached: dict[str, dict], tokenizer: nn.Module | None, image_size: int, grid: int) -> None:
    """Refuse cached image-token ids (``python -m mmkit.data.token_cache``) that another tokenizer, input
    size or patch grid made.

    Args:
        cached: ``{source name: its shards' __tokenizer__.json record}``.
        tokenizer: the configured :class:`ImageTokenizer` (None: the model has none).
        image_size: the tokenizer's input side (``codebook.image_size``).
        grid: the model's patches per side.

    Raises:
        InputError: naming every difference and the two ways out.
    """
    if cached and tokenizer is None:
        raise InputError("cached token ids need the tokenizer they came from: set model.codebook.checkpoint")
    for name, info in cached.items():
        mine = tokenizer_fingerprint(tokenizer.encoder)
        problems = [
            f"tokenizer {info.get('fingerprint')} != configured {mine}" if info.get("fingerprint") != mine else None,
            f"input size {info.get('image_size')} != codebook.image_size {image_size}"
            if info.get("image_size") != image_size
            else None,
            f"token grid {info.get('grid')} != patch grid {[grid, grid]}"
            if list(info.get("grid", [])) != [grid, grid]
            else None,
        ]
        if any(problems):
            raise InputError(
                f"the cached token ids in {name} do not fit this run: {'; '.join(p for p in problems if p)}. "
                "Re-run python -m mmkit.data.token_cache with the configured tokenizer, "
                "or set data.cached_tokens=false"
            )


def _infer_sizes(state: dict[str, Tensor]) -> dict[str, Any]:
    try:
        hidden, in_ch = state["input.weight"].shape[:2]
        vocab = state["output.conv.weight"].shape[0]
    except KeyError as e:
        raise DataKeyError(f"not a DALL-E encoder state dict: {e.args[0]!r} is missing") from None
    groups = len({k.split(".")[0] for k in state if k.startswith("group_")})
    blocks = len({k.split(".")[1] for k in state if k.startswith("group_1.block_")})
    return dict(hidden_size=hidden, vocab_size=vocab, num_groups=groups, blocks_per_group=blocks, in_channels=in_ch)


def load_dalle_encoder(state: dict[str, Tensor], source: str = "the state dict", **sizes: Any) -> DalleEncoder:
    """Build a :class:`DalleEncoder` from a state dict in *our* names (sizes inferred unless given),
    loaded with :func:`mmkit.utils.weights.load_strict`.

    Raises:
        CheckpointMismatchError: listing missing, unexpected and mis-shaped tensors.
    """
    encoder = DalleEncoder(**{**_infer_sizes(state), **sizes})
    encoder.load_report = load_strict(encoder, state, source, target="DALL-E encoder")
    return encoder


def dalle_encoder_from_checkpoint(path: str | Path) -> DalleEncoder:
    """Load a DALL-E encoder from a file or directory, or a hub name (:func:`~mmkit.utils.hub.resolve_checkpoint`).

    Accepts: a dVAE folder written by ``recipes/dalle/train_tokenizer.py`` (``dvae_config.json`` +
    ``encoder.safetensors``), a transformers ``FlavaImageCodebook`` or ``FlavaForPreTraining`` directory
    (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``), or a ``.pt`` /
    ``.pth`` / ``.bin`` / ``.safetensors`` file holding a state dict in original DALL-E
    names (``blocks.group_1.block_1.res_path.conv_1.w``), transformers names or ours.
    """
    path = resolve_checkpoint(path)
    if path.is_dir() and (path / "dvae_config.json").is_file():  # trained by recipes/dalle/train_tokenizer.py
        path = path / "encoder.safetensors"
    if path.is_dir():
        raw = read_weights(path)
        cfg_file = path / "config.json"
        if cfg_file.exists():
            cfg = json.loads(cfg_file.read_text())
            if "image_codebook_config" in cfg or any(k.startswith("image_codebook.") for k in raw):
                raw = {k: v for k, v in raw.items() if k.startswith("image_codebook.")}
                if not raw:
                    raise MissingError(f"{path} is a FLAVA checkpoint without an image codebook")
    elif path.is_file():
        raw = read_weights(path)
    else:
        raise MissingError(f"DALL-E encoder checkpoint {path} does not exist")
    if any(k.endswith((".w", ".b")) for k in raw):
        state = dalle_from_openai(raw)
    else:
        state = dalle_from_hf(raw)
    return load_dalle_encoder(state, str(path))
