"""One tar reader rule for index and streaming modes: the same odd shards give the same samples and the
same skipped records whichever way they are read."""

import tarfile

from mmkit.data import TarShards
from mmkit.data.streaming import iter_samples
from tests.data.conftest import add, png_bytes


def _odd_shard(path):
    """Members out of order (a, b split), a sample without caption (c), a key that comes back (d)."""
    png = {k: png_bytes(i)[0] for i, k in enumerate("abcde")}
    with tarfile.open(path, "w") as tar:
        for name in ("a.png", "b.png", "a.txt", "b.txt", "c.png", "d.png", "d.txt", "e.png", "e.txt", "d.png", "d.txt"):
            key, ext = name.split(".")
            add(tar, name, png[key] if ext == "png" else f"caption {key}".encode())
    return path


def _view(records):
    """Each sample's key and why it is skipped, or its image and caption bytes when it is usable."""
    return [
        (r.key, r.meta["error"]) if r.meta.get("error") else (r.key, r.image, r.meta.get("text_bytes")) for r in records
    ]


def test_index_and_stream_read_the_same_samples_and_skips(tmp_path):
    path = _odd_shard(tmp_path / "odd-0000.tar")
    indexed = TarShards([path])
    with open(path, "rb") as f:
        streamed = [record for _, record in iter_samples(f, path.name)]
    assert _view(indexed[i] for i in range(len(indexed))) == _view(streamed)
    keys = [r.key.split(":")[1] for r in streamed]
    assert keys == ["a", "b", "a", "b", "c", "d", "e", "d"]  # a sample is a run of consecutive members
    errors = [r.meta.get("error") for r in streamed]
    assert errors[:5] == ["no caption member (.txt or .json)"] * 2 + ["no image member (has .txt)"] * 2 + [
        "no caption member (.txt or .json)"
    ]
    assert errors[5:] == [None, None, None]
    assert len(indexed.incomplete) == 5  # named, and each read as a skipped record


def test_a_shard_with_nothing_usable_is_an_error(tmp_path):
    import pytest

    path = tmp_path / "bad-0000.tar"
    with tarfile.open(path, "w") as tar:
        add(tar, "a.txt", b"no image")
    with pytest.raises(ValueError, match="is empty: nothing usable"):
        TarShards([path])
