"""Deterministic sharded loading, mixing, and exact resume in a fresh process."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmkit.data import DataQualityError, MixedBatches, ShardedBatchSampler, shapes_dataset
from tests.data.resume_helper import build, take

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    return shapes_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=96, num_val=16, num_images=48, num_text=64, per_shard=40
    )


def _same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x.keys() == y.keys(), i
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert torch.equal(x[k], y[k]), (i, k)
            else:
                assert x[k] == y[k], (i, k)


@pytest.mark.parametrize(("world", "workers"), [(1, 2), (2, 0)], ids=["2-workers", "2-ranks"])
def test_resume_in_a_fresh_process_gives_the_same_batches(tmp_path, small_shapes, tokenizer, world, workers):
    n, m = 5, 6
    tok_dir = tokenizer.save(tmp_path / "tok")
    per_rank = []
    for rank in range(world):
        reference = take(build(small_shapes.root, tokenizer, rank, world, workers), n + m)
        interrupted = build(small_shapes.root, tokenizer, rank, world, workers)
        take(interrupted, n)
        torch.save(interrupted.state_dict(), tmp_path / "state.pt")
        cmd = [
            sys.executable,
            "-m",
            "tests.data.resume_helper",
            str(tmp_path / "state.pt"),
            str(tmp_path / "next.pt"),
            str(small_shapes.root),
            str(tok_dir),
            str(rank),
            str(world),
            str(workers),
            str(m),
        ]
        subprocess.run(cmd, check=True, cwd=REPO, timeout=300)
        resumed = torch.load(tmp_path / "next.pt", weights_only=True)
        _same(resumed, reference[n:])
        assert {b["source"] for b in reference} == {"pairs", "images", "text"}
        per_rank.append(reference)
    if world == 2:
        # every rank runs the same kind of batch at each step, on different samples
        assert [b["source"] for b in per_rank[0]] == [b["source"] for b in per_rank[1]]
        for a, b in zip(*per_rank, strict=True):
            if a["source"] != "text":
                assert not torch.equal(a["pixel_values"], b["pixel_values"])


def test_sampler_shards_cover_each_epoch_once():
    samplers = [ShardedBatchSampler(10, 2, rank=r, world_size=2, seed=3, drop_last=False) for r in range(2)]
    seen = []
    for s in samplers:
        it = iter(s)
        for _ in range(len(s)):
            seen += [i for e, _, i in next(it) if e == 0]
        assert next(it)[0][0] == 1  # on to epoch 1
    assert sorted(seen) == list(range(10))
    with pytest.raises(ValueError, match="smaller than one batch"):
        ShardedBatchSampler(3, 4, rank=0, world_size=2)


def test_mixing_follows_the_probabilities(small_shapes, tokenizer):
    mixed = build(small_shapes.root, tokenizer, 0, 1, 0)
    kinds = [next(mixed).source for _ in range(120)]
    frac = {k: kinds.count(k) / len(kinds) for k in ("pairs", "images", "text")}
    assert abs(frac["pairs"] - 0.6) < 0.12 and abs(frac["images"] - 0.2) < 0.1
    with pytest.raises(ValueError, match="non-negative"):
        MixedBatches({"a": (None, -1.0)})


def test_bad_records_are_counted_and_too_many_stop_the_run(shards, tokenizer):
    from mmkit.data import LoaderOptions, PairCollator, SampleDataset, TarShards, make_loader
    from mmkit.masking import BlockMaskGenerator, TokenMasker

    tokens = TokenMasker(tokenizer.vocab_size, tokenizer.mask_token_id, tokenizer.special_token_ids)
    collator = PairCollator(BlockMaskGenerator(grid_size=14), tokens)
    ds = SampleDataset(TarShards(shards), "pair", tokenizer=tokenizer)
    loader = make_loader(ds, collator, LoaderOptions(12), shuffle=False)
    lenient = MixedBatches({"pairs": (loader, 1.0)}, max_bad_fraction=0.5, min_samples=1)
    batch = next(lenient)
    assert len(batch) == 8  # the sample without a caption is a skipped record too, as when streamed
    stats = lenient.stats()["pairs"]
    assert stats["seen"] == 12 and stats["skipped"] == 4 and len(stats["examples"]) >= 3
    strict = MixedBatches(
        {"pairs": (make_loader(ds, collator, LoaderOptions(12), shuffle=False), 1.0)},
        max_bad_fraction=0.1,
        min_samples=1,
    )
    with pytest.raises(DataQualityError, match=r"4 of 12 records could not be used .*pairs-001.tar:100"):
        next(strict)


def _image_stream(source, batch_size, **kw):
    from mmkit.data import ImageCollator, LoaderOptions, SampleDataset, make_loader
    from mmkit.data.transforms import ImageTransform, ImageTransformConfig
    from mmkit.masking import BlockMaskGenerator

    ds = SampleDataset(source, "image", ImageTransform(ImageTransformConfig(image_size=32, codebook_image_size=0)))
    loader = make_loader(ds, ImageCollator(BlockMaskGenerator.flava(4)), LoaderOptions(batch_size), shuffle=False)
    return MixedBatches({"broken": (loader, 1.0)}, max_bad_fraction=1.0, **kw)


def test_a_source_where_no_record_can_be_used_stops_even_when_every_bad_record_is_tolerated(tmp_path):
    from mmkit.data import ImageFolder

    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    stream = _image_stream(ImageFolder(tmp_path, name="broken"), batch_size=2, min_samples=6)
    with pytest.raises(DataQualityError, match=r"source 'broken': no record could be used.*6 records.*cannot decode"):
        next(stream)
    assert stream.stats()["broken"]["seen"] == 6


def test_a_source_that_stops_yielding_usable_records_stops_the_run(tmp_path):
    from mmkit.data import ImageFolder
    from tests.data.conftest import png_bytes

    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(png_bytes(i)[0])
    stream = _image_stream(ImageFolder(tmp_path, name="broken"), batch_size=2, min_samples=4)
    assert len(next(stream)) == 2
    for i in range(4):  # the disk goes away: every read fails from now on
        (tmp_path / f"{i}.png").unlink()
    with pytest.raises(DataQualityError, match=r"source 'broken': no record could be used: the last 22 records"):
        next(stream)
