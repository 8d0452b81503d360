"""Checkpoints by hub name (``mmkit.utils.hub``), offline, from a Hugging Face cache laid out in the hub's own
layout: ``models--{org}--{name}/{blobs,refs,snapshots}``, snapshot files linked to their blobs."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest
import torch

from mmkit.models import (
    CLIPConfig,
    FLAVAConfig,
    clip_model,
    flava_model,
    load,
    load_flava,
    save_dual_encoder_hf,
    save_flava_hf,
)
from mmkit.utils import InputError, MissingError
from mmkit.utils.hub import resolve_checkpoint
from tests.conftest import load_recipe, randomize_

pytest.importorskip("huggingface_hub")


def _cache_snapshot(cache: Path, repo_id: str, source: Path, commit: str, ref: str = "main") -> Path:
    """Copy ``source``'s files into ``cache`` as huggingface_hub stores a download of ``repo_id`` at ``commit``:
    each file a blob named by its hash, linked from ``snapshots/<commit>/``; ``refs/<ref>`` holds the commit."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for path in source.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(data)
            link = snapshot / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / ref).write_text(commit)
    return snapshot


def _flava_dir(directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    return save_flava_hf(randomize_(flava_model(FLAVAConfig.tiny()), seed=seed), directory)


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding ``org/flava-tiny`` (main: commit a…, v2: commit b…)."""
    cache = tmp_path / "hf-cache"
    first = _cache_snapshot(cache, "org/flava-tiny", _flava_dir(tmp_path / "src-a", 0), "a" * 40)
    second = _cache_snapshot(cache, "org/flava-tiny", _flava_dir(tmp_path / "src-b", 1), "b" * 40, ref="v2")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    return cache, first, second


def test_a_hub_name_loads_its_cached_snapshot_like_the_directory(hub):
    _, first, second = hub
    assert resolve_checkpoint("org/flava-tiny") == first
    by_name, by_path = load_flava("org/flava-tiny"), load_flava(first)
    assert by_name.load_report.kind == "transformers" and _same(by_name, by_path)
    assert _same(load("org/flava-tiny"), by_path)  # the loader of any family, by what the snapshot holds
    assert not _same(by_path, load_flava(second))  # the two snapshots differ: the next test means something


def test_a_revision_selects_its_snapshot(hub):
    _, first, second = hub
    assert resolve_checkpoint("org/flava-tiny@v2") == second
    assert resolve_checkpoint("org/flava-tiny@" + "b" * 40) == second
    assert resolve_checkpoint("org/flava-tiny@main") == first
    assert _same(load_flava("org/flava-tiny@v2"), load_flava(second))


def test_a_local_directory_wins_over_the_cache(hub, tmp_path):
    local = _flava_dir(tmp_path / "org" / "flava-tiny", 2)  # relative to the cwd: ./org/flava-tiny
    assert resolve_checkpoint("org/flava-tiny") == Path("org/flava-tiny")
    assert _same(load_flava("org/flava-tiny"), load_flava(local))


def test_names_missing_offline_and_paths_that_do_not_exist_are_one_line(hub, monkeypatch):
    import huggingface_hub

    with pytest.raises(
        MissingError,
        match=r"^org/other@v9 is not a local path and is not in the Hugging Face cache "
        r"\(HF_HUB_OFFLINE=1\): ",
    ) as err:
        load_flava("org/other@v9")
    assert "\n" not in str(err.value)
    with pytest.raises(MissingError, match="^org/flava-tiny@v3 is not a local path"):  # a ref the cache lacks
        resolve_checkpoint("org/flava-tiny@v3")

    def no_network(*args, **kwargs):
        raise AssertionError("a path was sent to the hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_network)
    for path in ("runs/demo/final", "./flava", "../flava", "~/nowhere-mmkit", "/nowhere/flava"):
        with pytest.raises(MissingError, match="does not exist"):
            load_flava(path)
    for bad in ("org/na me", "org/-x", "a--b/c", "org/x@", "org/x@a..b"):
        with pytest.raises(InputError, match="neither an existing path nor a hub name"):
            resolve_checkpoint(bad)


def test_evaluate_prints_one_error_line_for_a_name_not_cached(hub, capsys):
    assert load_recipe("recipes/flava/evaluate.py").main(["checkpoint=org/nothing", "tasks=retrieval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: org/nothing is not a local path and is not in the Hugging")


def test_without_huggingface_hub_a_name_names_the_extra(hub, monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails as if not installed
    with pytest.raises(MissingError, match=r"needs huggingface_hub: pip install 'mmkit\[hub\]'"):
        resolve_checkpoint("org/not-yet-resolved")
    assert resolve_checkpoint(str(hub[1])) == hub[1]  # paths never need it


def test_a_clip_by_name_evaluates_with_its_files(hub, tmp_path):
    """The evaluation loader takes a CLIP by name: the same weights, the cached tokenizer and preprocessor."""
    from mmkit.eval.loading import eval_transform, load_encoders
    from mmkit.tokenizers import train_wordpiece

    cache = hub[0]
    source = save_dual_encoder_hf(randomize_(clip_model(CLIPConfig.tiny()), seed=3), tmp_path / "clip-src")
    (source / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a red circle\ntwo blue squares\n")
    train_wordpiece([corpus], 100, min_frequency=1).save(source)
    snapshot = _cache_snapshot(cache, "openai/clip-tiny", source, "c" * 40)
    by_name, tokenizer = load_encoders("openai/clip-tiny@" + "c" * 40, log=lambda _: None)
    by_path, _ = load_encoders(str(snapshot), log=lambda _: None)
    assert _same(by_name, by_path) and tokenizer is not None
    assert eval_transform(by_name, "openai/clip-tiny")[0].config.mean == (0.5, 0.5, 0.5)


def test_finetune_starts_from_a_hub_name(hub, tmp_path):
    """``recipes/flava/finetune.py init_from=org/name``: the cached snapshot's encoders, named in the report."""
    from tests.data.conftest import png_bytes

    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(2):
                (tmp_path / split / cls / f"{i}.png").write_bytes(png_bytes(i + (100 if cls == "b" else 0))[0])
    run = tmp_path / "run"
    argv = [
        f"run_dir={run}",
        "init_from=org/flava-tiny@v2",
        "modality=image",
        "task=folder",
        f"train_path={tmp_path / 'train'}",
        f"val_path={tmp_path / 'val'}",
        "optim.total_steps=1",
        "eval_every=1",
        "batch_size=4",
        "head_hidden=8",
        "optim.warmup_steps=0",
        "progress=false",
    ]
    assert load_recipe("recipes/flava/finetune.py").main(argv) == 0
    report = (run / "load_report.txt").read_text()
    first = report.splitlines()[0]  # the v2 snapshot's encoders, every one loaded; only the head is new
    assert first.startswith(f"FLAVA encoders from {hub[2]} (transformers)")
    assert first.endswith("4 new, 0 of the checkpoint unused")
