"""Each benchmark layout read from a miniature copy written as the release lays it out: the samples read
equal what was written, bad input gives its skip or its one-line error, and no file executes code."""

from __future__ import annotations

import io
import json
import os
import pickle

import numpy as np
import pytest

from mmkit.eval.benchmarks import BenchmarkFormatError, open_benchmark
from tests.eval import benchmark_files as bf


def _rgb(sample):
    from PIL import Image

    im = sample.image if not isinstance(sample.image, bytes) else Image.open(io.BytesIO(sample.image))
    return np.asarray(im.convert("RGB"))


def test_class_folders_with_a_synset_mapping(tmp_path):
    root = bf.class_folders(tmp_path / "imagenet")
    ds = open_benchmark("folder", root, "val", classnames="LOC_synset_mapping.txt")
    assert ds.classnames == ["tench", "goldfish", "great white shark"]  # the first name of each line
    samples = list(ds)
    assert len(ds) == len(samples) == 9
    assert [s.label for s in samples] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert samples[4].key == "n002/n002_1.png" and samples[4].image == bf.png(11)
    assert open_benchmark("folder", root, "val").classnames == ["n001", "n002", "n003"]
    (tmp_path / "short.txt").write_text("only one\n")
    with pytest.raises(BenchmarkFormatError, match=r"short.txt: lists 1 names for 3 class folders"):
        open_benchmark("folder", root, "val", classnames=str(tmp_path / "short.txt"))
    with pytest.raises(FileNotFoundError, match=r"imagenet/train does not exist"):
        open_benchmark("folder", root, "train")
    with pytest.raises(ValueError, match=r"layout 'folder' has no key\(s\) images; its keys: classnames"):
        open_benchmark("folder", root, "val", images="x")


@pytest.mark.parametrize("version", ["binary", "python"])
def test_cifar10_both_versions_read_the_same_pixels_and_labels(tmp_path, version):
    root = bf.cifar10_binary(tmp_path) if version == "binary" else bf.cifar_python(tmp_path)
    test = open_benchmark("cifar", tmp_path, "test")  # the parent folder is found too
    assert test.classnames == bf.CIFAR10 and len(test) == 3
    samples = list(test)
    assert [s.label for s in samples] == [5, 6, 7]  # batch 5 (test), rows 0..2
    for i, s in enumerate(samples):
        want = bf.pixels(500 + i).reshape(3, 32, 32).transpose(1, 2, 0)
        assert np.array_equal(_rgb(s), want)
    train = open_benchmark("cifar", root, "train")
    assert len(train) == 15 and [s.label for s in train][:4] == [0, 1, 2, 1]


def test_cifar100_python_uses_the_fine_labels(tmp_path):
    bf.cifar_python(tmp_path, hundred=True)
    ds = open_benchmark("cifar", tmp_path, "test")
    assert len(ds.classnames) == 100 and ds.classnames[3] == "class 3"
    assert [s.label for s in ds] == [7, 8, 9]


def test_a_planted_pickle_is_refused_without_running(tmp_path):
    root = bf.cifar_python(tmp_path)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (root / "test_batch").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(
        BenchmarkFormatError, match=r"test_batch: not a CIFAR python batch \(refused to load (posix|os)\.system"
    ):
        open_benchmark("cifar", root, "test")
    assert not marker.exists()


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_files(tmp_path, gz):
    root = bf.mnist(tmp_path / "mnist", gz=gz)
    ds = open_benchmark("mnist", root, "test")
    samples = list(ds)
    assert len(ds) == 4 and [s.label for s in samples] == [0, 1, 2, 3] and ds.classnames[9] == "9"
    assert samples[0].image.size == (28, 28)
    assert len(open_benchmark("mnist", root, "train")) == 5
    name = "t10k-labels-idx1-ubyte" + (".gz" if gz else "")
    raw = bf.idx(np.arange(3, dtype=np.uint8))  # 3 labels for 4 images
    (root / name).write_bytes(__import__("gzip").compress(raw) if gz else raw)
    with pytest.raises(BenchmarkFormatError, match=rf"{name}: holds 3 labels for 4 images"):
        open_benchmark("mnist", root, "test")


def test_coco_captions_group_five_per_image_and_name_a_missing_image(tmp_path):
    root = bf.coco(tmp_path / "coco")
    (root / "val2017" / "000000000002.jpg").unlink()
    ds = open_benchmark("coco", root, "val", annotations="annotations/captions_val2017.json", images="val2017")
    samples = list(ds)
    assert len(ds) == 4 and ds.num_captions() == 20  # the uncaptioned image is left out
    assert samples[1].captions == tuple(f"image 1 caption {j}" for j in range(5)) and samples[1].image == bf.png(1)
    assert samples[2].image is None and "000000000002.jpg" in samples[2].error
    ann = root / "annotations" / "captions_val2017.json"
    data = json.loads(ann.read_text())
    del data["annotations"][3]["caption"]
    ann.write_text(json.dumps(data))
    with pytest.raises(BenchmarkFormatError, match=r"captions_val2017.json: annotations\[3\] has no 'caption' field"):
        open_benchmark("coco", root, "val")
    ann.write_text("{not json")
    with pytest.raises(BenchmarkFormatError, match="captions_val2017.json: not valid JSON"):
        open_benchmark("coco", root, "val")


@pytest.mark.parametrize("dataset", ["flickr30k", "coco"])
def test_karpathy_split_files(tmp_path, dataset):
    root = bf.karpathy(tmp_path / dataset, dataset)
    keys = {"annotations": f"dataset_{dataset}.json"}
    if dataset == "flickr30k":
        keys["images"] = "flickr30k-images"  # Flickr30K's file has no filepath
    ds = open_benchmark("karpathy", root, "test", **keys)
    samples = list(ds)
    assert len(ds) == 3 and ds.num_captions() == 15 and ds.kind == "retrieval"
    assert samples[2].captions[4] == "photo 2 sentence 4." and samples[2].image == bf.png(2)
    with pytest.raises(
        BenchmarkFormatError, match=r"no image has split 'testing' \(the file's splits: test, train, val\)"
    ):
        open_benchmark("karpathy", root, "testing", **keys)


def test_parquet_as_the_hub_stores_it(tmp_path):
    bf.parquet(tmp_path / "data" / "test-00000-of-00001.parquet", n=6)
    ds = open_benchmark("parquet", tmp_path, "test", label_column="label")
    samples = list(ds)  # read across two row groups
    assert ds.classnames == ["cat", "dog", "bird"] and len(ds) == 6
    assert [s.label for s in samples] == [0, 1, 2, 0, 1, 2] and samples[5].image == bf.png(5)
    bf.parquet(tmp_path / "ret.parquet", n=3, retrieval=True)
    ret = list(open_benchmark("parquet", tmp_path / "ret.parquet", "test", text_column="caption"))
    assert ret[2].captions == ("row 2 caption 0", "row 2 caption 1")
    with pytest.raises(BenchmarkFormatError, match=r"has no column 'labels' \(columns: image, label\)"):
        open_benchmark("parquet", tmp_path, "test", label_column="labels")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(BenchmarkFormatError, match="bad.parquet: not a parquet file"):
        open_benchmark("parquet", tmp_path / "bad.parquet", "test", label_column="label")


def test_clip_benchmark_webdataset_classification_and_retrieval(tmp_path):
    root = bf.clip_benchmark_wds(tmp_path / "wds_pets", n=4, shards=2)
    ds = open_benchmark("wds", root, "test")
    assert ds.classnames == ["cat", "dog", "bird"] and ds.templates == ["a photo of a {}.", "a bad photo of the {}."]
    samples = list(ds)
    assert len(ds) == len(samples) == 8 and [s.label for s in samples] == [i % 3 for i in range(8)]
    assert samples[5].key.endswith("s0000005") and np.array_equal(_rgb(samples[5]), _rgb(bf_sample(5)))
    # loader workers read whole shards: every sample exactly once
    from mmkit.eval.features import shard

    got = sorted(i for w in range(2) for i, _ in shard(ds, w, 2))
    assert got == [(s, p) for s in range(2) for p in range(4)]
    ret = bf.clip_benchmark_wds(tmp_path / "wds_flickr", retrieval=True, n=3, shards=1)
    rs = list(open_benchmark("wds", ret, "test"))
    assert open_benchmark("wds", ret, "test").kind == "retrieval" and rs[2].captions == ("caption 2 a", "caption 2 b")
    (root / "test" / "nshards.txt").write_text("three\n")
    with pytest.raises(BenchmarkFormatError, match=r"nshards.txt: not a number: 'three'"):
        open_benchmark("wds", root, "test")


def bf_sample(i):
    from mmkit.eval.benchmarks import Sample

    return Sample("x", bf.png(i))


def test_clip_benchmark_webdataset_over_http(tmp_path):
    """The same folder served by a local ``http.server``: the same samples, metadata files read over HTTP."""
    from tests.servers import http_server

    root = bf.clip_benchmark_wds(tmp_path / "wds_pets", n=4, shards=2)
    with http_server(tmp_path) as url:
        remote = open_benchmark("wds", f"{url}/wds_pets", "test")
        assert remote.classnames == ["cat", "dog", "bird"] and remote.size() is None
        local = list(open_benchmark("wds", root, "test"))
        got = list(remote)
        assert [s.label for s in got] == [s.label for s in local] and [s.image for s in got] == [s.image for s in local]
        with pytest.raises(FileNotFoundError, match="no 'train' shards in http://127.0.0.1"):
            list(open_benchmark("wds", f"{url}/wds_pets", "train"))
