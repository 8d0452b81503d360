"""FLAVA pretraining with every data source (training pairs, held-out pairs, images, text for the tokenizer
and for MLM) behind a server started here: the standard library's ``http.server`` and moto's S3 server.
The same data and seed give the same losses as from local disk; index mode refuses a URL with a line
that says to stream it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import load_recipe
from tests.servers import http_server, s3_server

pytest.importorskip("aiohttp", reason="HTTP streaming needs aiohttp (pip install -e '.[dev]')")
s3fs = pytest.importorskip("s3fs", reason="S3 streaming needs s3fs (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mmkit.data import shapes_dataset

    return shapes_dataset(
        tmp_path_factory.mktemp("remote") / "shapes", num_train=32, num_val=16, num_images=16, num_text=48, per_shard=16
    )


@pytest.fixture(scope="module")
def http_root(data):
    with http_server(data.root) as url:
        yield url


@pytest.fixture(scope="module")
def s3_options(data):
    files = {f"bucket/shapes/{p.name}": p for p in sorted(data.root.iterdir()) if p.suffix in (".tar", ".txt")}
    with s3_server(files) as options:
        yield options


def _names(paths):
    return [p.name for p in paths]


def _run(tmp_path, name, base, data, storage_options=None, streaming=True):
    """One short pretraining run whose sources are ``base/<file>``; returns the recipe and its metrics."""
    from mmkit.train import run_training

    recipe = load_recipe("recipes/flava/pretrain.py")
    where = [f"{base}/{n}" for n in ("{train-pairs-0000,train-pairs-0001}.tar",)]
    args = [
        f"run_dir={tmp_path / name}",
        "preset=tiny",
        "data.dataset=files",
        f"data.train_pairs={json.dumps(where)}",
        f"data.val_pairs={json.dumps([f'{base}/{n}' for n in _names(data.val_pairs)])}",
        f"data.images={json.dumps([f'{base}/{n}' for n in _names(data.images)])}",
        f"data.text={json.dumps([f'{base}/text.txt'])}",
        "data.vocab_size=200",
        "data.batch_size=4",
        "data.num_workers=0",
        f"data.streaming={str(streaming).lower()}",
        "data.shuffle_buffer=8",
        f"data.storage_options={json.dumps(storage_options or {})}",
        "model.pretraining.mim_target=pixels",
        "optim.total_steps=3",
        "optim.warmup_steps=1",
        "log_every=1",
        "eval_every=100",
        "eval_samples=8",
        "eval_at_start=false",
        "checkpoint.every=100",
        "progress=false",
        "distributed=none",
    ]
    r = recipe.FLAVAPretrainRecipe(recipe.load_config(None, args))
    run_training(r)
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    keep = ("loss/", "retrieval/")
    return r, [{k: v for k, v in row.items() if k.startswith(keep) or k in ("step", "split")} for row in rows]


@pytest.mark.slow
def test_every_source_behind_http_and_s3_trains_as_from_disk(tmp_path, data, http_root, s3_options, capsys):
    _, local = _run(tmp_path, "local", str(data.root), data)
    capsys.readouterr()
    r, over_http = _run(tmp_path, "http", http_root, data)
    out = capsys.readouterr().out
    assert over_http == local  # the same samples in the same order: the same losses, to the bit
    assert f"data pairs: 2 tar shards, samples not listed, streamed from {http_root}/" in out, out
    assert f"data images: 1 tar shard, samples not listed, streamed from {http_root}/images-0000.tar" in out
    assert f"data text: 1 text file, samples not listed, streamed from {http_root}/text.txt" in out
    assert "data val: 1 tar shard, the first 8 samples held out for evaluation" in out
    assert {"pairs", "images", "text"} == set(r.sources)
    _, over_s3 = _run(tmp_path, "s3", "s3://bucket/shapes", data, storage_options=s3_options)
    assert over_s3 == local
    assert any(row["split"] == "eval" and "retrieval/image_to_text_r1" in row for row in local)


def test_a_url_in_index_mode_is_refused_saying_to_stream_it(tmp_path, data, http_root):
    with pytest.raises(
        ValueError,
        match=r"is a URL, and index mode \(data.streaming=false\) reads local files only: "
        r"set data.streaming=true to stream it",
    ):
        _run(tmp_path, "indexed", http_root, data, streaming=False)
