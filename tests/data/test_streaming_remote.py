"""The same shards from local disk, from an HTTP server and from an S3 endpoint, both started here on
localhost (the standard library's ``http.server``; moto's standalone S3 server through ``s3fs``):
identical batches, and exact resume over S3."""

import pytest

from tests.data.test_streaming import _take, keys_of, write_shards
from tests.servers import http_server, s3_server

pytest.importorskip("aiohttp", reason="HTTP streaming needs aiohttp (pip install -e '.[dev]')")
s3fs = pytest.importorskip("s3fs", reason="S3 streaming needs s3fs (pip install -e '.[dev]')")

SIZES = [9, 12, 7, 10]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    return write_shards(tmp_path_factory.mktemp("shards"), SIZES)


@pytest.fixture(scope="module")
def http_root(local):
    with http_server(local[0].parent) as url:
        yield url


@pytest.fixture(scope="module")
def s3(local):
    sizes = "{" + ", ".join(f'"{p.name}": {n}' for p, n in zip(local, SIZES)) + "}"
    with s3_server({**{f"bucket/cc/{p.name}": p for p in local}, "bucket/cc/sizes.json": sizes.encode()}) as options:
        yield options


def _loader(patterns, storage_options=None, rank=0, world=1, workers=2):
    from mmkit.data import ImageTransform, ImageTransformConfig, LoaderOptions
    from mmkit.data.streaming import make_stream_loader

    options = LoaderOptions(
        4, rank=rank, world_size=world, seed=3, num_workers=workers, shuffle_buffer=8, storage_options=storage_options
    )
    return make_stream_loader(
        patterns, "image", keys_of, options, image_transform=ImageTransform(ImageTransformConfig(8, 0))
    )


def test_local_http_and_s3_give_identical_batches(local, http_root, s3):
    from mmkit.data.streaming import resolve_shards

    pattern = "pairs-{0000..0003}.tar"
    local_batches = _take(iter(_loader(str(local[0].parent / pattern))), 12)
    http_batches = _take(iter(_loader(f"{http_root}/{pattern}")), 12)
    s3_batches = _take(iter(_loader("s3://bucket/cc/pairs-*.tar", s3)), 12)
    keys = lambda batches: [k for b in batches for _, k in b]  # noqa: E731
    assert keys(local_batches) == keys(http_batches) == keys(s3_batches)
    assert len(set(keys(local_batches))) == sum(SIZES)  # 12 x 4 = 48 = one epoch, each sample once
    remote = resolve_shards("s3://bucket/cc/pairs-*.tar", s3)
    assert [s.samples for s in remote] == SIZES  # from sizes.json beside the shards
    assert [s.nbytes for s in remote] == [p.stat().st_size for p in local]
    assert all(s.version for s in remote)  # the ETag: a replaced object is noticed on resume


def test_exact_resume_over_s3_two_ranks_two_workers(s3):
    for rank in range(2):
        expected = _take(iter(_loader("s3://bucket/cc/pairs-*.tar", s3, rank, 2)), 8)
        live = _loader("s3://bucket/cc/pairs-*.tar", s3, rank, 2)
        assert _take(iter(live), 3) == expected[:3]
        resumed = _loader("s3://bucket/cc/pairs-*.tar", s3, rank, 2)
        resumed.load_state_dict(live.state_dict())
        assert _take(iter(resumed), 5) == expected[3:]


def test_missing_remote_shards_are_named(http_root, s3):
    from mmkit.data.streaming import resolve_shards

    with pytest.raises(FileNotFoundError, match="no shard matches 's3://bucket/nothing-"):
        resolve_shards("s3://bucket/nothing-*.tar", s3)
    with pytest.raises(FileNotFoundError, match="pairs-0099.tar does not exist"):
        resolve_shards(f"{http_root}/pairs-{{0000..0001}}.tar,{http_root}/pairs-0099.tar".split(","))
    with pytest.raises(ValueError, match="HTTP has no listing to glob"):
        resolve_shards(f"{http_root}/pairs-*.tar")
