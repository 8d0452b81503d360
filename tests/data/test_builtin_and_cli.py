import hashlib
import json
import random

import torch
from torchvision.transforms.functional import pil_to_tensor

from mmkit.data import SampleDataset, TarShards, TextLines, shapes_dataset
from mmkit.data.builtin import COLORS, make_example
from mmkit.data.sources import decode_image, decode_text
from mmkit.data.write_shards import main as write_main
from tests.data.conftest import png_bytes


def _digest(paths):
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()


def test_generation_is_deterministic_and_complete(tmp_path):
    kw = dict(num_train=30, num_val=10, num_images=12, num_text=20, per_shard=16)
    a = shapes_dataset(tmp_path / "a", **kw)
    b = shapes_dataset(tmp_path / "b", **kw)
    assert [p.name for p in a.train_pairs] == ["train-pairs-0000.tar", "train-pairs-0001.tar"]
    for part in ("train_pairs", "val_pairs", "images", "text"):
        assert _digest(getattr(a, part)) == _digest(getattr(b, part)), part
    assert len(TarShards(a.train_pairs)) == 30 and len(TarShards(a.val_pairs)) == 10
    assert len(TarShards(a.images, require_text=False)) == 12 and len(TextLines(a.text)) == 20
    # train and held-out splits do not repeat each other
    train = {decode_text(r) for r in map(TarShards(a.train_pairs).__getitem__, range(30))}
    val = [decode_text(r) for r in map(TarShards(a.val_pairs).__getitem__, range(10))]
    assert sum(v in train for v in val) < 5
    # a second call reuses the files
    mtime = a.train_pairs[0].stat().st_mtime_ns
    assert shapes_dataset(tmp_path / "a", **kw).train_pairs[0].stat().st_mtime_ns == mtime


def test_ranks_generating_at_once_get_one_complete_dataset(tmp_path):
    """Every rank of a run calls ``shapes_dataset()`` at start: they used to write the same temp file
    and crash (FileNotFoundError on the rename). Four processes at once must all see the same files."""
    import multiprocessing

    kw = dict(num_train=300, num_val=10, num_images=12, num_text=20, per_shard=64)
    mp = multiprocessing.get_context("spawn")
    start, results = mp.Barrier(4), mp.Queue()
    procs = [mp.Process(target=_generate, args=(tmp_path / "d", kw, start, results)) for _ in range(4)]
    for p in procs:
        p.start()
    listings = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert all(isinstance(x, list) for x in listings), listings  # no process failed
    assert len({tuple(x) for x in listings}) == 1
    ref = shapes_dataset(tmp_path / "ref", **kw)
    assert _digest(ref.train_pairs) == _digest(shapes_dataset(tmp_path / "d", **kw).train_pairs)
    assert not list((tmp_path / "d").glob("*.tmp"))


def _generate(root, kw, start, results):
    start.wait()  # all four call at the same moment
    try:
        results.put([str(p) for p in shapes_dataset(root, **kw).train_pairs])
    except Exception as e:  # reported to the test
        results.put(repr(e))


def test_captions_describe_the_pictures():
    """The colour words of a single-group caption are the colours in the picture."""
    rng = random.Random(3)
    checked = 0
    for _ in range(60):
        image, caption = make_example(rng)
        if " of " in caption or " above " in caption:
            continue
        color = next(c for c in COLORS if c in caption)
        pixels = pil_to_tensor(image).flatten(1).T.float()
        target = torch.tensor(COLORS[color], dtype=torch.float)
        close = ((pixels - target).abs().sum(1) < 30).sum().item()
        assert close > 20, caption
        others = [c for c in COLORS if c != color]
        for other in others:
            t = torch.tensor(COLORS[other], dtype=torch.float)
            assert ((pixels - t).abs().sum(1) < 30).sum().item() < 5, (caption, other)
        checked += 1
    assert checked > 15


def test_write_shards_from_manifest_and_inspect(tmp_path, capsys, tokenizer):
    rows = []
    for i in range(5):
        data, caption = png_bytes(i)
        (tmp_path / f"{i}.png").write_bytes(data)
        rows.append({"image": f"{i}.png", "caption": caption})
    (tmp_path / "bad.png").write_bytes(b"garbage")
    rows.append({"image": "bad.png", "caption": "broken"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    out = str(tmp_path / "out" / "pairs-{:03d}.tar")
    assert write_main(["--manifest", str(manifest), "--out", out, "--per-shard", "2"]) == 0
    captured = capsys.readouterr()
    assert "wrote 5 samples into 3 shard(s); left out 1" in captured.out and "bad.png" in captured.err
    src = TarShards(str(tmp_path / "out" / "pairs-{000..002}.tar"))
    assert len(src) == 5
    ds = SampleDataset(src, "pair", tokenizer=tokenizer)
    assert tokenizer.decode(ds[(0, 0, 0)]["input_ids"].tolist()) == rows[0]["caption"]
    assert decode_image(src[4]).size == (64, 64)
    assert write_main(["--inspect", str(tmp_path / "out" / "pairs-000.tar")]) == 0
    assert "2 samples, 0 incomplete" in capsys.readouterr().out


def test_write_shards_rejects_bad_shard_sizes_and_name_patterns(tmp_path, capsys):
    import pytest

    from mmkit.data import ImageFolder
    from mmkit.data.write_shards import write_shards

    (tmp_path / "images").mkdir()
    for i in range(3):
        (tmp_path / "images" / f"{i}.png").write_bytes(png_bytes(i)[0])
    folder = str(tmp_path / "images")
    out = str(tmp_path / "out" / "images-{:06d}.tar")
    for per_shard in ("0", "-5"):
        with pytest.raises(SystemExit) as e:
            write_main(["--folder", folder, "--out", out, "--per-shard", per_shard])
        assert e.value.code == 2 and f"--per-shard must be at least 1, got {per_shard}" in capsys.readouterr().err
    bad = {
        "images-{shard}.tar": "unknown field {shard}",
        "images-{1}.tar": "unknown field {1}",
        "images-{:s}.tar": "cannot format a shard number",
        "images-{{}}.tar": "needs a '{...}' field for the shard number",
        "images.tar": "needs a '{...}' field for the shard number",
        "images-{:06d}-{}.tar": "cannot format a shard number",
        "images-{.real}.tar": "unknown field {.real}",
        "images-{:06d.tar": "not a valid pattern",
        "images-{!s:.0}.tar": "images-.tar' to every shard",
    }
    for pattern, problem in bad.items():
        with pytest.raises(SystemExit) as e:
            write_main(["--folder", folder, "--out", str(tmp_path / "out" / pattern)])
        err = capsys.readouterr().err
        assert e.value.code == 2 and problem in err, (pattern, err)
        with pytest.raises(ValueError, match="out pattern"):
            write_shards(ImageFolder(folder), pattern)
        with pytest.raises(ValueError, match="per_shard must be at least 1"):
            write_shards(ImageFolder(folder), out, per_shard=0)
    assert not (tmp_path / "out").exists()  # nothing was written
    for good in ("images-{}.tar", "images-{0:03d}.tar", "{0}/images-{0}.tar"):
        paths, problems = write_shards(ImageFolder(folder), str(tmp_path / "ok" / good), per_shard=2)
        assert len(paths) == 2 and len(set(paths)) == 2 and not problems
