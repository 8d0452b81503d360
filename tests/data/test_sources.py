import json

import pytest
import torch

from mmkit.data import FLAVADataset, ImageFolder, Manifest, Skipped, TarShards, TextLines, expand_paths
from mmkit.data.sources import decode_image, decode_text
from tests.data.conftest import png_bytes


def _resolve(dataset):
    return [dataset[(0, 0, i)] for i in range(len(dataset))]


def test_tar_shards_brace_patterns_and_bad_records(shards, tokenizer):
    pattern = str(shards[0].parent / "pairs-{000..001}.tar")
    assert expand_paths(pattern) == shards
    assert expand_paths(str(shards[0].parent / "pairs-*.tar")) == shards  # an absolute glob
    src = TarShards(pattern)
    assert len(src) == 11 and src.incomplete == ["pairs-001.tar:1004"]
    out = _resolve(FLAVADataset(src, "pair", tokenizer=tokenizer))
    skipped = {s.key: s.reason for s in out if isinstance(s, Skipped)}
    assert set(skipped) == {"pairs-001.tar:1000", "pairs-001.tar:1001", "pairs-001.tar:1002"}
    assert "cannot decode image" in skipped["pairs-001.tar:1000"]
    assert skipped["pairs-001.tar:1001"] == "empty text"
    assert "not UTF-8" in skipped["pairs-001.tar:1002"]
    good = [s for s in out if not isinstance(s, Skipped)]
    assert len(good) == 8
    s = good[0]
    assert s["image"].shape == (3, 224, 224) and s["codebook_image"].shape == (3, 112, 112)
    assert 0.1 - 1e-6 <= s["codebook_image"].min() and s["codebook_image"].max() <= 0.9 + 1e-6
    assert s["input_ids"][0] == tokenizer.token_id("[CLS]") and s["input_ids"][-1] == tokenizer.token_id("[SEP]")
    # the JSON caption was read from its field
    json_sample = src[[r[1] for r in src._index].index("1003")]
    assert decode_text(json_sample) == png_bytes(103)[1]


def test_missing_paths_and_empty_sources_fail_at_start(tmp_path, shards):
    with pytest.raises(FileNotFoundError, match="missing data path.*nope-000.tar"):
        TarShards(str(tmp_path / "nope-{000..001}.tar"))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="data source 'text' is empty"):
        TextLines(empty)
    (tmp_path / "junk.tar").write_bytes(b"not a tar at all" * 100)
    with pytest.raises(ValueError, match="junk.tar is not a readable tar shard"):
        TarShards(tmp_path / "junk.tar")


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_manifest(tmp_path, tokenizer, fmt):
    rows = []
    for i in range(4):
        data, caption = png_bytes(i)
        (tmp_path / f"img{i}.png").write_bytes(data)
        rows.append({"path": f"img{i}.png", "text": caption})
    rows.append({"path": "missing.png", "text": "a red circle"})
    if fmt == "jsonl":
        manifest = tmp_path / "m.jsonl"
        manifest.write_text("\n".join(json.dumps(r) for r in rows))
    else:
        manifest = tmp_path / "m.csv"
        manifest.write_text("path,text\n" + "".join(f"{r['path']},{r['text']}\n" for r in rows))
    src = Manifest(manifest, image_column="path", caption_column="text")
    out = _resolve(FLAVADataset(src, "pair", tokenizer=tokenizer))
    assert [isinstance(s, Skipped) for s in out] == [False] * 4 + [True]
    assert "cannot read image" in out[4].reason and out[4].key == "missing.png"
    with pytest.raises(KeyError, match="has no column 'caption'"):
        Manifest(manifest, image_column="path")


def test_image_folder_with_classes(tmp_path):
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            (tmp_path / cls / f"{i}.png").write_bytes(png_bytes(i)[0])
    (tmp_path / "dogs" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    src = ImageFolder(tmp_path, labels=True)
    assert src.classes == ["cats", "dogs"] and len(src) == 5
    out = _resolve(FLAVADataset(src, "image"))
    labels = [int(s["label"]) for s in out if not isinstance(s, Skipped)]
    assert sorted(labels) == [0, 0, 1, 1]
    assert [s.key for s in out if isinstance(s, Skipped)] == ["dogs/broken.jpg"]


def test_text_lines_plain_and_jsonl(tmp_path, tokenizer):
    plain = tmp_path / "a.txt"
    plain.write_bytes(b"two red circles\n\nbad \xff line\na blue square\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "three green triangles"}\n{"other": 1}\n')
    src = TextLines([plain, jsonl])
    out = _resolve(FLAVADataset(src, "text", tokenizer=tokenizer))
    assert len(out) == 5
    reasons = [s.reason for s in out if isinstance(s, Skipped)]
    assert len(reasons) == 2 and "not UTF-8" in reasons[0] and "no 'text' field" in reasons[1]
    good = [s for s in out if not isinstance(s, Skipped)]
    assert tokenizer.decode(good[0]["input_ids"].tolist()) == "two red circles"


def test_random_crop_is_deterministic_per_sample(shards):
    from mmkit.data import FLAVAImageTransform, ImageTransformConfig

    src = TarShards(shards[0])
    transform = FLAVAImageTransform(ImageTransformConfig(image_size=32, codebook_image_size=32, random_crop=True,
                                                         scale=(0.3, 0.6)))  # fmt: skip
    ds = FLAVADataset(src, "image", image_transform=transform, seed=3)
    a, b, c = ds[(0, 0, 2)], ds[(0, 5, 2)], ds[(1, 0, 2)]
    assert torch.equal(a["image"], b["image"])  # same epoch and index: same crop
    assert not torch.equal(a["image"], c["image"])  # next epoch: another crop
    image = decode_image(src[2])
    assert image.size == (64, 64)
