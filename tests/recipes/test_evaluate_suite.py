"""The evaluation suite end to end: the built-in data written in three benchmark layouts, scored by one
command on an mmkit export and on a transformers FLAVA directory; results.json keeps its names, the
table prints the paper's numbers beside the measured ones, and a rerun skips finished tasks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import make_mmkit_export, run_recipe

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from mmkit.data import shapes_dataset
    from mmkit.eval.benchmarks.shapes import write_shapes_benchmarks

    root = tmp_path_factory.mktemp("suite")
    data = shapes_dataset(root / "data", num_train=120, num_val=60, num_images=4, num_text=200, per_shard=60)
    texts = data.text[0].read_text().splitlines()
    return write_shapes_benchmarks(root / "bench", train=90, test=40, data=data, val=30), make_mmkit_export(
        root / "ckpt", texts
    )


def _evaluate(*keys):
    return run_recipe("recipes/flava/evaluate.py", *keys)


def test_the_shapes_suite_on_an_mmkit_export(bench, tmp_path, capsys):
    root, export = bench
    out = tmp_path / "eval"
    args = [
        f"suite={REPO / 'suites/shapes.yaml'}",
        f"data_root={root}",
        f"checkpoint={export}",
        f"out={out}",
        "progress=false",
        "batch_size=16",
    ]
    assert _evaluate(*args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["_checkpoint"] == str(export)
    for name in ("shapes-color", "shapes-color-probe", "shapes-count", "shapes-count-probe"):
        assert 0 <= results[name]["accuracy"] <= 1 and results[name]["samples"] == 40, name
    assert results["shapes-color"]["classes"] == 6 and results["shapes-count"]["templates"] == 3
    for probe in ("shapes-color-probe", "shapes-count-probe"):  # both layouts ship val/: C chosen there, fit on both
        assert results[probe]["selected_on"] == "val" and results[probe]["val_split"] == "val", probe
        assert results[probe]["train_samples"] == 90 + 30, probe
    for name in ("shapes-color", "shapes-color-probe", "shapes-count", "shapes-count-probe"):
        assert 0 <= results[name]["mean_per_class_recall"] <= 1 and results[name]["metric"] == "accuracy", name
        assert results[name]["split"] == "test"
    ret = results["shapes-retrieval"]
    assert ret["samples"] == 40 and ret["captions"] == 120
    assert set(ret) >= {f"{d}_r{k}" for d in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    table = (out / "results.md").read_text()
    assert (
        "| shapes-retrieval | retrieval | test | text_to_image_r1 |" in table
        and "| shapes-count-probe | linear_probe | test | mean_per_class_recall |" in table
        and "chosen on val; fit on 120" in table
        and "Vision average (linear probes, 2 task(s))" in table
    )
    # a rerun skips every finished task; a lost results.json is rebuilt from the feature cache, equal
    capsys.readouterr()
    assert _evaluate(*args) == 0
    assert capsys.readouterr().out.count("done already") == 5
    (out / "results.json").unlink()
    assert _evaluate(*args) == 0
    again = json.loads((out / "results.json").read_text())
    for name in results:
        if not name.startswith("_"):
            assert results[name]["seconds"] > 0 and again[name]["seconds"] > 0
            same = {k: v for k, v in results[name].items() if k != "seconds"}
            assert {k: v for k, v in again[name].items() if k != "seconds"} == pytest.approx(same), name
    # another suite still writing into the same out= folder: this one stops at once, naming it
    import os

    from mmkit.train import RunDirLock

    hold = RunDirLock.acquire(out)
    try:
        capsys.readouterr()
        assert _evaluate(*args) == 2
    finally:
        hold.release()
    assert f"error: run directory {out} is in use by pid {os.getpid()}" in capsys.readouterr().err


def test_a_transformers_directory_with_the_papers_numbers_beside(bench, tmp_path):
    from transformers import FlavaConfig, FlavaModel

    from mmkit.tokenizers import TextTokenizer

    root, export = bench
    tok = TextTokenizer.from_pretrained(export / "tokenizer")
    small = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    config = FlavaConfig(
        image_config=dict(small, image_size=32, patch_size=8),
        text_config=dict(small, vocab_size=tok.vocab_size, max_position_embeddings=40),
        multimodal_config=dict(small),
        projection_dim=24,
        hidden_size=32,
    )
    torch.manual_seed(0)
    FlavaModel(config).save_pretrained(tmp_path / "hf")
    suite = tmp_path / "paper.yaml"
    suite.write_text(
        "tasks:\n"
        "  - {name: imagenet, kind: linear_probe, layout: folder, path: shapes-color, split: test}\n"
        "  - {name: coco, kind: retrieval, layout: karpathy, path: shapes-captions, annotations: dataset_shapes.json,"
        " images: images}\n"
    )
    out = tmp_path / "eval"
    assert (
        _evaluate(
            f"suite={suite}",
            f"data_root={root}",
            f"checkpoint={tmp_path / 'hf'}",
            f"tokenizer={export / 'tokenizer'}",
            f"out={out}",
            "progress=false",
        )
        == 0
    )
    table = (out / "results.md").read_text()
    assert "| imagenet | linear_probe | test | accuracy |" in table and "| 75.54 |" in table
    assert "| coco | retrieval | test | image_to_text_r1 |" in table and "| 42.74 |" in table and "| 38.38 |" in table
    assert "the paper's over its 22 tasks: 79.44" in table


def test_bad_suites_and_data_are_one_line_errors(bench, tmp_path, capsys):
    root, export = bench
    suite = tmp_path / "bad.yaml"
    suite.write_text(
        "tasks:\n  - {name: x, kind: zero_shots, layout: folders, path: p}\n"
        "  - {name: y, kind: retrieval, layout: coco, path: p, image_column: image}\n"
    )
    assert _evaluate(f"suite={suite}", f"out={tmp_path / 'o'}", f"checkpoint={export}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    assert "tasks[0] (x): kind 'zero_shots' is not one of zero_shot, linear_probe, retrieval, finetune" in err
    assert "layout 'folders' is not one of" in err and "tasks[1] (y): unknown key(s) image_column" in err
    suite.write_text(
        f"tasks:\n  - {{name: c, kind: retrieval, layout: karpathy, path: {root / 'shapes-captions'},"
        " annotations: missing.json}\n"
    )
    assert _evaluate(f"suite={suite}", f"out={tmp_path / 'o'}", f"checkpoint={export}", "progress=false") == 2
    assert "annotation file" in capsys.readouterr().err


def test_results_follow_the_weights_and_a_probe_without_val_carves_one(bench, tmp_path, capsys):
    """New weights under the same checkpoint path and out=: every task is scored again, equal to a fresh out=,
    and the old results are kept aside. A WebDataset copy without val/ chooses C on a share carved from train."""
    import shutil

    root, export = bench
    data = tmp_path / "bench"
    shutil.copytree(root / "shapes-count", data / "shapes-count", ignore=shutil.ignore_patterns("val"))
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "tasks:\n  - {name: count-probe, kind: linear_probe, layout: wds, path: shapes-count}\n"
        "  - {name: count, kind: zero_shot, layout: wds, path: shapes-count}\n"
    )
    ckpt = tmp_path / "ckpt"
    shutil.copytree(export, ckpt)
    out, fresh = tmp_path / "eval", tmp_path / "fresh"

    def run(target):
        assert (
            _evaluate(
                f"suite={suite}",
                f"data_root={data}",
                f"checkpoint={ckpt}",
                f"out={target}",
                "progress=false",
                "batch_size=32",
            )
            == 0
        )
        return json.loads((target / "results.json").read_text())

    first = run(out)
    assert first["count-probe"]["selected_on"] == "train_holdout" and first["count-probe"]["train_samples"] == 90
    assert first["count-probe"]["val_split"] is None
    from safetensors.torch import load_file, save_file

    g = torch.Generator().manual_seed(1)
    state = load_file(ckpt / "model.safetensors")
    save_file(
        {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in state.items()},
        ckpt / "model.safetensors",
    )  # new weights, same path
    capsys.readouterr()
    again = run(out)
    assert "done already" not in capsys.readouterr().out
    assert again["_weights"] != first["_weights"] and (out / f"results.{first['_weights'][:12]}.json").is_file()
    other = run(fresh)
    for name in ("count-probe", "count"):
        strip = lambda r: {k: v for k, v in r.items() if k != "seconds"}  # noqa: E731
        assert strip(again[name]) == pytest.approx(strip(other[name])), name
        assert strip(again[name]) != strip(first[name]), name  # other weights, other numbers
