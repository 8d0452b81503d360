"""CLIP's class names and templates as package data (mmkit.eval.prompts): the file loads through the package,
every dataset has its known class count, every template takes one class name, and the label orders we can
check without the datasets hold."""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from mmkit.eval.prompts import (
    CLIP_PROMPT_ALIASES,
    CLIP_PROMPT_DATASETS,
    ClipPrompts,
    canonical_name,
    clip_prompts,
    clip_prompts_source,
)

REPO = Path(__file__).resolve().parents[2]

#: the datasets' own class counts (Caltech-101 as VTAB/TFDS has it: 101 objects + background)
CLASS_COUNTS = {
    "imagenet": 1000,
    "food101": 101,
    "cifar10": 10,
    "cifar100": 100,
    "cars": 196,
    "aircraft": 100,
    "dtd": 47,
    "pets": 37,
    "flowers102": 102,
    "mnist": 10,
    "stl10": 10,
    "eurosat": 10,
    "gtsrb": 43,
    "kitti": 4,
    "pcam": 2,
    "ucf101": 101,
    "clevr": 8,
    "fer2013": 7,
    "sun397": 397,
    "rendered_sst2": 2,
    "country211": 211,
    "caltech101": 102,
}


def _prompts(name: str) -> ClipPrompts:
    found = clip_prompts(name)
    assert found is not None, name
    return found


def test_the_data_file_is_package_data():
    assert resources.files("mmkit.eval.prompts").joinpath("clip.json").is_file()
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    globs = config["tool"]["setuptools"]["package-data"]["mmkit"]
    assert any(fnmatch.fnmatch("eval/prompts/clip.json", g) for g in globs), globs


def test_source_names_both_repositories_and_their_commits():
    source = clip_prompts_source()
    for repo in ("openai/CLIP", "LAION-AI/CLIP_benchmark"):
        assert re.fullmatch(r"[0-9a-f]{40}", source[repo]["commit"]), repo
        assert source[repo]["files"]


def test_every_suite_task_has_prompts_with_its_class_count():
    assert set(CLIP_PROMPT_DATASETS) == set(CLASS_COUNTS)
    for name, count in CLASS_COUNTS.items():
        found = _prompts(name)
        assert found.classnames is not None and len(found.classnames) == count, name
        assert found.source.startswith("names: ") and "; templates: " in found.source, name
        assert found.label_order, name


def test_every_template_takes_exactly_one_class_name():
    for name in CLIP_PROMPT_DATASETS:
        found = _prompts(name)
        assert found.templates, name
        for template in found.templates:
            assert template.count("{}") == 1 and "{c}" not in template, (name, template)
            assert template.format("X").count("X") >= 1, (name, template)


def test_class_names_are_unique_within_each_dataset_but_imagenet_s_two_clip_pairs():
    for name in CLIP_PROMPT_DATASETS:
        repeated = {n: c for n, c in Counter(_prompts(name).classnames).items() if c > 1}
        if name == "imagenet":
            # CLIP's list, kept verbatim, names classes 657/744 and 836/837 alike
            assert repeated == {"missile": 2, "sunglasses": 2}
        else:
            assert not repeated, (name, repeated)


def test_imagenet_is_clip_s_curated_list_with_80_templates():
    found = _prompts("imagenet")
    names = found.classnames
    assert len(names) == 1000 and len(set(names)) == 998 and len(found.templates) == 80
    assert names[:3] == ("tench", "goldfish", "great white shark")
    # the first WordNet lemma names classes 134 and 517 "crane", 638 and 639 "maillot"; CLIP's list does not
    assert (names[134], names[517], names[638], names[639]) == (
        "crane bird",
        "construction crane",
        "tights",
        "one-piece bathing suit",
    )
    assert [names[i] for i in (657, 744)] == ["missile", "missile"]


def test_cifar_and_mnist():
    cifar10 = _prompts("cifar10")
    assert cifar10.classnames[:3] == ("airplane", "automobile", "bird") and len(cifar10.templates) == 18
    cifar100 = _prompts("cifar100")
    assert len(cifar100.classnames) == 100 and len(cifar100.templates) == 18
    assert list(cifar100.classnames) == sorted(cifar100.classnames, key=lambda n: n.replace(" ", "_"))
    mnist = _prompts("mnist")
    assert mnist.classnames == tuple(str(d) for d in range(10)) and len(mnist.templates) == 1


def test_label_orders_that_can_be_checked_without_the_data():
    # folder layout: sorted (case-sensitive) UCF101 folders, CamelCase names
    ucf = [n.replace(" ", "") for n in _prompts("ucf101").classnames]
    assert ucf == sorted(ucf) and ucf.index("HammerThrow") < ucf.index("Hammering")
    # CLIP_benchmark wds exports: the label ids of the dataset exported
    pets = _prompts("pets").classnames
    assert list(pets) == sorted(pets, key=str.lower) and pets[1] == "American Bulldog"
    assert _prompts("clevr").classnames == ("three", "four", "five", "six", "seven", "eight", "nine", "ten")
    fer = _prompts("fer2013").classnames
    assert list(fer) == sorted(fer) and fer[4] == "neutral"
    assert _prompts("eurosat").classnames[:2] == ("annual crop land", "forest")
    assert _prompts("caltech101").classnames[4] == "background"
    assert _prompts("rendered_sst2").classnames == ("negative", "positive")
    for name in ("food101", "dtd", "sun397"):
        names = [n.replace(" ", "_") for n in _prompts(name).classnames]
        assert names == sorted(names), name


def test_aliases_and_prefixes_resolve():
    for alias, name in CLIP_PROMPT_ALIASES.items():
        assert canonical_name(alias) == name and clip_prompts(alias) == clip_prompts(name), alias
    for given, name in {
        "ImageNet1k": "imagenet",
        "vtab/pets": "pets",
        "wds/vtab/caltech101": "caltech101",
        "vtab/clevr_count_all": "clevr",
        "wds/cars": "cars",
        " CIFAR10 ": "cifar10",
    }.items():
        assert canonical_name(given) == name, given
    assert clip_prompts("coco") is None and canonical_name("vtab/dmlab") is None
