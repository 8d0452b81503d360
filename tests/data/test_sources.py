import io
import json

import pytest
import torch

from mmkit.data import ImageFolder, Manifest, SampleDataset, Skipped, TarShards, TextLines, expand_paths
from mmkit.data.sources import Record, decode_image, decode_text
from tests.data.conftest import png_bytes


def _resolve(dataset):
    return [dataset[(0, 0, i)] for i in range(len(dataset))]


def test_tar_shards_brace_patterns_and_bad_records(shards, tokenizer):
    pattern = str(shards[0].parent / "pairs-{000..001}.tar")
    assert expand_paths(pattern) == shards
    assert expand_paths(str(shards[0].parent / "pairs-*.tar")) == shards  # an absolute glob
    src = TarShards(pattern)
    assert len(src) == 12 and src.incomplete == ["pairs-001.tar:1004"]  # kept in place, read as skipped
    out = _resolve(SampleDataset(src, "pair", tokenizer=tokenizer))
    skipped = {s.key: s.reason for s in out if isinstance(s, Skipped)}
    assert set(skipped) == {"pairs-001.tar:1000", "pairs-001.tar:1001", "pairs-001.tar:1002", "pairs-001.tar:1004"}
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
    json_sample = src[[src.sample_key(i) for i in range(len(src))].index("1003")]
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
    out = _resolve(SampleDataset(src, "pair", tokenizer=tokenizer))
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
    out = _resolve(SampleDataset(src, "image"))
    labels = [int(s["label"]) for s in out if not isinstance(s, Skipped)]
    assert sorted(labels) == [0, 0, 1, 1]
    assert [s.key for s in out if isinstance(s, Skipped)] == ["dogs/broken.jpg"]


def test_text_lines_plain_and_jsonl(tmp_path, tokenizer):
    plain = tmp_path / "a.txt"
    plain.write_bytes(b"two red circles\n\nbad \xff line\na blue square\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text('{"text": "three green triangles"}\n{"other": 1}\n')
    src = TextLines([plain, jsonl])
    out = _resolve(SampleDataset(src, "text", tokenizer=tokenizer))
    assert len(out) == 5
    reasons = [s.reason for s in out if isinstance(s, Skipped)]
    assert len(reasons) == 2 and "not UTF-8" in reasons[0] and "no 'text' field" in reasons[1]
    good = [s for s in out if not isinstance(s, Skipped)]
    assert tokenizer.decode(good[0]["input_ids"].tolist()) == "two red circles"


def test_random_crop_is_deterministic_per_sample(shards):
    from mmkit.data import ImageTransform, ImageTransformConfig

    src = TarShards(shards[0])
    transform = ImageTransform(
        ImageTransformConfig(image_size=32, codebook_image_size=32, random_crop=True, scale=(0.3, 0.6))
    )
    ds = SampleDataset(src, "image", image_transform=transform, seed=3)
    a, b, c = ds[(0, 0, 2)], ds[(0, 5, 2)], ds[(1, 0, 2)]
    assert torch.equal(a["image"], b["image"])  # same epoch and index: same crop
    assert not torch.equal(a["image"], c["image"])  # next epoch: another crop
    image = decode_image(src[2])
    assert image.size == (64, 64)


def _png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_16_bit_grayscale_is_scaled_to_8_bits():
    import numpy as np
    from PIL import Image

    values = np.arange(16, dtype=np.uint16).reshape(1, 16) * 4369  # 0, 4369, ... 65535
    data = _png(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    rgb = np.asarray(decode_image(Record(key="g16", image=data)))
    expected = [v >> 8 for v in values[0].tolist()]  # 0, 17, 34, ... 255
    assert rgb.shape == (1, 16, 3) and rgb.dtype == np.uint8
    for c in range(3):
        assert rgb[0, :, c].tolist() == expected


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(mode):
    import numpy as np
    from PIL import Image

    colour = (255, 0, 0) if mode != "LA" else (80, 80, 80)
    alphas = (0, 255, 128)
    if mode == "P":  # a palette with a transparent entry 0 (red) and an opaque entry 1 (red)
        image = Image.new("P", (2, 1))
        image.putpalette([*colour, *colour] + [0] * 762)
        image.putpixel((0, 0), 0)
        image.putpixel((1, 0), 1)
        image.info["transparency"] = bytes([0, 255])
        alphas = (0, 255)
    else:
        image = Image.new("RGBA", (len(alphas), 1))
        for x, a in enumerate(alphas):
            image.putpixel((x, 0), (*colour, a))
        image = image.convert(mode)
    rgb = np.asarray(decode_image(Record(key="t", image=_png(image)))).astype(int)
    for x, a in enumerate(alphas):
        blend = [(c * a + 255 * (255 - a)) / 255 for c in colour]  # over white
        assert np.abs(rgb[0, x] - blend).max() <= 1, (mode, a, rgb[0, x].tolist(), blend)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # fully transparent: white, not the hidden colour


def test_decompression_bombs_are_refused_before_decoding(monkeypatch):
    from PIL import Image, ImageFile

    from mmkit.data import decoding, sources

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    small = _png(Image.new("1", (2000, 1000)))  # 2 megapixels in a few hundred bytes
    assert len(small) < 2000
    big = _png(Image.new("1", (10000, 10000)))  # 100 megapixels: over PIL's warning limit, under its error limit
    huge = _png(Image.new("1", (20000, 20000)))  # over PIL's own error limit
    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ValueError, match=r"2000x1000 .*2,000,000 pixels.*limit of 1,000,000"):
        decode_image(Record(key="b", image=small), max_pixels=1_000_000)
    assert sources.MAX_IMAGE_PIXELS == Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"10000x10000 .*limit of 89,478,485"):
        decode_image(Record(key="b", image=big))
    with pytest.raises(ValueError, match=r"400000000 pixels.*the limit here is 89,478,485"):
        decode_image(Record(key="b", image=huge))
    monkeypatch.setattr(decoding, "MAX_IMAGE_PIXELS", 1_000_000)  # the module default is read at each call
    with pytest.raises(ValueError, match=r"limit of 1,000,000"):
        decode_image(Record(key="b", image=small))
    monkeypatch.undo()
    assert decode_image(Record(key="b", image=small), max_pixels=2_000_000).size == (2000, 1000)


def test_bomb_is_a_skipped_record_in_the_dataset(tmp_path, monkeypatch):
    from PIL import Image

    from mmkit.data import decoding

    (tmp_path / "ok.png").write_bytes(png_bytes(0)[0])
    (tmp_path / "bomb.png").write_bytes(_png(Image.new("1", (3000, 3000))))
    monkeypatch.setattr(decoding, "MAX_IMAGE_PIXELS", 1_000_000)
    out = _resolve(SampleDataset(ImageFolder(tmp_path), "image"))
    skipped = [s for s in out if isinstance(s, Skipped)]
    assert len(skipped) == 1 and skipped[0].key == "bomb.png" and "3000x3000" in skipped[0].reason


@pytest.mark.parametrize(
    ("value", "problem"),
    [(None, "is null"), (3, "int"), (2.5, "float"), (True, "bool"), (["a", "b"], "list"), ({"en": "a"}, "dict")],
)
def test_json_captions_must_be_strings(value, problem):
    raw = json.dumps({"caption": value}).encode()
    record = Record(key="k", meta={"text_bytes": raw, "text_format": ".json", "caption_field": "caption"})
    expected = "is null" if value is None else rf"is not a string \(got {problem}\)"
    with pytest.raises(ValueError, match=rf"caption field 'caption' {expected}"):
        decode_text(record)


def test_jsonl_manifest_captions_must_be_strings(tmp_path):
    (tmp_path / "a.png").write_bytes(png_bytes(0)[0])
    manifest = tmp_path / "m.jsonl"
    rows = [{"image": "a.png", "caption": c} for c in (None, 3, "two circles")] + [{"image": "a.png"}]
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    src = Manifest(manifest)
    with pytest.raises(ValueError, match="caption field 'caption' is null"):
        decode_text(src[0])
    with pytest.raises(ValueError, match=r"caption field 'caption' is not a string \(got int\)"):
        decode_text(src[1])
    assert decode_text(src[2]) == "two circles"
    with pytest.raises(ValueError, match="the row has no 'caption' value"):
        decode_text(src[3])
    short = tmp_path / "m.csv"
    short.write_text("image,caption\na.png\na.png,3\n")
    csv_src = Manifest(short)
    with pytest.raises(ValueError, match="the row has no 'caption' value"):
        decode_text(csv_src[0])
    assert decode_text(csv_src[1]) == "3"  # a CSV cell is text


def test_tables_with_a_bom_and_tables_that_are_not_utf8(tmp_path):
    from mmkit.data.sources import read_table

    csv_bom = tmp_path / "bom.csv"
    csv_bom.write_bytes("image,caption\r\na.png,caf\u00e9\r\n".encode("utf-8-sig"))
    assert read_table(csv_bom, required=("image",)) == [{"image": "a.png", "caption": "caf\u00e9"}]
    jsonl_bom = tmp_path / "bom.jsonl"
    jsonl_bom.write_bytes('{"image": "a.png", "caption": "x\u2028y"}\n'.encode("utf-8-sig"))
    assert read_table(jsonl_bom) == [{"image": "a.png", "caption": "x\u2028y"}]
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,caption\na.png,fine\nb.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv:3 is not UTF-8 .*byte"):
        read_table(latin)
    latin_jsonl = tmp_path / "latin.jsonl"
    latin_jsonl.write_bytes('{"image": "a.png"}\n\n{"image": "caf\u00e9.png"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.jsonl:3 is not UTF-8"):
        Manifest(latin_jsonl)


def test_image_folder_follows_symlinked_class_folders(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere" / "dogs-data"
    (root / "cats").mkdir(parents=True)
    elsewhere.mkdir(parents=True)
    (root / "cats" / "0.png").write_bytes(png_bytes(0)[0])
    for i in range(2):
        (elsewhere / f"{i}.png").write_bytes(png_bytes(i)[0])
    (root / "dogs").symlink_to(elsewhere, target_is_directory=True)
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)  # a symlink loop: not followed
    (elsewhere / "up").symlink_to(root, target_is_directory=True)  # a loop through the root
    src = ImageFolder(root, labels=True)
    assert src.classes == ["cats", "dogs"]
    assert [src[i].key for i in range(len(src))] == ["cats/0.png", "dogs/0.png", "dogs/1.png"]
    assert [src[i].label for i in range(len(src))] == [0, 1, 1]


def _truncated_copy(path, tmp_path, fraction=0.5):
    data = path.read_bytes()
    out = tmp_path / f"cut-{path.name}"
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def test_truncated_tar_shards_index_what_is_readable(tmp_path, shards, caplog):
    full = TarShards(shards[0])
    assert len(full) == 6 and full.truncated == []
    cut = _truncated_copy(shards[0], tmp_path)
    with caplog.at_level("WARNING", logger="mmkit.data.sources"):
        src = TarShards([cut, shards[1]])
    kept = [src.sample_key(i) for i in range(len(src)) if src.shard_of(i) == 0]
    assert 0 < len(kept) < 6 and src.truncated == [(cut.name, len(kept))]
    assert f"{cut.name} is truncated" in caplog.text
    for i in range(len(kept)):  # every indexed sample of the cut shard is whole
        assert decode_image(src[i]).size == (64, 64) and decode_text(src[i])
    # cut inside a header, in the last member's padding, and where the end-of-archive blocks should start
    import tarfile

    with tarfile.open(shards[0]) as tar:
        members = tar.getmembers()
    last = members[-1]
    cuts = {
        members[4].offset + 100: 2,
        last.offset_data + last.size: 6,
        last.offset_data + 512 * -(-last.size // 512): 6,
    }
    data = shards[0].read_bytes()
    for n, (size, samples) in enumerate(cuts.items()):
        p = tmp_path / f"cut{n}.tar"
        p.write_bytes(data[:size])
        assert TarShards(p).truncated == [(p.name, samples)], size
    tiny = tmp_path / "tiny.tar"  # nothing readable at all: the clear error
    tiny.write_bytes(data[:700])
    with pytest.raises(ValueError, match="tiny.tar"):
        TarShards(tiny)


def test_the_tar_index_is_flat_arrays_not_objects_per_sample(shards):
    """Index mode keeps integers in arrays (and the keys in one byte string): a few dozen bytes per
    sample, where a tuple of tuples per sample cost ~430 bytes in every process."""
    src = TarShards(shards)
    ix = src._index
    per_sample = (
        ix.shard.nbytes + ix.image.base.nbytes + ix.text_ext.nbytes + len(ix.keys) + ix.key_ends.nbytes
    ) / len(src)
    assert per_sample < 100, per_sample
    assert [src.sample_key(i) for i in range(3)] == ["0000", "0001", "0002"] and src.shard_of(len(src) - 1) == 1
    assert src[-1].key == src[len(src) - 1].key
    with pytest.raises(IndexError):
        src[len(src)]


def test_samples_lost_to_a_truncated_shard_count_against_max_bad_fraction(tmp_path, shards):
    """Index mode: the samples a truncated shard lost (from a sizes file beside it, else at least one)
    are skipped records of their source from the start, so ``max_bad_fraction`` bounds them."""
    import json

    from mmkit.data import (
        DataQualityError,
        ImageTransform,
        ImageTransformConfig,
        LoaderOptions,
        MixedBatches,
        SampleDataset,
        make_loader,
    )

    cut = _truncated_copy(shards[0], tmp_path)
    (tmp_path / "sizes.json").write_text(json.dumps({cut.name: 6}))
    src = TarShards(cut, require_text=False)
    assert src.lost == 6 - len(src) > 0
    (tmp_path / "sizes.json").unlink()
    assert TarShards(cut, require_text=False).lost == 1  # unknown size: at least one

    def build(max_bad):
        ds = SampleDataset(TarShards(cut, require_text=False), "image", ImageTransform(ImageTransformConfig(8, 0)))
        loader = make_loader(ds, lambda samples, generator=None: list(samples), LoaderOptions(1))
        return MixedBatches({"images": (loader, 1.0)}, max_bad_fraction=max_bad, min_samples=1)

    mixed = build(0.9)
    assert mixed.skipped["images"] == 1 and "lost in truncated shards" in mixed.examples["images"][0]
    next(mixed)
    with pytest.raises(DataQualityError, match="images"):
        next(build(0.1))
