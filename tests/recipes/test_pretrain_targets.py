"""Pretraining with a trained tokenizer, with cached token ids, with pixel targets and with the fast
image path (single process, streamed shards)."""

import json
from pathlib import Path

import pytest
import torch

from tests.conftest import load_recipe

REPO = Path(__file__).resolve().parents[2]


def _recipe():
    return load_recipe("recipes/flava/pretrain.py")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The built-in data, a small trained-size dVAE (random weights) and the pair/image shards cached with it."""
    from mmkit.data import shapes_dataset
    from mmkit.data.token_cache import main as cache_main
    from mmkit.tokenizers import DalleDecoder, DalleEncoder, DiscreteVAE, save_dvae

    root = tmp_path_factory.mktemp("targets")
    data = shapes_dataset(root / "data")
    sizes = dict(hidden_size=8, vocab_size=48, num_groups=4, blocks_per_group=1)
    torch.manual_seed(0)
    tok = save_dvae(DiscreteVAE(DalleEncoder(**sizes), DalleDecoder(**sizes, init_size=8)), root / "tok", 32)
    cache_main(["--shards", *map(str, data.train_pairs), "--tokenizer", str(tok), "--out", str(root / "cached")])
    return root, data, tok


def _run(recipe, run_dir, data, train_pairs, *extra):
    from mmkit.train import run_training

    # a random tokenizer allowed: these tests compare targets and losses, not what is learned
    args = [
        f"run_dir={run_dir}",
        "data.dataset=files",
        f"data.train_pairs={json.dumps([str(p) for p in train_pairs])}",
        f"data.val_pairs={json.dumps([str(p) for p in data.val_pairs])}",
        f"data.text={json.dumps([str(p) for p in data.text])}",
        "data.image_prob=0",
        "data.text_prob=0.3",
        "data.pair_prob=0.7",
        "data.batch_size=8",
        "data.num_workers=0",
        "optim.total_steps=5",
        "optim.warmup_steps=1",
        "log_every=1",
        "eval_samples=16",
        "checkpoint.every=100",
        "progress=false",
        "data.streaming=true",
        "model.pretraining.mim_target=tokens",
        "model.codebook.checkpoint=null",
        "model.codebook.allow_random=true",
        *extra,
    ]
    r = recipe.FLAVAPretrainRecipe(recipe.load_config(str(REPO / "recipes/flava/configs/demo.yaml"), args))
    run_training(r)
    losses = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["split"] == "train":
            losses[row["step"]] = {k: v for k, v in row.items() if k.startswith("loss/")}
    return r, losses


@pytest.mark.slow
def test_cached_ids_give_the_losses_of_the_tokenizer_in_the_loop(setup, tmp_path):
    root, data, tok = setup
    recipe = _recipe()
    ckpt = f"model.codebook.checkpoint={tok}"
    loop, a = _run(recipe, tmp_path / "loop", data, data.train_pairs, ckpt)
    cached, b = _run(recipe, tmp_path / "cached", data, sorted((root / "cached").glob("*.tar")), ckpt)
    assert loop.data.cached_tokens == {} and set(cached.data.cached_tokens) == {"pairs"}
    assert loop.model_cfg.codebook.vocab_size == 48 and loop.raw_model.mim_head.decoder.out_features == 48
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        for k in a[step]:
            assert a[step][k] == pytest.approx(b[step][k], abs=1e-5), (step, k)


@pytest.mark.slow
def test_cached_ids_from_another_tokenizer_or_with_random_crops_are_refused(setup, tmp_path):
    root, data, _ = setup
    recipe = _recipe()
    cached = sorted((root / "cached").glob("*.tar"))
    with pytest.raises(ValueError, match="cached token ids in pairs do not fit this run: tokenizer"):
        _run(recipe, tmp_path / "a", data, cached)  # the demo's own (random) codebook, not the cache's
    with pytest.raises(ValueError, match="centre crop.*random_crop"):
        _run(recipe, tmp_path / "b", data, cached, "data.random_crop=true")


@pytest.mark.slow
def test_pixel_targets_train_without_a_tokenizer(setup, tmp_path):
    _, data, _ = setup
    r, losses = _run(_recipe(), tmp_path / "px", data, data.train_pairs, "model.pretraining.mim_target=pixels")
    assert r.raw_model.image_tokenizer is None
    assert any("loss/mmm_image" in v for v in losses.values())
    assert all(torch.isfinite(torch.tensor(list(v.values()))).all() for v in losses.values())


@pytest.mark.slow
def test_fast_images_change_only_the_tokenizer_input(setup, tmp_path):
    """``data.fast_images``: uint8 in the workers, normalised on the device; the encoder pixels are the
    default path's, so the first paired step's contrastive and ITM losses agree (the block-reduced
    tokenizer input is checked in tests/data/test_transforms.py)."""
    _, data, _ = setup
    recipe = _recipe()
    _, slow = _run(recipe, tmp_path / "slow", data, data.train_pairs)
    _, fast = _run(recipe, tmp_path / "fast", data, data.train_pairs, "data.fast_images=true")
    first_pair = min(s for s in slow if "loss/global_contrastive" in slow[s])
    for k in ("loss/global_contrastive", "loss/itm"):
        assert fast[first_pair][k] == pytest.approx(slow[first_pair][k], abs=1e-5), k
