"""Small data the tests make themselves: tar shards (with broken records), manifests, folders, text."""

import io
import json
import random
import tarfile

import pytest

from mmkit.data.builtin import make_example
from mmkit.tokenizers import train_wordpiece


def png_bytes(seed: int) -> tuple[bytes, str]:
    image, caption = make_example(random.Random(seed))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue(), caption


def add(tar, name, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def shards(tmp_path):
    """Two shards of 6 samples each; shard 1 holds a corrupt image, an empty caption, a non-UTF-8
    caption, a JSON caption and a sample without caption."""
    paths = []
    for s in range(2):
        path = tmp_path / f"pairs-{s:03d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(6):
                key = f"{s}{i:03d}"
                data, caption = png_bytes(100 * s + i)
                if s == 1 and i == 0:
                    data = data[: len(data) // 3]  # truncated PNG
                add(tar, f"{key}.png", data)
                if s == 1 and i == 1:
                    add(tar, f"{key}.txt", b"   ")
                elif s == 1 and i == 2:
                    add(tar, f"{key}.txt", b"caf\xe9 \xff")
                elif s == 1 and i == 3:
                    add(tar, f"{key}.json", json.dumps({"caption": caption, "url": "x"}).encode())
                elif s == 1 and i == 4:
                    pass  # no caption at all: an incomplete sample
                else:
                    add(tar, f"{key}.txt", caption.encode())
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "corpus.txt"
    rng = random.Random(0)
    path.write_text("\n".join(make_example(rng)[1] for _ in range(300)) + "\nan unusual caf\u00e9\n")
    return train_wordpiece([path], vocab_size=200, min_frequency=1, max_length=24)
