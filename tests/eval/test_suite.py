"""The suite's own decisions, without a model: which class names and templates a zero-shot task uses, which
metric heads a row, which validation split a probe finds, what results.md says beside each number, and the
digest results are keyed on."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmkit.eval.benchmarks import open_benchmark
from mmkit.eval.prompts import clip_prompts
from mmkit.eval.suite import (
    SuiteTask,
    checkpoint_digest,
    class_prompts,
    headline_metric,
    load_suite,
    results_table,
    validation_split,
)
from tests.eval.benchmark_files import class_folders


def _imagenet_folders(root: Path, split: str = "val") -> Path:
    """1000 wnid-like folders of one image each: in sorted order they follow ImageNet's class index."""
    return class_folders(root, classes=tuple(f"n{i:08d}" for i in range(1000)), per_class=1, split=split)


def test_imagenet_from_folders_gets_clips_curated_names_and_80_templates(tmp_path):
    root = _imagenet_folders(tmp_path / "imagenet")
    task = SuiteTask("imagenet", "zero_shot", "folder", str(root), split="val")
    names, templates, origin = class_prompts(task, task.open())
    clip = clip_prompts("imagenet")
    assert names == list(clip.classnames) and len(templates) == 80
    assert names[134] != names[517] and "crane" in names[134] and "crane" in names[517]  # not two "crane"s
    assert origin == "names from CLIP (imagenet); templates from CLIP (imagenet)"
    # the entry's own files win: a mapping file's first names, a templates list
    (root / "mine.txt").write_text("".join(f"n{i:08d} name{i}, other\n" for i in range(1000)))
    own = SuiteTask(
        "imagenet",
        "zero_shot",
        "folder",
        str(root),
        split="val",
        templates=["a {} here"],
        keys={"classnames": "mine.txt"},
    )
    names, templates, origin = class_prompts(own, own.open())
    assert names[:2] == ["name0", "name1"] and templates == ["a {} here"]
    assert origin == "names from the entry's classnames; templates from the entry"
    # prompts: none keeps the set's own names (folder names here) and mmkit's default templates
    plain = SuiteTask("imagenet", "zero_shot", "folder", str(root), split="val", prompts="none")
    names, templates, _ = class_prompts(plain, plain.open())
    assert names[0] == "n00000000" and templates[0] == "a photo of {}."


def test_a_dataset_whose_class_count_differs_from_clips_is_named(tmp_path):
    root = class_folders(tmp_path / "c", classes=("a", "b", "c"), per_class=1, split="test")
    task = SuiteTask("cifar10", "zero_shot", "folder", str(root))
    with pytest.raises(ValueError, match=r"CLIP's cifar10 names 10 classes, the set has 3 .*prompts: none"):
        class_prompts(task, task.open())
    with pytest.raises(ValueError, match="prompts 'nope' is not a dataset"):
        bad = SuiteTask("x", "zero_shot", "folder", str(root), prompts="nope")
        class_prompts(bad, bad.open())


def test_headline_metrics_follow_the_literature():
    def task(name, **kw):
        return SuiteTask(name, "linear_probe", "wds", "p", **kw)

    for name in ("aircraft", "pets", "flowers102", "caltech101", "fgvc_aircraft", "vtab/pets"):
        assert headline_metric(task(name)) == "mean_per_class_recall", name
    for name in ("imagenet", "cifar10", "dtd", "my-set"):
        assert headline_metric(task(name)) == "accuracy", name
    assert headline_metric(task("mine", prompts="pets")) == "mean_per_class_recall"
    assert headline_metric(task("pets", metric="accuracy")) == "accuracy"


def test_a_probe_finds_the_layouts_validation_split_but_never_the_test_one(tmp_path):
    root = tmp_path / "set"
    for split in ("train", "val", "test"):
        class_folders(root, classes=("a", "b"), per_class=2, split=split)
    task = SuiteTask("s", "linear_probe", "folder", str(root), split="test")
    assert validation_split(task, task.open()).split == "val"
    assert validation_split(SuiteTask("s", "linear_probe", "folder", str(root), val_split="none"), None) is None
    imagenet = SuiteTask("s", "linear_probe", "folder", str(root), split="val")  # val is the test split here
    assert validation_split(imagenet, imagenet.open()) is None
    # a lone parquet file answers to every split name: it is not taken for a validation split
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"image": [b"x"], "label": [0]}), tmp_path / "one.parquet")
    lone = SuiteTask("p", "linear_probe", "parquet", str(tmp_path / "one.parquet"), keys={"label_column": "label"})
    assert validation_split(lone, open_benchmark("parquet", lone.path, "test", label_column="label")) is None


def test_results_md_says_split_metric_selection_and_where_the_paper_differs(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "tasks:\n"
        "  - {name: pets, kind: linear_probe, layout: wds, path: p, paper: {mean_per_class_recall: 80.0},"
        " paper_note: other splits}\n"
        "  - {name: vqa, kind: finetune, task: vqav2, path: v}\n"
    )
    tasks = load_suite(suite)
    results = {
        "_weights": "ab" * 32,
        "pets": {
            "accuracy": 0.5,
            "mean_per_class_recall": 0.4,
            "samples": 10,
            "selected_on": "val",
            "val_split": "val",
            "C": 0.316,
            "train_samples": 30,
        },
        "vqa": {"vqa_accuracy": 0.6, "samples": 5, "best_step": 20, "steps": 40},
    }
    table = results_table(tasks, results, "ckpt")
    assert f"`{'ab' * 32}`" in table
    assert (
        "| pets | linear_probe | test | mean_per_class_recall | 40.00 | 80.00 | 10 | C=0.316 chosen on val; "
        "fit on 30; **paper:** other splits |" in table
    )
    assert "| pets | linear_probe | test | accuracy | 50.00 |  | 10 |  |" in table
    assert (
        "| vqa | finetune | val | vqa_accuracy | 60.00 | 72.49 | 5 | best step 20 of 40; **paper:** Table 4 " in table
    )
    assert "Vision average (linear probes, 1 task(s)): **40.00**" in table  # the headline metric averages


def test_bad_entries_and_an_empty_suite_are_named(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(
        "tasks:\n  - {name: a, kind: zero_shot, layout: wds, path: p, templates: 5, metric: top5, val_split: [a]}\n"
    )
    with pytest.raises(ValueError) as e:
        load_suite(suite)
    assert "templates must be a file name or a list of strings, got 5" in str(e.value)
    assert "metric 'top5' is not one of accuracy, mean_per_class_recall" in str(e.value)
    assert "val_split must be a string, got ['a']" in str(e.value)
    from mmkit.eval.suite import run_suite

    with pytest.raises(ValueError, match="the suite lists no tasks"):
        run_suite([], None, tmp_path / "out")


def test_the_digest_follows_every_byte_of_the_checkpoint(tmp_path):
    ckpt = tmp_path / "ckpt"
    (ckpt / "tokenizer").mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 100)
    (ckpt / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    first = checkpoint_digest(ckpt)
    assert checkpoint_digest(ckpt) == first
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 99 + b"\x01")
    second = checkpoint_digest(ckpt)
    (ckpt / "tokenizer" / "vocab.txt").write_text("a\nc\n")
    assert len({first, second, checkpoint_digest(ckpt)}) == 3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        checkpoint_digest(tmp_path / "nope")
