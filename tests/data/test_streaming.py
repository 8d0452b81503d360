"""Streaming tar shards: what is read (every sample of an epoch once), exact resume, elastic resume
over other ranks and workers, shard-set checks, truncated shards, sizes files."""

import io
import json
import tarfile
from collections import Counter

import pytest

from mmkit.data import LoaderOptions
from mmkit.data.streaming import (
    Piece,
    SlotReader,
    SlotState,
    check_same_shards,
    epoch_shares,
    make_stream_loader,
    plan_elastic,
    resolve_shards,
    shards_fingerprint,
)
from tests.data.conftest import add

TINY_PNG: bytes | None = None


def _png() -> bytes:
    global TINY_PNG
    if TINY_PNG is None:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (200, 30, 30)).save(buf, format="PNG")
        TINY_PNG = buf.getvalue()
    return TINY_PNG


def write_shards(root, sizes, prefix="pairs"):
    """Shards of the given sample counts: ``key.png`` + ``key.txt`` (caption = key)."""
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s, n in enumerate(sizes):
        path = root / f"{prefix}-{s:04d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(n):
                key = f"s{s}k{i:04d}"
                add(tar, f"{key}.png", _png())
                add(tar, f"{key}.txt", f"caption {key}".encode())
        paths.append(path)
    return paths


def keys_of(samples, generator=None):
    """Test collator: the samples' keys and epochs."""
    return [(s["__batch__"][0], s["__key__"]) for s in samples]


def _loader(paths, rank=0, world=1, workers=0, batch=4, buffer=8, seed=3):
    from mmkit.data import ImageTransform, ImageTransformConfig

    options = LoaderOptions(batch, rank=rank, world_size=world, seed=seed, num_workers=workers, shuffle_buffer=buffer)
    return make_stream_loader(
        [str(p) for p in paths],
        "image",
        keys_of,
        options,
        name="pairs",
        image_transform=ImageTransform(ImageTransformConfig(8, 0)),
    )


def _take(it, n):
    out = []
    for _ in range(n):
        batch, skipped = next(it)
        assert not skipped
        out.append(batch)
    return out


# -- pieces and plans, no I/O -----------------------------------------------------------------
def test_epoch_shares_deal_every_sample_once_even_with_fewer_shards_than_slots():
    sizes = [7, 5, 9]
    for slots in (1, 2, 3, 5, 8):
        shares = epoch_shares(len(sizes), slots, seed=1, epoch=4)
        assert all(shares), slots  # every slot has work
        seen = Counter((p.shard, q) for share in shares for p in share for q in p.positions(0, sizes[p.shard] - 1))
        assert set(seen) == {(s, q) for s, n in enumerate(sizes) for q in range(n)} and set(seen.values()) == {1}
    assert epoch_shares(3, 2, 1, 0) != epoch_shares(3, 2, 1, 1)  # a new permutation each epoch


def test_piece_split_keeps_exactly_its_samples():
    p = Piece(2, start=5, stride=3, phase=2, skip=[8, 17])
    want = p.positions(0, 60)
    parts = p.split(4)
    got = sorted(q for part in parts for q in part.positions(0, 60))
    assert got == want and want[:4] == [5, 11, 14, 20]  # 8 and 17 skipped


# -- reading -------------------------------------------------------------------------------------
def test_one_slot_reads_each_sample_once_per_epoch_in_a_shuffled_order(tmp_path):
    paths = write_shards(tmp_path, [10, 6, 9])
    shards = resolve_shards([str(p) for p in paths])
    assert [s.nbytes for s in shards] == [p.stat().st_size for p in paths]
    reader = iter(SlotReader(shards, SlotState(0, 1), seed=0, buffer_size=7))
    first = [next(reader) for _ in range(25)]
    second = [next(reader) for _ in range(25)]
    assert {e for e, *_ in first} == {0} and {e for e, *_ in second} == {1}
    want = sorted(f"{p.name}:s{s}k{i:04d}" for s, (p, n) in enumerate(zip(paths, [10, 6, 9])) for i in range(n))
    for epoch in (first, second):
        assert sorted(r.key for *_, r in epoch) == want
    assert [r.key for *_, r in first] != [r.key for *_, r in second]
    # the window shuffles within shards, not only the shard order
    order = [int(r.key.split("k")[-1]) for *_, r in first[:7]]
    assert order != sorted(order)


def test_exact_resume_two_ranks_two_workers(tmp_path):
    """Stop after k batches, resume from the saved states: the same next batches as never stopping."""
    paths = write_shards(tmp_path, [9, 12, 7, 10, 11])
    for rank in range(2):
        ref = iter(_loader(paths, rank, 2, 2))
        expected = _take(ref, 14)
        live = _loader(paths, rank, 2, 2)
        it = iter(live)
        assert _take(it, 5) == expected[:5]
        state = json.loads(json.dumps(live.state_dict()))  # a checkpoint is plain data
        resumed = _loader(paths, rank, 2, 2)
        resumed.load_state_dict(state)
        assert _take(iter(resumed), 9) == expected[5:]


def test_elastic_resume_from_two_ranks_to_three_covers_the_epoch_exactly_once(tmp_path):
    sizes = [9, 12, 7, 10, 11, 8]
    paths = write_shards(tmp_path, sizes)
    everything = {f"pairs-{s:04d}.tar:s{s}k{i:04d}" for s, n in enumerate(sizes) for i in range(n)}
    consumed, states = Counter(), []
    for rank, steps in ((0, 4), (1, 6)):  # the ranks stopped at different points (and workers inside them)
        live = _loader(paths, rank, 2, 2)
        it = iter(live)
        for batch in _take(it, steps):
            consumed.update(k for e, k in batch if e == 0)
        states.append(live.state_dict())
    assert 0 < len(consumed) < len(everything) and set(consumed.values()) == {1}
    rest = Counter()
    for rank in range(3):
        loader = _loader(paths, rank, 3, 1)
        loader.load_elastic(states)
        it = iter(loader)
        for _ in range(40):  # far past the end of epoch 0 on every slot
            batch, _ = next(it)
            rest.update(k for e, k in batch if e == 0)
    assert not set(rest) & set(consumed)  # nothing read twice
    assert set(rest) | set(consumed) == everything and set(rest.values()) == {1}  # nothing left out
    with pytest.raises(ValueError, match="use load_elastic"):
        _loader(paths, 0, 3, 1).load_state_dict(states[0])
    with pytest.raises(ValueError, match="all 2 old ranks"):
        _loader(paths, 0, 3, 1).load_elastic(states[:1])


def test_plan_elastic_across_epochs_and_nested_plans(tmp_path):
    """Slots in different epochs, and a second elastic change on top of the first: per epoch, what
    the old slots read plus what the new ones read is every sample exactly once."""
    sizes = [5, 8, 6, 7]
    paths = write_shards(tmp_path, sizes)
    shards = resolve_shards([str(p) for p in paths])
    per_epoch: dict[int, Counter] = {}

    def run(states, counts):
        for st, n in zip(states, counts):
            reader = iter(SlotReader(shards, st, seed=5, buffer_size=4))
            for _ in range(n):
                epoch, shard, q, _ = next(reader)
                per_epoch.setdefault(epoch, Counter())[(shard, q)] += 1

    old = [SlotState(i, 3) for i in range(3)]
    run(old, [3, 17, 30])  # slot 2 is well into epoch 1, slot 1 near the end of epoch 0
    mid = plan_elastic(old, len(shards), 5, 2)
    run(mid, [4, 9])
    new = plan_elastic(mid, len(shards), 5, 4)
    run(new, [60, 60, 60, 60])
    total = {(s, q) for s, n in enumerate(sizes) for q in range(n)}
    for epoch in (0, 1):
        assert set(per_epoch[epoch]) == total and set(per_epoch[epoch].values()) == {1}, epoch


# -- checks --------------------------------------------------------------------------------------
def test_a_changed_shard_set_is_refused_naming_the_difference(tmp_path):
    paths = write_shards(tmp_path, [5, 5, 5])
    saved = shards_fingerprint(resolve_shards(str(tmp_path / "pairs-*.tar")))
    paths[2].unlink()
    with pytest.raises(ValueError, match=r"1 shard\(s\) no longer there \(.*pairs-0002.tar\)"):
        check_same_shards(saved, resolve_shards(str(tmp_path / "pairs-*.tar")), "pairs")
    paths[2].write_bytes(write_shards(tmp_path / "other", [5, 5, 6])[2].read_bytes())  # shard 2 back, one more sample
    with pytest.raises(ValueError, match=r"1 shard\(s\) changed \(size or modification time: .*pairs-0002.tar\)"):
        check_same_shards(saved, resolve_shards(str(tmp_path / "pairs-*.tar")), "pairs")
    live = _loader(paths, 0, 1, 0)
    _take(iter(live), 1)
    state = live.state_dict()
    (tmp_path / "extra").mkdir()
    moved = write_shards(tmp_path / "extra", [5, 5, 5, 5])
    with pytest.raises(ValueError, match="4 new shard"):
        _loader(moved, 0, 1, 0).load_state_dict(state)
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        resolve_shards(str(tmp_path / "nothing-*.tar"))


def test_a_truncated_shard_reports_its_lost_samples(tmp_path):
    paths = write_shards(tmp_path, [6, 10])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    (tmp_path / "sizes.json").write_text(json.dumps({"pairs-0000.tar": 6, "pairs-0001.tar": 10}))
    shards = resolve_shards([str(p) for p in paths])
    assert [s.samples for s in shards] == [6, 10]
    loader = _loader(paths, batch=2)
    it = iter(loader)
    good, skipped = 0, []
    for _ in range(20):
        batch, bad = next(it)
        good += len(batch or [])
        skipped += bad
        if good + len(skipped) >= 16:
            break
    assert good + len(skipped) == 16  # the lost samples count as skipped records
    assert len(skipped) == 2 and all("pairs-0001.tar is truncated" in s.reason for s in skipped)  # samples 8, 9


def test_sizes_files_of_webdataset_and_img2dataset(tmp_path):
    write_shards(tmp_path / "a", [3, 4])
    (tmp_path / "a" / "_info.json").write_text(
        json.dumps({"shardlist": [{"url": "pairs-0000.tar", "nsamples": 3}, {"url": "pairs-0001.tar", "nsamples": 4}]})
    )
    assert [s.samples for s in resolve_shards(str(tmp_path / "a" / "pairs-{0000..0001}.tar"))] == [3, 4]
    write_shards(tmp_path / "b", [2, 5], prefix="0000")
    for name, n in (("0000-0000", 2), ("0000-0001", 5)):
        (tmp_path / "b" / f"{name}_stats.json").write_text(json.dumps({"successes": n, "failed_to_download": 1}))
    assert [s.samples for s in resolve_shards(str(tmp_path / "b" / "*.tar"))] == [2, 5]
    assert [s.samples for s in resolve_shards(str(tmp_path / "a" / "*.tar"))] == [3, 4]


def test_reading_does_not_draw_from_the_global_rng(tmp_path):
    """A resumed run starts its loader iterators at other points of the model's random stream (e.g.
    Gumbel noise): the loader must not consume that stream, or the resumed run diverges."""
    import torch

    paths = write_shards(tmp_path, [6, 6])
    for workers in (0, 2):
        torch.manual_seed(0)
        want = torch.rand(3)
        torch.manual_seed(0)
        _take(iter(_loader(paths, workers=workers)), 2)
        assert torch.equal(torch.rand(3), want), workers


def test_text_files_stream_one_sample_per_line(tmp_path, tokenizer):
    """Text for MLM streams like shards: every non-blank line of every file once per epoch (JSONL: its
    field), the same lines TextLines indexes; a line that is not UTF-8 is a skipped record."""
    from mmkit.data import TextLines

    (tmp_path / "a.txt").write_bytes(b"two red circles\n\nthree blue squares\nbad \xff line\n" * 3)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"shape number {i}"}) for i in range(7)))
    files = [str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")]
    options = LoaderOptions(4, seed=2, shuffle_buffer=3)
    loader = make_stream_loader(files, "text", keys_of, options, name="text", tokenizer=tokenizer)
    it = iter(loader)
    got, skipped = [], []
    for _ in range(4):  # 16 lines = one epoch
        batch, bad = next(it)
        got += [k for e, k in batch or []]
        skipped += bad
    indexed = TextLines(files)
    assert sorted(got + [s.key for s in skipped]) == sorted(indexed[i].key for i in range(len(indexed)))
    assert len(skipped) == 3 and all("not UTF-8" in s.reason for s in skipped)


def test_img2dataset_layout_as_the_tool_writes_it(tmp_path):
    """img2dataset writes ``00000.tar`` holding ``key.jpg`` + ``key.txt`` + ``key.json`` (url, status,
    sizes, ...), with ``00000.parquet`` and ``00000_stats.json`` beside it: both modes read the pairs,
    the caption from the ``.txt``, and streaming takes the sample counts from the stats files."""
    from PIL import Image

    from mmkit.data import ImageTransform, ImageTransformConfig, SampleDataset, TarShards

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    for shard, n in ((0, 5), (1, 3)):
        with tarfile.open(tmp_path / f"{shard:05d}.tar", "w") as tar:
            for i in range(n):
                key = f"{shard:05d}{i:04d}"
                meta = {
                    "url": f"http://x/{key}.jpg",
                    "caption": f"a green box {key}",
                    "key": key,
                    "status": "success",
                    "width": 40,
                    "height": 30,
                    "original_width": 400,
                    "original_height": 300,
                }
                add(tar, f"{key}.jpg", buf.getvalue())
                add(tar, f"{key}.txt", meta["caption"].encode())
                add(tar, f"{key}.json", json.dumps(meta).encode())
        (tmp_path / f"{shard:05d}_stats.json").write_text(
            json.dumps({"count": n + 2, "successes": n, "failed_to_download": 2})
        )
        (tmp_path / f"{shard:05d}.parquet").write_bytes(b"PAR1")  # the tool's per-shard metadata table
    pattern = str(tmp_path / "*.tar")
    assert [s.samples for s in resolve_shards(pattern)] == [5, 3]
    transform = ImageTransform(ImageTransformConfig(8, 0))
    indexed = SampleDataset(TarShards(pattern), "image", transform)
    assert len(indexed) == 8
    loader = make_stream_loader(
        pattern, "pair", keys_of, LoaderOptions(8), image_transform=transform, tokenizer=_WordCount()
    )
    batch, skipped = next(iter(loader))
    assert not skipped and sorted(k for _, k in batch) == sorted(indexed.source[i].key for i in range(8))


class _WordCount:
    """A stand-in tokenizer: one id per word (the test needs text decoded, not a vocabulary)."""

    def encode(self, text):
        from types import SimpleNamespace

        words = text.split()
        return SimpleNamespace(input_ids=list(range(len(words))), word_ids=list(range(len(words))))
