"""Frozen features of a benchmark split, computed once and cached on disk.

:func:`image_features` runs the image encoder over a :class:`~mmkit.eval.benchmarks.BenchmarkSet`
(decoding in ``num_workers`` loader processes, the model in this one) and returns each image's pooled
feature (before the projection: the linear-probe input) and its L2-normalised contrastive embedding
(zero-shot and retrieval), with the labels or captions. :func:`text_embeddings` does the same for
texts. Both go through a :class:`FeatureCache` when one is given: the key is a digest of the model's
weights (their bytes, whatever file they came from), the data (every file's name, size and time), the
transform, and for texts the tokenizer and the texts themselves, so a changed checkpoint, transform,
tokenizer or dataset is a miss, never a stale hit. Entries are written atomically.

A sample whose image is missing or cannot be decoded is skipped and named; past ``max_bad_fraction``
of the split the extraction stops with one error listing the first few.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from mmkit.data.sources import Record, decode_image
from mmkit.eval.benchmarks.base import BenchmarkSet, Sample
from mmkit.utils.errors import InputError

#: bumped when what a cached entry holds, or how it is computed, changes
FEATURES_VERSION = 1


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state (names, shapes, dtypes and bytes of every tensor)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Cached tensors and their JSON sidecar under ``root``, one entry per key (see the module docstring).

    Attributes:
        hits, misses: counts since construction.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.hits = self.misses = 0

    def _paths(self, key: str) -> tuple[Path, Path]:
        d = self.root / key[:2]
        return d / f"{key}.safetensors", d / f"{key}.json"

    def get(self, key: str) -> tuple[dict[str, Tensor], dict[str, Any]] | None:
        from safetensors.torch import load_file

        tensors, sidecar = self._paths(key)
        if not (tensors.is_file() and sidecar.is_file()):
            self.misses += 1
            return None
        try:
            out = load_file(str(tensors)), json.loads(sidecar.read_text())
        except Exception:  # a damaged entry (safetensors' own error type, too deep a sidecar) is recomputed
            out = None
        if out is None or not isinstance(out[1], dict):
            self.misses += 1
            return None
        self.hits += 1
        return out

    def put(self, key: str, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        path, sidecar = self._paths(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
        tmp = sidecar.with_name(f".{sidecar.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(meta))
        os.replace(tmp, sidecar)  # the sidecar last: an entry without it is a miss


@dataclass
class ImageFeatures:
    """What :func:`image_features` returns, in the split's order (skipped samples left out).

    Attributes:
        keys: each sample's key. features: ``(N, D)`` pooled features before the projection.
        embeddings: ``(N, P)`` L2-normalised contrastive embeddings.
        labels: ``(N,)`` class ids (classification sets) or None.
        captions: each image's captions (retrieval sets) or None.
        skipped: ``(key, reason)`` of every sample left out.
    """

    keys: list[str]
    features: Tensor
    embeddings: Tensor
    labels: Tensor | None = None
    captions: list[tuple[str, ...]] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


class _Decoded(IterableDataset):
    """This worker's share of a split (every ``count``-th sample), decoded and transformed."""

    def __init__(self, dataset: BenchmarkSet, transform: Callable[[Any], dict[str, Tensor]]) -> None:
        self.dataset, self.transform = dataset, transform

    def __iter__(self) -> Iterator[tuple[int, Sample, Tensor | None]]:
        info = get_worker_info()
        worker, count = (info.id, info.num_workers) if info is not None else (0, 1)
        for index, sample in shard(self.dataset, worker, count):
            pixels = None
            if sample.error is None:
                try:
                    image = sample.image
                    if isinstance(image, bytes | bytearray | memoryview):
                        image = decode_image(Record(key=sample.key, image=bytes(image)))
                    else:
                        image = image.convert("RGB")
                    pixels = self.transform(image)["image"]
                except ValueError as e:
                    sample.error = str(e)
            sample.image = None  # the encoded bytes are not needed any more
            yield index, sample, pixels


def shard(dataset: BenchmarkSet, worker: int, count: int) -> Iterator[tuple[int, Sample]]:
    """``(index, sample)`` for the samples ``index % count == worker``; a reader with a ``shard`` method
    skips the others without reading them."""
    own = getattr(dataset, "shard", None)
    if own is not None:
        yield from own(worker, count)
        return
    for index, sample in enumerate(dataset):
        if index % count == worker:
            yield index, sample


def _collate(items):
    return items


def image_features(
    model: nn.Module,
    dataset: BenchmarkSet,
    transform: Callable[[Any], dict[str, Tensor]],
    *,
    transform_id: str,
    cache: FeatureCache | None = None,
    model_id: str | None = None,
    batch_size: int = 128,
    num_workers: int = 0,
    max_bad_fraction: float = 0.01,
    progress: bool | str = True,
) -> ImageFeatures:
    """Pooled features and contrastive embeddings of every image of ``dataset`` (see the module docstring).

    Args:
        model: a FLAVA, CLIP or SigLIP model (``encode_image``, ``image_features``, ``project_image``).
        dataset: the split. transform: PIL image -> ``{"image": (3, S, S)}``.
        transform_id: what identifies the transform in the cache key (e.g. its config's repr).
        cache: where features are kept; None computes every time.
        model_id: the model's digest (:func:`model_digest`; computed when None and a cache is given).
        batch_size, num_workers: images per forward pass; decoding processes.
        max_bad_fraction: the share of unreadable images tolerated (each named in ``skipped``).
        progress: a progress bar on stderr, labelled ``"image features"``, or labelled with this string;
            False: none.

    Raises:
        ValueError: more than ``max_bad_fraction`` of the images could not be read, naming some.
    """
    key = None
    if cache is not None:
        model_id = model_id or model_digest(model)
        key = _digest(["image", FEATURES_VERSION, model_id, dataset.fingerprint(), transform_id])
        hit = cache.get(key)
        if hit is not None:
            return _cached_features(*hit)
    desc = progress if isinstance(progress, str) else "image features"
    rows, features, embeddings, skipped = _encode_images(
        model, dataset, transform, batch_size, num_workers, max_bad_fraction, progress is not False, desc
    )
    samples = [s for _, s in rows]
    labels = _labels(dataset, samples) if dataset.kind == "classification" else None
    captions = [s.captions for s in samples] if dataset.kind == "retrieval" else None
    result = ImageFeatures(
        [s.key for s in samples], features, embeddings, labels, captions, [(k, why) for _, k, why in sorted(skipped)]
    )
    if cache is not None:
        tensors = {"features": features, "embeddings": embeddings}
        if labels is not None:
            tensors["labels"] = labels
        meta = {"keys": result.keys, "captions": captions, "skipped": result.skipped, "set": dataset.describe()}
        cache.put(key, tensors, meta)
    return result


def _cached_features(tensors: dict[str, Tensor], meta: dict[str, Any]) -> ImageFeatures:
    """:class:`ImageFeatures` from a cache entry written by :func:`image_features`."""
    captions = [tuple(c) for c in meta["captions"]] if meta.get("captions") is not None else None
    skipped = [tuple(s) for s in meta["skipped"]]
    return ImageFeatures(
        meta["keys"], tensors["features"], tensors["embeddings"], tensors.get("labels"), captions, skipped
    )


def _labels(dataset: BenchmarkSet, samples: list[Sample]) -> Tensor:
    """The class ids ``(N,)`` of a classification set's samples, each checked against its class names."""
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    n = len(dataset.classnames or ())
    if n and len(labels) and (labels.min() < 0 or labels.max() >= n):
        bad = next(s for s in samples if not 0 <= s.label < n)
        raise InputError(f"{dataset.describe()}: sample {bad.key} has label {bad.label}, outside [0, {n})")
    return labels


def _encode_images(model, dataset, transform, batch_size, num_workers, max_bad_fraction, progress, desc):
    """``(rows in file order, features, embeddings, skipped)`` of every readable image of ``dataset``."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    loader = DataLoader(
        _Decoded(dataset, transform), batch_size=batch_size, num_workers=num_workers, collate_fn=_collate
    )
    bar = tqdm(total=dataset.size(), desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True)
    rows: list[tuple[int, Sample]] = []
    feats, embs, skipped = [], [], []
    with torch.no_grad():
        for items in loader:
            good = [(i, s, px) for i, s, px in items if px is not None]
            skipped += [(i, s.key, s.error) for i, s, px in items if px is None]
            if good:
                pooled = model.image_features(model.encode_image(torch.stack([px for _, _, px in good]).to(device)))
                feats.append(pooled.float().cpu())
                embs.append(F.normalize(model.project_image(pooled).float(), dim=-1).cpu())
                rows += [(i, s) for i, s, _ in good]
            bar.update(len(items))
    bar.close()
    total = len(rows) + len(skipped)
    if skipped and len(skipped) > max_bad_fraction * max(total, 1):
        named = "; ".join(f"{k} ({why})" for _, k, why in sorted(skipped)[:3])
        raise InputError(
            f"{len(skipped)} of {total} images of {dataset.describe()} could not be read, more than "
            f"max_bad_fraction={max_bad_fraction}: {named}"
        )
    order = sorted(range(len(rows)), key=lambda j: rows[j][0])  # workers interleave: back to file order
    features = torch.cat(feats)[order] if feats else torch.zeros(0)
    embeddings = torch.cat(embs)[order] if embs else torch.zeros(0)
    return [rows[j] for j in order], features, embeddings, skipped


def text_embeddings(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    cache: FeatureCache | None = None,
    model_id: str | None = None,
    batch_size: int = 256,
    progress: bool = False,
    desc: str = "text embeddings",
) -> Tensor:
    """``(len(texts), P)`` L2-normalised text embeddings, cached by (model, tokenizer, texts)."""
    from mmkit.data import pad_sequences

    key = None
    if cache is not None:
        model_id = model_id or model_digest(model)
        key = _digest(["text", FEATURES_VERSION, model_id, tokenizer_digest(tokenizer), list(texts)])
        hit = cache.get(key)
        if hit is not None:
            return hit[0]["embeddings"]
    device = next(model.parameters()).device
    text_cfg = model.config.text
    pad_to = text_cfg.max_positions if text_cfg.pooler == "last" else None  # SigLIP: its trained length
    out = []
    from tqdm import tqdm

    with torch.no_grad():
        for s in tqdm(range(0, len(texts), batch_size), desc=desc, disable=not progress, file=sys.stderr):
            chunk = texts[s : s + batch_size]
            ids, mask = pad_sequences([tokenizer.encode(t).input_ids for t in chunk], tokenizer.pad_token_id, pad_to)
            emb = model.embed_text(model.encode_text(ids.to(device), mask.to(device)))
            out.append(F.normalize(emb.float(), dim=-1).cpu())
    embeddings = torch.cat(out) if out else torch.zeros(0)
    if cache is not None:
        cache.put(key, {"embeddings": embeddings}, {"texts": len(texts)})
    return embeddings


def tokenizer_digest(tokenizer: Any) -> str:
    """A digest of what a :class:`~mmkit.tokenizers.TextTokenizer` does: its vocabulary and settings."""
    inner = getattr(tokenizer, "tokenizer", None)
    state = inner.to_str() if hasattr(inner, "to_str") else repr(sorted(vars(tokenizer).items(), key=str))
    return hashlib.sha256(f"{state}|{getattr(tokenizer, 'max_length', None)}".encode()).hexdigest()
