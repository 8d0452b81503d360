"""Token caching: the ids written into the shards equal the tokenizer's on the same crop, shards keep
every member, interrupted or repeated runs are safe, and the data pipeline reads the ids back."""

import json
import os
import tarfile

import pytest
import torch

from mmkit.data import ImageTransform, ImageTransformConfig, TarShards
from mmkit.data.loader import SampleDataset
from mmkit.data.sources import decode_image
from mmkit.data.token_cache import main as cache_main
from mmkit.tokenizers import DalleDecoder, DalleEncoder, DiscreteVAE, ImageTokenizer, save_dvae, tokenizer_fingerprint
from tests.data.conftest import shards  # noqa: F401 (fixture)

SIZES = dict(hidden_size=8, vocab_size=40, num_groups=3, blocks_per_group=1)


@pytest.fixture
def dvae_dir(tmp_path):
    torch.manual_seed(0)
    return save_dvae(DiscreteVAE(DalleEncoder(**SIZES), DalleDecoder(**SIZES, init_size=8)), tmp_path / "tok", 16)


def test_cache_writes_the_tokenizer_ids_beside_each_sample(shards, dvae_dir, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cached"
    cache_main(["--shards", *map(str, shards), "--tokenizer", str(dvae_dir), "--out", str(out), "--batch-size", "4"])
    assert "unreadable" in capsys.readouterr().out
    for src in shards:
        with tarfile.open(src) as a, tarfile.open(out / src.name) as b:
            old = [m.name for m in a]
            new = [m.name for m in b]
        assert new[0] == "__tokenizer__.json"
        assert [n for n in new[1:] if not n.endswith(".tokens.npy")] == old  # every member, in order
    encoder = DalleEncoder(**SIZES)
    from safetensors.torch import load_file

    encoder.load_state_dict(load_file(dvae_dir / "encoder.safetensors"))
    tok = ImageTokenizer(encoder)
    src, cached = TarShards(shards[0]), TarShards(out / shards[0].name)
    info = cached.token_info
    assert info == {
        "fingerprint": tokenizer_fingerprint(encoder),
        "image_size": 16,
        "grid": [4, 4],
        "vocab_size": 40,
        "crop": "center",
    }
    # the oracle: the tokenizer on the centre crop's tokenizer input, computed here
    transform = ImageTransform(ImageTransformConfig(image_size=32, codebook_image_size=16))
    ds = SampleDataset(cached, "image", ImageTransform(ImageTransformConfig(32, 0)), image_tokens=True)
    for i in range(len(src)):
        expected = tok(transform(decode_image(src[i]))["codebook_image"][None])[0]
        assert torch.equal(ds[i]["image_tokens"], expected)
    # shard 1 has a truncated PNG: no ids for it, so that shard set is not fully cached
    assert TarShards(out / shards[1].name, require_text=False).token_info is None
    # a second run finds the complete shards and writes nothing
    before = (out / shards[0].name).stat().st_mtime_ns
    cache_main(["--shards", str(shards[0]), "--tokenizer", str(dvae_dir), "--out", str(out)])
    assert (out / shards[0].name).stat().st_mtime_ns == before
    assert not list(out.glob("*.tmp"))


def test_cache_refuses_to_overwrite_its_inputs(shards, dvae_dir):  # noqa: F811
    with pytest.raises(ValueError, match="holds input shards"):
        cache_main(["--shards", str(shards[0]), "--tokenizer", str(dvae_dir), "--out", str(shards[0].parent)])
    with pytest.raises(ValueError, match="not a multiple of the downsampling"):
        cache_main(["--shards", str(shards[0]), "--tokenizer", str(dvae_dir), "--out", "x", "--image-size", "18"])


def test_token_info_is_none_unless_every_shard_agrees(shards, dvae_dir, tmp_path):  # noqa: F811
    out = tmp_path / "cached"
    cache_main(["--shards", str(shards[0]), "--tokenizer", str(dvae_dir), "--out", str(out)])
    mixed = TarShards([out / shards[0].name, shards[0]])  # one cached shard, one not
    assert mixed.token_info is None
    meta = json.loads(tarfile.open(out / shards[0].name).extractfile("__tokenizer__.json").read())
    assert meta["fingerprint"] == json.loads((dvae_dir / "dvae_config.json").read_text())["fingerprint"]


def test_a_changed_input_shard_is_cached_again(shards, dvae_dir, tmp_path):  # noqa: F811
    from tests.data.conftest import add, png_bytes

    out = tmp_path / "cached"
    args = ["--shards", str(shards[0]), "--tokenizer", str(dvae_dir), "--out", str(out)]
    cache_main(args)
    assert len(TarShards(out / shards[0].name)) == 6
    before = (out / shards[0].name).stat().st_mtime_ns
    cache_main(args)  # unchanged input: kept
    assert (out / shards[0].name).stat().st_mtime_ns == before
    with tarfile.open(shards[0], "w") as tar:  # the input is rewritten with other samples
        for i in range(3):
            data, caption = png_bytes(500 + i)
            add(tar, f"new{i}.png", data)
            add(tar, f"new{i}.txt", caption.encode())
    cache_main(args)
    cached = TarShards(out / shards[0].name)
    assert sorted(cached[i].key for i in range(len(cached))) == [f"{shards[0].name}:new{i}" for i in range(3)]
    assert cached.token_info is not None
    # a rewrite of the same size (another mtime) and another input shard of the same name are noticed too
    data = bytearray(shards[0].read_bytes())
    shards[0].write_bytes(bytes(data))
    os.utime(shards[0], ns=(0, 10**9))
    before = (out / shards[0].name).stat().st_mtime_ns
    cache_main(args)
    assert (out / shards[0].name).stat().st_mtime_ns != before
    other = tmp_path / "elsewhere" / shards[0].name
    other.parent.mkdir()
    other.write_bytes(shards[1].read_bytes())
    cache_main(["--shards", str(other), "--tokenizer", str(dvae_dir), "--out", str(out)])
    assert len(TarShards(out / shards[0].name, require_text=False)) == len(TarShards(shards[1], require_text=False))
