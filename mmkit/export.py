"""Export a model's encoders for serving: ``python -m mmkit.export onnx``.

    python -m mmkit.export onnx --checkpoint runs/demo/final --out exported/
    python -m mmkit.export onnx --checkpoint path/to/clip-vit-base-patch16 --out clip-onnx/

``--checkpoint`` is anything :func:`mmkit.eval.load_encoders` reads: a FLAVA, CLIP or SigLIP mmkit export,
or a transformers ``FlavaModel`` / ``CLIPModel`` / ``SiglipModel`` directory. ``--out`` receives:

* ``image_encoder.onnx``: input ``pixel_values`` ``(B, 3, H, W)`` float32, normalised as
  ``preprocessing.json`` says; output ``image_embedding`` ``(B, P)`` float32, L2-normalised.
* ``text_encoder.onnx``: inputs ``input_ids`` and ``attention_mask`` ``(B, L)`` int64 (mask 1 = real
  token, 0 = padding, right-padded); output ``text_embedding`` ``(B, P)`` float32, L2-normalised.
  ``B`` and ``L`` are dynamic (``L`` up to ``text.max_length``). A SigLIP text tower pools its last
  position, so it was trained on captions padded to one length; the exported graph pads any shorter
  batch to that length itself (``text.pad_to``), so every caller may pad to its batch's longest caption.
* ``preprocessing.json``: the image side (``image_size``, ``mean``, ``std``; resize the shorter side to
  ``image_size``, centre-crop, scale to [0, 1], then ``(x - mean) / std``) and the text side
  (``max_length``, ``pad_token_id``, ``pad_to``, the tokenizer folder), exactly what ``mmkit.eval`` uses.
* ``tokenizer/``: the checkpoint's tokenizer files (``--tokenizer`` overrides), when one is found.

The graphs are traced by ``torch.onnx.export``'s ``torch.export``-based exporter with the reference
(``"math"``) attention, and run in onnxruntime within 1e-4 of mmkit's embeddings. Needs the ``onnx`` extra
(``pip install 'mmkit[onnx]'``: onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmkit.utils.errors import InputError, MissingError, run_cli

ONNX_PACKAGES = ("onnx", "onnxscript")
TOKENIZER_FILES = (
    "tokenizer.json",
    "vocab.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "added_tokens.json",
)
_EXAMPLE_BATCH, _EXAMPLE_LENGTH = 2, 5  # traced example sizes (the graphs accept any batch and length)


class ImageEmbedding(nn.Module):
    """``pixel_values`` ``(B, 3, H, W)`` float32 -> L2-normalised image embedding ``(B, P)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: Tensor) -> Tensor:
        return F.normalize(self.model.embed_image(self.model.encode_image(pixel_values)), dim=-1)


class TextEmbedding(nn.Module):
    """``input_ids``, ``attention_mask`` ``(B, L)`` int64 (1 = real token) -> L2-normalised ``(B, P)``.

    ``pad_to`` (SigLIP: the trained length) right-pads shorter batches with ``pad_token_id`` and mask 0
    first, as :func:`mmkit.eval.features.text_embeddings` pads them; ``L`` must not exceed it.
    """

    def __init__(self, model: nn.Module, pad_to: int | None = None, pad_token_id: int = 0) -> None:
        super().__init__()
        self.model = model
        self.pad_to = pad_to
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        if self.pad_to is not None:
            missing = self.pad_to - input_ids.shape[1]
            input_ids = F.pad(input_ids, (0, missing), value=self.pad_token_id)
            attention_mask = F.pad(attention_mask, (0, missing), value=0)
        return F.normalize(self.model.embed_text(self.model.encode_text(input_ids, attention_mask)), dim=-1)


def require_onnx() -> None:
    """Raise one line naming the extra when the exporter's packages are missing."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingError(f"ONNX export needs {', '.join(missing)}: pip install 'mmkit[onnx]'")


def text_padding(model: nn.Module, tokenizer: Any) -> tuple[int | None, int, int]:
    """``(pad_to, pad_token_id, max_length)`` of the text tower: ``pad_to`` is SigLIP's fixed length
    (``text.pooler == "last"``), else None; the pad id is the tokenizer's, else the config's, else 0."""
    text = model.config.text
    pad_to = text.max_positions if text.pooler == "last" else None
    pad_id = tokenizer.pad_token_id if tokenizer is not None else getattr(text, "pad_token_id", None)
    return pad_to, int(pad_id or 0), text.max_positions


def preprocessing(model: nn.Module, checkpoint: str, tokenizer: Any, tokenizer_dir: str | None) -> dict[str, Any]:
    """What ``preprocessing.json`` holds: the evaluation transform's size/mean/std and the text padding."""
    from mmkit.eval.loading import image_normalisation

    mean, std = image_normalisation(checkpoint)
    pad_to, pad_id, max_length = text_padding(model, tokenizer)
    return {
        "model_type": getattr(model.config, "model_type", "flava"),
        "image": {
            "image_size": model.config.image.image_size,
            "resize": "shorter side to image_size (bicubic), then centre crop",
            "rescale": 1 / 255,
            "mean": list(mean),
            "std": list(std),
            "layout": "NCHW float32",
        },
        "text": {
            "tokenizer": tokenizer_dir,
            "max_length": max_length,
            "pad_token_id": pad_id,
            "pad_to": pad_to,
            "padding": "right; attention_mask 1 = real token, 0 = padding",
        },
        "outputs": {"image_embedding": "(B, P) L2-normalised", "text_embedding": "(B, P) L2-normalised"},
    }


def copy_tokenizer(found: Path | None, out: Path) -> str | None:
    """Copy the tokenizer files of ``found`` (a folder or one file) into ``out/tokenizer``; its name or None."""
    if found is None:
        return None
    files = [found] if found.is_file() else [found / name for name in TOKENIZER_FILES if (found / name).is_file()]
    target = out / "tokenizer"
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copyfile(path, target / path.name)
    return "tokenizer"


def _onnx_export(module: nn.Module, args: tuple[Tensor, ...], path: Path, names: list[str], dims: dict) -> None:
    """Trace ``module`` on ``args`` into ``path`` (inputs ``names[:-1]``, output ``names[-1]``), with the
    ``torch.export`` dynamic ``dims`` per input name; weights inside the file unless they exceed 2 GB."""
    big = sum(p.numel() * p.element_size() for p in module.parameters()) > 1_800_000_000
    with warnings.catch_warnings():  # the two inputs share their Dims, which the renamer reports once each
        warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape")
        program = torch.onnx.export(
            module.eval(),
            args,
            input_names=names[:-1],
            output_names=names[-1:],
            dynamic_shapes=dims,
            dynamo=True,
            external_data=big,
            verbose=False,
        )
    program.save(str(path), external_data=big)


def export_onnx(checkpoint: str, out: str | Path, *, tokenizer: str | None = None, log: Any = print) -> dict:
    """Write ``image_encoder.onnx``, ``text_encoder.onnx``, ``preprocessing.json`` and ``tokenizer/``
    into ``out`` (see the module docstring); returns what ``preprocessing.json`` holds."""
    require_onnx()
    from mmkit.eval.loading import find_tokenizer, load_encoders

    model, tok = load_encoders(checkpoint, tokenizer=tokenizer, log=log)
    model = model.float().eval().requires_grad_(False)
    model.set_attention_backend("math")  # the reference path: plain matmuls and an additive mask
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    size = model.config.image.image_size
    pad_to, pad_id, max_length = text_padding(model, tok)
    batch, length = torch.export.Dim("batch", min=1), torch.export.Dim("length", min=1, max=pad_to or max_length)
    with torch.no_grad():
        pixels = torch.randn(_EXAMPLE_BATCH, 3, size, size)
        _onnx_export(
            ImageEmbedding(model),
            (pixels,),
            out / "image_encoder.onnx",
            ["pixel_values", "image_embedding"],
            {"pixel_values": {0: batch}},
        )
        ids = torch.full((_EXAMPLE_BATCH, _EXAMPLE_LENGTH), pad_id, dtype=torch.long)
        mask = torch.ones_like(ids)
        dims = {"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}}
        _onnx_export(
            TextEmbedding(model, pad_to, pad_id),
            (ids, mask),
            out / "text_encoder.onnx",
            ["input_ids", "attention_mask", "text_embedding"],
            dims,
        )
    tokenizer_dir = copy_tokenizer(find_tokenizer(checkpoint, tokenizer), out)
    if tokenizer_dir is None:
        log(f"warning: no tokenizer beside {checkpoint}; pass --tokenizer to ship one with the export")
    meta = preprocessing(model, checkpoint, tok, tokenizer_dir)
    (out / "preprocessing.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    shipped = ", tokenizer/" if tokenizer_dir else ""
    log(f"wrote {out}/image_encoder.onnx, text_encoder.onnx, preprocessing.json{shipped}")
    return meta


def main(argv: list[str] | None = None) -> int:
    """``python -m mmkit.export onnx --checkpoint CKPT --out DIR``; a user error is one ``error:`` line."""
    parser = argparse.ArgumentParser(
        prog="python -m mmkit.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="format", required=True)
    onnx = sub.add_parser("onnx", help="image_encoder.onnx + text_encoder.onnx + preprocessing.json")
    onnx.add_argument("--checkpoint", required=True, help="an mmkit export, transformers directory or hub name")
    onnx.add_argument("--out", required=True, help="output folder")
    onnx.add_argument("--tokenizer", help="default: the checkpoint's")
    onnx.add_argument("--debug", action="store_true", help="a traceback instead of one error line")
    args = parser.parse_args(argv)

    def run() -> int:
        if Path(args.out).is_file():
            raise InputError(f"--out {args.out} is a file, not a folder")
        export_onnx(args.checkpoint, args.out, tokenizer=args.tokenizer)
        return 0

    return run_cli(run, args.debug)


if __name__ == "__main__":
    sys.exit(main())
