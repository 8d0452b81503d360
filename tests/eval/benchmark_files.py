"""Miniature copies of the benchmark layouts, written as the real releases lay them out (file names,
record formats, JSON fields, parquet schema), from a handful of generated images."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np


def png(seed: int, size: int = 32, mode: str = "RGB") -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = (size, size, 3) if mode == "RGB" else (size, size)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "PNG")
    return buf.getvalue()


def pixels(seed: int) -> np.ndarray:
    """One CIFAR row: 3,072 bytes, the red, green and blue 32x32 planes."""
    return np.random.default_rng(seed).integers(0, 256, 3072, dtype=np.uint8)


def class_folders(root: Path, classes=("n001", "n002", "n003"), per_class: int = 3, split: str = "val") -> Path:
    for c, wnid in enumerate(classes):
        (root / split / wnid).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (root / split / wnid / f"{wnid}_{i}.JPEG".replace(".JPEG", ".png")).write_bytes(png(10 * c + i))
    (root / "LOC_synset_mapping.txt").write_text(
        "\n".join(f"{w} {name}, another name" for w, name in zip(classes, ("tench", "goldfish", "great white shark")))
        + "\n"
    )
    return root


def cifar10_binary(root: Path, per_batch: int = 3) -> Path:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for b, name in enumerate(names):
        rows = [bytes([(b + i) % 10]) + pixels(100 * b + i).tobytes() for i in range(per_batch)]
        (d / name).write_bytes(b"".join(rows))
    (d / "batches.meta.txt").write_text("\n".join(CIFAR10) + "\n\n")
    return d


CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def cifar_python(root: Path, hundred: bool = False, per_batch: int = 3) -> Path:
    """The python version, pickled with protocol 2 and byte-string keys as the released files are."""
    d = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    d.mkdir(parents=True)
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for b, name in enumerate(names):
        data = np.stack([pixels(100 * b + i) for i in range(per_batch)])
        batch = {
            b"batch_label": f"batch {b}".encode(),
            b"data": data,
            b"filenames": [f"img_{b}_{i}.png".encode() for i in range(per_batch)],
        }
        if hundred:
            batch[b"fine_labels"] = [(7 * b + i) % 100 for i in range(per_batch)]
            batch[b"coarse_labels"] = [i % 20 for i in range(per_batch)]
        else:
            batch[b"labels"] = [(b + i) % 10 for i in range(per_batch)]
        (d / name).write_bytes(pickle.dumps(batch, protocol=2))
    if hundred:
        meta = {
            b"fine_label_names": [f"class_{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(20)],
        }
        (d / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    else:
        meta = {b"label_names": [n.encode() for n in CIFAR10], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
        (d / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return d


def idx(values: np.ndarray) -> bytes:
    dims = values.shape
    return bytes([0, 0, 0x08, len(dims)]) + b"".join(int(n).to_bytes(4, "big") for n in dims) + values.tobytes()


def mnist(root: Path, n_train: int = 5, n_test: int = 4, gz: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        for kind, arr in (
            ("images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)),
            ("labels-idx1-ubyte", (np.arange(n) % 10).astype(np.uint8)),
        ):
            raw = idx(arr)
            name = f"{prefix}-{kind}"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(raw))
            else:
                (root / name).write_bytes(raw)
    return root


def coco(root: Path, n: int = 4, per_image: int = 5) -> Path:
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    images, anns = [], []
    for i in range(n):
        name = f"{i:012d}.jpg"
        (root / "val2017" / name).write_bytes(png(i))
        images.append({"license": 1, "file_name": name, "height": 32, "width": 32, "id": 1000 + i})
        anns += [
            {"image_id": 1000 + i, "id": 10 * i + j, "caption": f"image {i} caption {j} "} for j in range(per_image)
        ]
    images.append({"file_name": "no_captions.jpg", "id": 99, "height": 32, "width": 32})  # never captioned: left out
    (root / "annotations" / "captions_val2017.json").write_text(
        json.dumps({"info": {}, "licenses": [], "images": images, "annotations": anns})
    )
    return root


def karpathy(root: Path, dataset: str = "flickr30k", n_test: int = 3, per_image: int = 5) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    folder = root / ("flickr30k-images" if dataset == "flickr30k" else "val2014")
    folder.mkdir()
    images = []
    for i in range(n_test + 2):
        split = "test" if i < n_test else ("train" if i == n_test else "val")
        name = f"{1000 + i}.jpg"
        (folder / name).write_bytes(png(i))
        sentences = [
            {"tokens": ["a", "b"], "raw": f"photo {i} sentence {j}.", "imgid": i, "sentid": 5 * i + j}
            for j in range(per_image)
        ]
        entry = {
            "sentids": [s["sentid"] for s in sentences],
            "imgid": i,
            "sentences": sentences,
            "split": split,
            "filename": name,
        }
        if dataset == "coco":
            entry["filepath"] = "val2014"
            entry["cocoid"] = i
        images.append(entry)
    (root / f"dataset_{dataset}.json").write_text(json.dumps({"images": images, "dataset": dataset}))
    return root


def parquet(path: Path, n: int = 6, retrieval: bool = False, classes=("cat", "dog", "bird")) -> Path:
    """A Hugging Face hub parquet file: an ``image`` struct column {bytes, path}, ``label`` with the
    ClassLabel names in the ``huggingface`` schema metadata (or ``caption`` lists for retrieval)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    image = pa.array(
        [{"bytes": png(i), "path": f"img_{i}.png"} for i in range(n)],
        type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    if retrieval:
        target = pa.array([[f"row {i} caption {j}" for j in range(2)] for i in range(n)], type=pa.list_(pa.string()))
        features = {
            "image": {"_type": "Image"},
            "caption": {"feature": {"dtype": "string", "_type": "Value"}, "_type": "Sequence"},
        }
        table = pa.table({"image": image, "caption": target})
    else:
        target = pa.array([i % len(classes) for i in range(n)], type=pa.int64())
        features = {"image": {"_type": "Image"}, "label": {"names": list(classes), "_type": "ClassLabel"}}
        table = pa.table({"image": image, "label": target})
    table = table.replace_schema_metadata({b"huggingface": json.dumps({"info": {"features": features}}).encode()})
    pq.write_table(table, path, row_group_size=4)
    return path


def clip_benchmark_wds(root: Path, retrieval: bool = False, n: int = 5, shards: int = 2, split: str = "test") -> Path:
    """CLIP_benchmark's export: ``<split>/{0..N-1}.tar`` of ``s%07d.webp`` + ``.cls`` (or ``.txt``)."""
    from PIL import Image

    (root / split).mkdir(parents=True)
    for s in range(shards):
        with tarfile.open(root / split / f"{s}.tar", "w") as tar:
            for i in range(s * n, (s + 1) * n):
                key = f"s{i:07d}"
                buf = io.BytesIO()
                Image.open(io.BytesIO(png(i))).save(buf, "WEBP", lossless=True)
                members = {f"{key}.webp": buf.getvalue()}
                members[f"{key}.txt" if retrieval else f"{key}.cls"] = (
                    f"caption {i} a\ncaption {i} b\n".encode() if retrieval else str(i % 3).encode()
                )
                for name, data in members.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    (root / split / "nshards.txt").write_text(f"{shards}\n")
    if retrieval:
        (root / "dataset_type.txt").write_text("retrieval\n")
    else:
        (root / "classnames.txt").write_text("cat\ndog\nbird\n")
        (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na bad photo of the {c}.\n")
    return root
