"""Index mode vs streaming at growing dataset sizes: time to the first batch and resident memory.

    python benchmarks/data_scale.py                       # 10k, 100k and 1M samples (~1.1 GB of shards)
    python benchmarks/data_scale.py --sizes 10000,100000  # smaller

The benchmark writes synthetic WebDataset shards (1,000 samples each: a tiny PNG and a caption; the
same bytes in every sample, so only the *count* grows) under ``--root`` once, then for each size
and mode starts a fresh Python process that builds the loader over all shards and takes the first
batch (batch 32, the main process only, so nothing else is measured). Reported side by side:

* ``first batch s``: construction + first batch (index mode reads every tar header first);
* ``RSS MiB``: the process's peak resident memory minus its memory after the imports.

Then samples/s and CPU time per sample of one process decoding a 2,000-sample set at FLAVA's sizes
(224² encoder image + 112² tokenizer image from 256² PNGs, batches of 50): index mode, streaming,
and streaming with the fast image path (``ImageTransformConfig(fast=True)``: one resize chain,
uint8 out of the worker); then the same for 256² JPEG shards decoded in the workers vs on the device
(``decode="device"``: the workers read headers only), with the device's share timed apart (on CUDA
when there is one: nvJPEG).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path

PER_SHARD = 1000


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _picture(image_side: int, fmt: str) -> bytes:
    """One encoded picture: flat colour as PNG (the index/streaming comparisons), or for JPEG a built-in
    shapes picture with noise (about what a 256² web photo costs to decode)."""
    import random

    import numpy as np
    from PIL import Image

    from mmkit.data.builtin import make_example

    buf = io.BytesIO()
    if fmt == "png":
        Image.new("RGB", (image_side, image_side), (120, 40, 200)).save(buf, format="PNG")
    else:
        image = np.asarray(make_example(random.Random(0))[0].resize((image_side, image_side)), dtype=np.float32)
        noisy = image + np.random.default_rng(0).normal(0, 12, image.shape)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(root: Path, samples: int, image_side: int = 8, fmt: str = "png") -> list[str]:
    """``samples // 1000`` shards of image + caption pairs under ``root`` (reused when already there)."""
    root.mkdir(parents=True, exist_ok=True)
    picture, ext = _picture(image_side, fmt), "png" if fmt == "png" else "jpg"
    paths = []
    for s in range(samples // PER_SHARD):
        path = root / f"pairs-{s:06d}.tar"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            with tarfile.open(tmp, "w") as tar:
                for i in range(PER_SHARD):
                    key = f"{s:06d}{i:04d}"
                    _tar_add(tar, f"{key}.{ext}", picture)
                    _tar_add(tar, f"{key}.txt", f"a purple square number {i}".encode())
            tmp.rename(path)
        paths.append(str(path))
    return paths


CHILD = r"""
import json, resource, sys, time
mode, listing, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
from mmkit.data import SampleDataset, ImageTransform, ImageTransformConfig, LoaderOptions, TarShards, make_loader
from mmkit.data.streaming import make_stream_loader
paths = json.load(open(listing))
collate = lambda samples, generator=None: len(samples)
transform = ImageTransform(ImageTransformConfig(8, 0))
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
if mode == "index":
    ds = SampleDataset(TarShards(paths), "image", transform)
    loader = make_loader(ds, collate, LoaderOptions(batch))
else:
    loader = make_stream_loader(paths, "image", collate, LoaderOptions(batch), image_transform=transform)
n, skipped = next(iter(loader))
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": elapsed, "rss_mib": (peak - base) / 1024, "batch": n}))
"""

THROUGHPUT = r"""
import json, os, sys, time
mode, listing, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
import torch
torch.set_num_threads(1)
from mmkit.data import SampleDataset, ImageTransform, ImageTransformConfig, LoaderOptions, TarShards, make_loader
from mmkit.data.streaming import make_stream_loader
paths = json.load(open(listing))
collate = lambda samples, generator=None: len(samples)
transform = ImageTransform(ImageTransformConfig(224, 112, fast=mode != "index" and mode != "stream",
                                                      decode="device" if mode == "jpeg-device" else "worker"))
if mode == "index":
    loader = make_loader(SampleDataset(TarShards(paths), "image", transform), collate, LoaderOptions(50))
else:
    loader = make_stream_loader(paths, "image", collate, LoaderOptions(50), image_transform=transform)
it = iter(loader)
next(it)
start, cpu0, done = time.perf_counter(), time.process_time(), 0
while done < n:
    got, skipped = next(it)
    done += got
wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
print(json.dumps({"samples_per_s": done / wall, "cpu_ms_per_sample": 1000 * cpu / done}))
"""

# The device's share of decode="device": decode + crop + resize + normalise of 256 JPEGs per call, in
# finish(), on CUDA when there is one (else the CPU, where it is the same work moved out of the workers).
FINISH = r"""
import json, sys, time
listing = sys.argv[1]
import torch
from mmkit.data import ImageTransform, ImageTransformConfig, ImageCollator, LoaderOptions
from mmkit.data.streaming import make_stream_loader
from mmkit.masking import BlockMaskGenerator
paths = json.load(open(listing))
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
torch.set_num_threads(1)  # as the other CPU measurements (two threads on 2 busy cores ran 25x slower)
transform = ImageTransform(ImageTransformConfig(224, 112, fast=True, decode="device"))
loader = make_stream_loader(paths, "image", ImageCollator(BlockMaskGenerator.flava(14)), LoaderOptions(256),
                            image_transform=transform)
batches = [next(iter(loader)) for _ in range(1)][0]
batch = batches[0] if isinstance(batches, tuple) else batches
def once():
    b = batch.to(device)
    b.encoded_images = batch.encoded_images
    transform.finish(b)
    if device.type == "cuda":
        torch.cuda.synchronize()
once()
start, reps = time.perf_counter(), 5
for _ in range(reps):
    once()
ms = 1000 * (time.perf_counter() - start) / (reps * 256)
print(json.dumps({"device": str(device), "ms_per_sample": ms}))
"""


def _child(code: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--root", default="/tmp/mmkit-data-scale")
    parser.add_argument("--throughput-samples", type=int, default=1000)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    root = Path(args.root)
    t = time.perf_counter()
    all_paths = write_shards(root / "small", max(sizes))
    print(f"shards ready under {root} ({time.perf_counter() - t:.0f} s)", flush=True)
    rows = []
    for n in sizes:
        listing = root / f"listing-{n}.json"
        listing.write_text(json.dumps(all_paths[: n // PER_SHARD]))
        got = {mode: _child(CHILD, mode, str(listing), "32") for mode in ("index", "stream")}
        rows.append((n, got))
        print(
            f"{n:>9,} samples: index {got['index']['seconds']:.2f} s / {got['index']['rss_mib']:.0f} MiB, "
            f"stream {got['stream']['seconds']:.2f} s / {got['stream']['rss_mib']:.0f} MiB",
            flush=True,
        )
    big = write_shards(root / "big", 2 * PER_SHARD, image_side=256)
    listing = root / "listing-big.json"
    listing.write_text(json.dumps(big))
    speed = {m: _child(THROUGHPUT, m, str(listing), str(args.throughput_samples)) for m in ("index", "stream", "fast")}
    jpegs = root / "listing-jpeg.json"
    jpegs.write_text(json.dumps(write_shards(root / "jpeg", 2 * PER_SHARD, image_side=256, fmt="jpeg")))
    for mode in ("jpeg-fast", "jpeg-device"):
        speed[mode] = _child(THROUGHPUT, mode, str(jpegs), str(args.throughput_samples))
    _report(rows, speed, _child(FINISH, str(jpegs)))


def _report(rows: list[tuple[int, dict]], speed: dict[str, dict], finish: dict) -> None:
    """The three tables: start-up by set size, samples/s by read mode, the device decode's share."""
    print("\n| samples | index: first batch s | index: RSS MiB | streaming: first batch s | streaming: RSS MiB |")
    print("|---|---|---|---|---|")
    for n, got in rows:
        i, s = got["index"], got["stream"]
        print(f"| {n:,} | {i['seconds']:.2f} | {i['rss_mib']:.0f} | {s['seconds']:.2f} | {s['rss_mib']:.0f} |")
    first, last = rows[0][1], rows[-1][1]
    for mode in ("index", "stream"):
        print(
            f"{mode}: first batch x{last[mode]['seconds'] / first[mode]['seconds']:.2f}, "
            f"RSS x{max(last[mode]['rss_mib'], 1) / max(first[mode]['rss_mib'], 1):.2f} "
            f"from {rows[0][0]:,} to {rows[-1][0]:,} samples"
        )
    print("\n| one process, 224² + 112² per sample | samples/s | CPU ms per sample |")
    print("|---|---|---|")
    names = {
        "index": "index mode",
        "stream": "streaming",
        "fast": "streaming, fast_images",
        "jpeg-fast": "JPEG shards, streaming, fast_images",
        "jpeg-device": "JPEG shards, decode on the device",
    }
    for mode, r in speed.items():
        print(f"| {names[mode]} | {r['samples_per_s']:.0f} | {r['cpu_ms_per_sample']:.2f} |")
    base = speed["index"]["cpu_ms_per_sample"]
    print(
        f"CPU per sample vs index mode: streaming x{base / speed['stream']['cpu_ms_per_sample']:.2f} lower, "
        f"streaming + fast_images x{base / speed['fast']['cpu_ms_per_sample']:.2f} lower"
    )
    ratio = speed["jpeg-fast"]["cpu_ms_per_sample"] / speed["jpeg-device"]["cpu_ms_per_sample"]
    print(
        f"JPEG shards: worker CPU per sample with decode on the device x{ratio:.1f} "
        f"lower; the device's share (decode, crop, resize, normalise; batches of 256) is "
        f"{finish['ms_per_sample']:.3f} ms per sample on {finish['device']}"
    )


if __name__ == "__main__":
    main()
