"""The shard formats' rules, which the token-cache CLI (writer) and TarShards (reader) share."""

import io
import json
import tarfile

import torch

from mmkit.data import TarShards
from mmkit.data.formats import (
    TOKENIZER_META,
    TOKENS_EXT,
    image_member,
    read_token_ids,
    split_member_name,
    token_cache_meta,
    token_ids_to_bytes,
)


def test_member_names_split_at_the_first_dot_of_the_file_name():
    assert split_member_name("abc.jpg") == ("abc", ".jpg")
    assert split_member_name("abc.Tokens.NPY") == ("abc", TOKENS_EXT)
    assert split_member_name("train/v1.2/abc.txt") == ("train/v1.2/abc", ".txt")  # dots in folders are kept
    assert split_member_name("README") == ("README", "")


def test_the_image_is_the_first_image_extension_present():
    assert image_member({".txt": "t", ".png": "p", ".jpg": "j"}) == "j"
    assert image_member({".txt": "t", ".tokens.npy": "n"}) is None


def test_token_ids_round_trip_in_the_smallest_dtype():
    ids = torch.tensor([[0, 5], [8191, 3]])
    data = token_ids_to_bytes(ids)
    assert torch.equal(read_token_ids(data), ids.flatten()) and read_token_ids(data).dtype == torch.int64
    assert b"<i2" in data  # int16 when the ids fit
    big = torch.tensor([[0, 40000]])
    assert torch.equal(read_token_ids(token_ids_to_bytes(big)), big.flatten())


def _add(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_tar_shards_read_what_the_format_writes(tmp_path):
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, format="PNG")
    meta = token_cache_meta("0123456789abcdef", 16, 2, 40)
    assert meta == {
        "fingerprint": "0123456789abcdef",
        "image_size": 16,
        "grid": [2, 2],
        "vocab_size": 40,
        "crop": "center",
    }
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        _add(tar, TOKENIZER_META, json.dumps(meta).encode())
        for key in ("a", "b"):
            _add(tar, f"{key}.png", png.getvalue())
            _add(tar, f"{key}.txt", b"a caption")
            _add(tar, key + TOKENS_EXT, token_ids_to_bytes(torch.tensor([[1, 2], [3, 4]])))
    source = TarShards(path)
    assert len(source) == 2 and source.token_info == meta
    assert torch.equal(read_token_ids(source[1].meta["tokens_bytes"]), torch.tensor([1, 2, 3, 4]))
