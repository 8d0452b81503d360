"""Reading weight files in the layouts Hugging Face-style checkpoint directories use."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from mmkit.utils.errors import MissingError


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """All tensors of a checkpoint directory.

    Looks for, in order: ``model.safetensors``, a sharded ``model.safetensors.index.json``
    (every shard it names must exist), ``pytorch_model.bin`` (loaded with
    ``weights_only=True``: no code runs).

    Raises:
        FileNotFoundError: naming the directory and the files it looked for, or a missing shard.
    """
    path = Path(path)
    st, index, bin_ = path / "model.safetensors", path / "model.safetensors.index.json", path / "pytorch_model.bin"
    if st.exists():
        from safetensors.torch import load_file

        return load_file(str(st))
    if index.exists():
        from safetensors.torch import load_file

        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out: dict[str, Tensor] = {}
        for shard in shards:
            if not (path / shard).exists():
                raise MissingError(f"{index} names shard {shard!r}, which is missing from {path}")
            out.update(load_file(str(path / shard)))
        return out
    if bin_.exists():
        return torch.load(bin_, map_location="cpu", weights_only=True)
    raise MissingError(
        f"no weights in {path}: expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )
