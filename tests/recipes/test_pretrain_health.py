"""FLAVA learns at the tiny width: the initialisation scaled to the width gets the held-out embeddings out
of their collapsed start within a hundred steps on the built-in data, where the released model's std
(0.02, sized for width 768) leaves every caption at one embedding; the stuck-run warning says so for
the latter and stays quiet for the former. A random tokenizer is refused for pretraining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mmkit.utils import ConfigError
from tests.conftest import load_recipe

REPO = Path(__file__).resolve().parents[2]
DEMO = str(REPO / "recipes/flava/configs/demo.yaml")


@pytest.fixture(scope="module")
def small_shapes(tmp_path_factory):
    from mmkit.data import shapes_dataset

    return shapes_dataset(
        tmp_path_factory.mktemp("shapes"), num_train=2048, num_val=128, num_images=256, num_text=1024, per_shard=1024
    )


def _train(data, run_dir: Path, extra: list[str]) -> dict:
    """100 steps of the demo config (batch 32, one process) on ``data``; returns the last evaluation."""

    recipe = load_recipe("recipes/flava/pretrain.py")
    paths = {k: json.dumps([str(p) for p in getattr(data, k)]) for k in ("train_pairs", "val_pairs", "images", "text")}
    cfg = recipe.load_config(
        DEMO,
        [
            f"run_dir={run_dir}",
            "data.dataset=files",
            *(f"data.{k}={v}" for k, v in paths.items()),
            "data.batch_size=32",
            "data.num_workers=0",
            "data.vocab_size=300",
            "eval_samples=128",
            "eval_every=1000",
            "eval_at_start=false",
            "optim.total_steps=100",
            "optim.warmup_steps=10",
            "log_every=50",
            "checkpoint.every=1000",
            "progress=false",
            "distributed=none",
            "health.stuck_after=100",
            "model.pretraining.mim_target=pixels",
            *extra,
        ],
    )
    trained = _setup_and_train(recipe, cfg)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [e for e in evals if e["split"] == "eval"][-1]
    # the same weights score the same: each evaluation masks and pairs the held-out samples alike
    again = trained.evaluate()
    assert {k: again[k] for k in last if k in again} == pytest.approx({k: last[k] for k in last if k in again})
    return last


@pytest.mark.slow
def test_tiny_flava_leaves_the_collapsed_start_and_the_old_init_is_called_stuck(small_shapes, tmp_path, capsys):
    new = _train(small_shapes, tmp_path / "width-scaled", [])
    new_err = capsys.readouterr().err
    old = _train(small_shapes, tmp_path / "released-std", ["model.init_std=0.02"])
    old_err = capsys.readouterr().err
    # the released std at width 32: every caption (and nearly every image) at one embedding, loss at chance
    assert old["health/text_cosine"] > 0.999 and old["health/image_cosine"] > 0.99
    assert old["loss/global_contrastive"] > 0.99 * 3.4657  # ln 32
    assert "training looks stuck" in old_err and "text embeddings are collapsed" in old_err
    assert "has not moved from chance (ln 32" in old_err and "model.init_std" in old_err
    # the width rule: the towers tell inputs apart and the contrastive loss has left chance
    assert new["health/text_cosine"] < 0.8 and new["health/image_cosine"] < 0.8
    assert new["loss/global_contrastive"] < 0.8 * 3.4657
    assert new["retrieval/image_to_text_r1"] > 5 * new["retrieval/chance_r1"]
    assert "training looks stuck" not in new_err


def test_a_random_tokenizer_is_refused_for_pretraining_unless_allowed():
    recipe = load_recipe("recipes/flava/pretrain.py")
    tokens = ["model.pretraining.mim_target=tokens", "model.codebook.checkpoint=null"]  # the demo's, untrained
    refused = r"model.codebook: the image tokenizer is randomly initialised.*checkpoint.*'pixels'.*allow_random=true"
    with pytest.raises(ConfigError, match=refused):
        recipe.load_config(DEMO, tokens)
    for name in ("medium", "flava_full"):  # they name a tokenizer checkpoint to set
        with pytest.raises(ConfigError, match="randomly initialised"):
            recipe.load_config(str(REPO / f"recipes/flava/configs/{name}.yaml"), [])
    allowed = recipe.load_config(DEMO, [*tokens, "model.codebook.allow_random=true"])
    assert recipe.model_config(allowed).codebook.allow_random
    recipe.load_config(DEMO, [*tokens, "model.pretraining.weights.mim=0", "model.pretraining.weights.mmm_image=0"])
    demo = recipe.model_config(recipe.load_config(DEMO, []))  # the demo's choice: the built-in trained tokenizer
    assert demo.pretraining.mim_target == "tokens" and demo.codebook.checkpoint == recipe.BUILTIN_TOKENIZER


def test_the_library_builder_warns_about_a_random_tokenizer():
    from mmkit.models import FLAVAConfig, RandomCodebookWarning, flava_model_for_pretraining

    with pytest.warns(RandomCodebookWarning, match="randomly initialised"):
        flava_model_for_pretraining(FLAVAConfig.tiny())
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        flava_model_for_pretraining(FLAVAConfig.tiny(**{"codebook.allow_random": True}))
        flava_model_for_pretraining(FLAVAConfig.tiny(**{"pretraining.mim_target": "pixels"}))


@pytest.mark.slow
def test_the_builtin_tokenizer_is_made_once_and_its_cached_ids_are_used(tmp_path, monkeypatch, capsys):
    """``model.codebook.checkpoint=builtin`` (the demo's): the dVAE of recipes/dalle/configs/shapes_tiny.yaml is
    trained once beside the data (a few steps here), the built-in shards are tokenized with it, pretraining
    reads those ids instead of running it, and a second run reuses everything."""
    import functools

    import mmkit.data
    import mmkit.data.builtin
    from mmkit.data import shapes_dataset

    small = shapes_dataset(
        tmp_path / "data" / "shapes-v1", num_train=96, num_val=32, num_images=32, num_text=96, per_shard=48
    )
    monkeypatch.setattr(mmkit.data, "shapes_dataset", lambda *a, **k: small)
    monkeypatch.setattr(mmkit.data.builtin, "shapes_dataset", lambda *a, **k: small)
    recipe = load_recipe("recipes/flava/pretrain.py")
    monkeypatch.setattr(recipe, "builtin_tokenizer", functools.partial(recipe.builtin_tokenizer, steps=3))

    def run(name):
        cfg = recipe.load_config(
            DEMO,
            [
                f"run_dir={tmp_path / name}",
                "data.batch_size=8",
                "data.num_workers=0",
                "data.vocab_size=200",
                "optim.total_steps=3",
                "eval_samples=16",
                "progress=false",
                "distributed=none",
                "checkpoint.every=100",
            ],
        )
        return _setup_and_train(recipe, cfg)

    first = run("a")
    out = capsys.readouterr()
    made = tmp_path / "data" / "shapes-v1-dvae"
    assert "making the built-in image tokenizer" in out.err and (made / "DONE").is_file()
    assert first.model_cfg.codebook.checkpoint == str(made / "final") and first.model_cfg.codebook.vocab_size == 512
    assert set(first.data.cached_tokens) == {"pairs", "images"} and "cached tokenizer ids in pairs, images" in out.out
    assert [p.parent for p in first.paths.train_pairs] == [made / "pairs"] * 2
    assert first.paths.codebook == made / "final"  # the built-in tokenizer travels with its data
    stamp = (made / "final" / "encoder.safetensors").stat().st_mtime_ns
    second = run("b")
    assert "making the built-in image tokenizer" not in capsys.readouterr().err
    assert (made / "final" / "encoder.safetensors").stat().st_mtime_ns == stamp
    assert set(second.data.cached_tokens) == {"pairs", "images"}
    with pytest.raises(ConfigError, match=r"checkpoint=builtin is the tokenizer of the built-in shapes pictures"):
        recipe.load_config(DEMO, ["data.dataset=files", "data.train_pairs=[x.tar]"])


def _setup_and_train(recipe, cfg):
    """One in-process pretraining run of ``cfg`` (the process group and the run directory released
    however it ends)."""
    from mmkit.train import run_training

    r = recipe.FLAVAPretrainRecipe(cfg)
    run_training(r)
    return r
