"""``python -m mmkit.embed``: the embeddings of a source, sharded with their keys, equal to the model's own;
a killed run continues after its last complete shard; another checkpoint in the same folder is refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmkit.embed import main, read_embeddings
from tests.conftest import make_mmkit_export


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    from mmkit.data import shapes_dataset

    root = tmp_path_factory.mktemp("embed")
    data = shapes_dataset(root / "data", num_train=8, num_val=10, num_images=4, num_text=8, per_shard=5)
    export = make_mmkit_export(root / "export", [line for line in data.text[0].read_text().splitlines()])
    return data, export


def _run(out, data, export, *extra):
    shards = str(data.val_pairs[0]).replace("-0000.tar", "-{0000..0001}.tar")
    return main(
        [
            "--checkpoint",
            str(export),
            "--source",
            shards,
            "--out",
            str(out),
            "--shard-size",
            "4",
            "--batch-size",
            "3",
            "--num-workers",
            "0",
            *extra,
        ]
    )


def test_embeddings_equal_the_models_and_resume_after_the_last_complete_shard(pairs, tmp_path):
    from mmkit.data import TarShards
    from mmkit.data.sources import decode_image, decode_text
    from mmkit.eval.loading import eval_transform, load_encoders

    data, export = pairs
    out = tmp_path / "emb"
    assert _run(out, data, export) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["kind"] == "both" and meta["samples"] == 10 and meta["shards"] == 3
    keys, image = read_embeddings(out, "image")
    _, text = read_embeddings(out, "text")
    assert len(keys) == 10 and image.shape == text.shape == (10, 32)
    # the same numbers as the model computes directly
    model, tok = load_encoders(str(export), log=lambda m: None)
    transform, _ = eval_transform(model, str(export))
    src = TarShards(data.val_pairs)
    rec = src[7]
    assert keys[7].endswith(rec.key.split(":")[-1])
    with torch.no_grad():
        px = transform(decode_image(rec))["image"][None]
        want_img = torch.nn.functional.normalize(model.embed_image(model.encode_image(px)), dim=-1)[0]
        ids = torch.as_tensor(tok.encode(decode_text(rec)).input_ids)[None]
        want_txt = torch.nn.functional.normalize(model.embed_text(model.encode_text(ids)), dim=-1)[0]
    np.testing.assert_allclose(image[7], want_img.numpy(), atol=1e-5)
    np.testing.assert_allclose(text[7], want_txt.numpy(), atol=1e-5)
    # a run killed after its first shard: the rerun writes shards 1 and 2 only, with the same rows
    for name in ("keys-00001.txt", "keys-00002.txt", "image-00001.npy", "image-00002.npy"):
        (out / name).unlink()
    first = (out / "keys-00000.txt").stat().st_mtime_ns
    assert _run(out, data, export) == 0
    assert (out / "keys-00000.txt").stat().st_mtime_ns == first
    keys2, image2 = read_embeddings(out, "image")
    assert keys2 == keys and np.allclose(image2, image, atol=1e-6)  # other batches: last-bit differences


def test_another_checkpoint_in_the_same_folder_is_refused(pairs, tmp_path, capsys):
    data, export = pairs
    out = tmp_path / "emb"
    assert _run(out, data, export, "--kind", "image") == 0
    other = make_mmkit_export(tmp_path / "other", ["a red circle"], seed=1)
    assert _run(out, data, other, "--kind", "image") == 2
    err = capsys.readouterr().err
    assert "error:" in err and "holds embeddings of another run" in err and "model_digest" in err


def test_a_folder_another_embed_is_writing_is_refused_naming_it(pairs, tmp_path, capsys):
    import os

    from mmkit.train import RunDirLock

    data, export = pairs
    out = tmp_path / "emb"
    hold = RunDirLock.acquire(out)  # another copy of the command, still running
    try:
        assert _run(out, data, export, "--kind", "image") == 2
    finally:
        hold.release()
    err = capsys.readouterr().err
    assert f"error: run directory {out} is in use by pid {os.getpid()} on host" in err
    assert not list(out.glob("keys-*.txt"))  # nothing written beside the holder
    assert _run(out, data, export, "--kind", "image") == 0  # free again once it is released
