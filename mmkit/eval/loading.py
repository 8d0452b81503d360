"""The encoders to evaluate, from any checkpoint mmkit reads, with their tokenizer and image transform.

``checkpoint`` is anything :func:`mmkit.models.load` reads: what :func:`mmkit.models.load_flava` reads (a
pretraining export ``<run>/final``, a finetune export ``<run>/best``, a transformers FLAVA directory) or
:func:`mmkit.models.load_dual_encoder` reads (a CLIP/SigLIP export, a transformers ``CLIPModel`` /
``SiglipModel`` directory), each also by Hugging Face hub name (``facebook/flava-full[@revision]``,
:func:`mmkit.utils.hub.resolve_checkpoint`); None builds a randomly initialised model (the baseline). The tokenizer is
the one given, else ``<checkpoint>/tokenizer`` (mmkit exports), else the checkpoint directory itself
when it holds ``tokenizer.json`` or ``vocab.txt`` (transformers directories). The image normalisation
is a transformers directory's ``preprocessor_config.json`` mean/std (SigLIP: 0.5/0.5), else CLIP's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mmkit.data import ImageTransform, ImageTransformConfig
from mmkit.data.transforms import CLIP_MEAN, CLIP_STD
from mmkit.models import DualEncoderModel, FLAVAConfig, flava_model, load
from mmkit.tokenizers import TextTokenizer
from mmkit.utils.bounded import parse_json, read_text_file
from mmkit.utils.config_json import check_config_json
from mmkit.utils.errors import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint


def find_tokenizer(checkpoint: str | None, tokenizer: str | None = None) -> Path | None:
    """``tokenizer``, else ``<checkpoint>/tokenizer``, else the checkpoint directory when it holds one
    (``checkpoint`` a path or a hub name)."""
    if tokenizer:
        if not Path(tokenizer).exists():
            raise MissingError(f"tokenizer {tokenizer} does not exist")
        return Path(tokenizer)
    if not checkpoint:
        return None
    ckpt = resolve_checkpoint(checkpoint)
    return next(
        (d for d in (ckpt / "tokenizer", ckpt) if (d / "tokenizer.json").exists() or (d / "vocab.txt").exists()), None
    )


def load_encoders(
    checkpoint: str | None,
    *,
    tokenizer: str | None = None,
    model_config: str | None = None,
    device: torch.device | str = "cpu",
    log: Any = print,
) -> tuple[torch.nn.Module, TextTokenizer | None]:
    """The encoders (strictly loaded, eval mode, on ``device``) and the tokenizer they were trained with.

    Args:
        checkpoint: see the module docstring; None: a random model of ``model_config`` (a
            ``config.json``; default the tiny preset).
        tokenizer: overrides the tokenizer found beside the checkpoint.
    """
    if checkpoint and model_config:
        raise InputError("model_config is for a randomly initialised model; a checkpoint brings its own")
    checkpoint = str(resolve_checkpoint(checkpoint)) if checkpoint else None  # a path, or a hub name
    check_config_json(checkpoint)  # a value of the wrong type is one line here, not a traceback in a loader
    if checkpoint:
        model = load(checkpoint, device=device)
        if isinstance(model, DualEncoderModel):
            log(f"loaded {type(model.config).__name__.removesuffix('Config')} from {checkpoint}")
        else:
            log(str(model.load_report))
    else:
        config = FLAVAConfig.tiny()
        if model_config:
            data = parse_json(read_text_file(model_config, "model_config"), model_config)
            if not isinstance(data, dict):
                raise InputError(f"model_config {model_config} must hold a JSON object, got {type(data).__name__}")
            config = FLAVAConfig.from_dict(data)
        model = flava_model(config).to(device).eval()
    found = find_tokenizer(checkpoint, tokenizer)
    length = min(77, model.config.text.max_positions)
    return model, TextTokenizer.from_pretrained(found, max_length=length) if found else None


def image_normalisation(checkpoint: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of a transformers directory's ``preprocessor_config.json``, else CLIP's (FLAVA, mmkit)."""
    pre = resolve_checkpoint(checkpoint) / "preprocessor_config.json" if checkpoint else None
    if pre is not None and pre.exists():
        data = parse_json(read_text_file(pre, "preprocessor config"), str(pre))
        if isinstance(data, dict) and "image_mean" in data and "image_std" in data:
            for key in ("image_mean", "image_std"):
                value = data[key]
                if not (isinstance(value, list) and len(value) == 3 and all(isinstance(v, int | float) for v in value)):
                    raise InputError(f"{pre}: {key} must be a list of 3 numbers (one per channel), got {value!r:.60}")
            return tuple(data["image_mean"]), tuple(data["image_std"])
    return CLIP_MEAN, CLIP_STD


def eval_transform(model: torch.nn.Module, checkpoint: str | None) -> tuple[ImageTransform, str]:
    """The evaluation transform (resize + centre crop at the model's image size, its normalisation) and
    the string that identifies it in a feature cache key."""
    mean, std = image_normalisation(checkpoint)
    config = ImageTransformConfig(model.config.image.image_size, 0, mean=mean, std=std)
    return ImageTransform(config), repr(config)
