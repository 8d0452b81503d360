"""The pretraining recipe: config handling, atomic checkpoints, exact resume after SIGKILL (DDP and FSDP2)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmkit.models import FLAVAConfig, flava_model_for_pretraining
from mmkit.train import CheckpointManager
from tests.conftest import load_recipe

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "flava" / "pretrain.py"


def _recipe_module():
    return load_recipe("recipes/flava/pretrain.py")


def test_config_keys_are_checked(tmp_path):
    recipe = _recipe_module()
    cfg = recipe.load_config(str(REPO / "recipes/flava/configs/demo.yaml"), ["optim.lr=0.01", "data.batch_size=8"])
    assert cfg.optim.lr == 0.01 and cfg.data.batch_size == 8 and cfg.preset == "tiny"
    with pytest.raises(ValueError, match="unknown config key 'optim.lrr'; did you mean 'lr'"):
        recipe.load_config(None, ["optim.lrr=1"])
    with pytest.raises(ValueError, match="unknown config key 'image.num_layer'"):
        recipe.load_config(None, ["model.image.num_layer=2"])
    with pytest.raises(ValueError, match="must look like key=value"):
        recipe.load_config(None, ["optim.lr"])
    assert recipe.load_config(None, ["compile=step", "model.pretraining.mim_target=pixels"]).compile == "step"
    with pytest.raises(ValueError, match="compile: expected one of 'none', 'layers', 'step', got True"):
        recipe.load_config(None, ["compile=true"])  # the old bool names the new values
    with pytest.raises(FileNotFoundError, match="config file .* does not exist"):
        recipe.load_config(str(tmp_path / "nope.yaml"), [])
    recipe.load_config(str(REPO / "recipes/flava/configs/demo.yaml"), [])
    for name in ("medium", "flava_full"):  # valid keys; they need a tokenizer checkpoint (or pixel targets) to run
        recipe.load_config(str(REPO / f"recipes/flava/configs/{name}.yaml"), ["model.pretraining.mim_target=pixels"])


def _tiny():
    torch.manual_seed(0)
    model = flava_model_for_pretraining(FLAVAConfig.tiny(text={"vocab_size": 100}, codebook={"vocab_size": 32}))
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=1e-3)
    model(
        input_ids=None, masked_input_ids=torch.randint(5, 100, (2, 6)), mlm_labels=torch.randint(5, 100, (2, 6))
    ).loss.backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_keep_and_interrupted_save(tmp_path, monkeypatch):
    import mmkit.train.checkpoint as ckpt_mod

    model, opt = _tiny()
    mgr = CheckpointManager(tmp_path / "ck", keep=2)
    for step in (1, 2, 3):
        mgr.save(step, model, opt)
    assert [p.name for p in mgr.complete()] == ["step_00000002", "step_00000003"]
    # a crash in the middle of the next save
    real_save = ckpt_mod.dcp.save

    def crashing_save(state, checkpoint_id, **options):
        real_save(state, checkpoint_id=checkpoint_id, **options)
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_mod.dcp, "save", crashing_save)
    with pytest.raises(OSError, match=r"could not write checkpoint .*step_00000004\.tmp: disk full"):
        mgr.save(4, model, opt)
    monkeypatch.setattr(ckpt_mod.dcp, "save", real_save)
    assert mgr.latest().name == "step_00000003" and (tmp_path / "ck" / "step_00000004.tmp").exists()
    fresh, fresh_opt = _tiny()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    meta = CheckpointManager(tmp_path / "ck").load(mgr.latest(), fresh, fresh_opt)
    assert meta["step"] == 3 and meta["world_size"] == 1
    assert not (tmp_path / "ck" / "step_00000004.tmp").exists()  # stale partial save cleaned on start
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), n
    assert fresh_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        mgr.load(tmp_path / "ck" / "step_00000009", fresh, fresh_opt)


def _run(run_dir, data_dir, strategy, steps, extra_env=None, check=True, nproc=2, extra=()):
    """The demo config, tiny and short, streamed, on ``nproc`` ranks (DDP: with 2 data workers each)."""
    env = {**os.environ, "MMKIT_DATA": str(data_dir), **(extra_env or {})}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(RECIPE),
        "--config",
        str(REPO / "recipes/flava/configs/demo.yaml"),
        f"run_dir={run_dir}",
        f"distributed={strategy}",
        f"optim.total_steps={steps}",
        "optim.warmup_steps=2",
        "checkpoint.every=3",
        "log_every=1",
        "eval_every=1000",
        "eval_samples=32",
        "data.batch_size=8",
        "model.pretraining.mim_target=pixels",
        f"data.num_workers={2 if strategy == 'ddp' else 0}",
        "data.streaming=true",
        "progress=false",
        *extra,
    ]
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert not check or out.returncode == 0, f"exit {out.returncode}; stderr ends:\n{out.stderr[-3000:]}"
    return out


def _losses(run_dir):
    per_step = {}
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["split"] == "train":
            per_step[r["step"]] = r["loss/total"]
    return per_step


def _crash(run_dir, data_dir, strategy):
    """An 8-step run killed (SIGKILL) at step 5: one checkpoint, of step 3."""
    crashed = _run(run_dir, data_dir, strategy, 8, {"MMKIT_FAULT_KILL_AT_STEP": "5"}, check=False)
    assert crashed.returncode != 0
    ckpts = sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir())
    assert ckpts == ["step_00000003"], ckpts


@pytest.fixture(scope="module")
def fsdp_crashed(tmp_path_factory, builtin_data):
    """One FSDP2 run killed at step 5, for the resumes on two and on three ranks (each resumes a copy: a run
    directory moved elsewhere resumes, its run_dir being a setting a resume may change)."""
    run = tmp_path_factory.mktemp("fsdp_crashed") / "run"
    _crash(run, builtin_data, "fsdp")
    return run


def _crashed_copy(request, strategy, run_dir, data_dir):
    if strategy == "fsdp":
        shutil.copytree(request.getfixturevalue("fsdp_crashed"), run_dir)
    else:
        _crash(run_dir, data_dir, strategy)


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, strategy, builtin_data, request):
    from safetensors.torch import load_file

    data = builtin_data
    ref = _run(tmp_path / "ref", data, strategy, 8)
    assert "Traceback" not in ref.stderr, ref.stderr[-3000:]
    _crashed_copy(request, strategy, tmp_path / "res", data)
    _run(tmp_path / "res", data, strategy, 8)
    a, b = _losses(tmp_path / "ref"), _losses(tmp_path / "res")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6, (step, a[step], b[step])
    wa = load_file(tmp_path / "ref" / "final" / "model.safetensors")
    wb = load_file(tmp_path / "res" / "final" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-6, rtol=0, msg=k)
    assert (tmp_path / "ref" / "losses.png").exists() and (tmp_path / "ref" / "final" / "hf" / "config.json").exists()
    if strategy == "fsdp":
        # meta_init=true: built on meta, each rank materialising its shard; it starts at the loss of a whole
        # build (other draws, same rules) and exports every tensor, finite
        _run(tmp_path / "meta", data, strategy, 2, extra=("meta_init=true",))
        m = _losses(tmp_path / "meta")
        assert sorted(m) == [1, 2] and abs(m[1] - a[1]) < 0.05 * a[1], (m, a)
        wm = load_file(tmp_path / "meta" / "final" / "model.safetensors")
        assert wm.keys() == wa.keys() and all(torch.isfinite(v).all() for v in wm.values())
        assert not all(torch.equal(wa[k], wm[k]) for k in wa)  # other draws: the meta path really ran


def test_held_out_pairs_that_are_all_corrupt_are_a_clear_error(tmp_path):
    import tarfile

    from mmkit.data import shapes_dataset
    from mmkit.train import teardown_distributed
    from tests.data.conftest import add

    data = shapes_dataset(tmp_path / "data", num_train=16, num_val=4, num_images=8, num_text=32, per_shard=16)
    val = tmp_path / "val-000.tar"
    with tarfile.open(val, "w") as tar:
        for i in range(5):
            add(tar, f"{i:03d}.png", b"\x89PNG\r\n\x1a\n not an image")
            add(tar, f"{i:03d}.txt", b"a red circle")
    recipe = _recipe_module()
    train, text = json.dumps([str(p) for p in data.train_pairs]), json.dumps([str(p) for p in data.text])
    cfg = recipe.load_config(
        str(REPO / "recipes/flava/configs/demo.yaml"),
        [
            f"run_dir={tmp_path / 'run'}",
            "data.dataset=files",
            f"data.train_pairs={train}",
            f"data.text={text}",
            f"data.val_pairs={json.dumps([str(val)])}",
            "data.image_prob=0",
            "data.batch_size=2",
            "data.num_workers=0",
            "eval_samples=4",
            "progress=false",
            "distributed=none",
            "model.pretraining.mim_target=pixels",
        ],
    )
    r = recipe.FLAVAPretrainRecipe(cfg)
    expected = r"none of the first 4 held-out pairs of source 'val' \(.*val-000.tar\) could be read \(4 skipped\)"
    try:
        r.setup()
        with pytest.raises(ValueError, match=expected + ".*cannot decode image"):
            r.evaluate()
    finally:
        r.close()  # the loaders, the logger and the run directory's hold
        teardown_distributed()


def test_the_readme_object_storage_config_loads(tmp_path):
    """The README's S3 config is a valid pretraining config (keys, types, streaming on)."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("# my_s3.yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "my_s3.yaml").write_text(block)
    assert "codebook: {checkpoint: flava-codebook/}" in block  # a random tokenizer would be refused
    from mmkit.tokenizers import DalleDecoder, DalleEncoder, DiscreteVAE, save_dvae

    sizes = dict(hidden_size=8, vocab_size=48, num_groups=4, blocks_per_group=1)
    tok = save_dvae(DiscreteVAE(DalleEncoder(**sizes), DalleDecoder(**sizes, init_size=8)), tmp_path / "tok", 112)
    cfg = load_recipe("recipes/flava/pretrain.py").load_config(
        str(tmp_path / "my_s3.yaml"), [f"model.codebook.checkpoint={tok}"]
    )
    assert cfg.data.streaming and cfg.data.train_pairs[0].startswith("s3://") and cfg.preset == "full"


@pytest.mark.slow
def test_fsdp_run_killed_on_two_ranks_resumes_on_three(tmp_path, builtin_data, fsdp_crashed):
    """FSDP2 reshards the model and optimiser through DCP; the streamed data of the begun epoch is dealt
    to the three new ranks (exactly once: tests/data/test_streaming.py)."""
    data = builtin_data
    shutil.copytree(fsdp_crashed, tmp_path / "run")
    resumed = _run(tmp_path / "run", data, "fsdp", 8, nproc=3)
    assert "elastic resume: the checkpoint was written by 2 rank(s), this run has 3" in resumed.stdout
    assert "resumed from" in resumed.stdout and "at step 3" in resumed.stdout
    assert sorted(_losses(tmp_path / "run")) == list(range(1, 9))  # steps 4-5 again, then on to 8
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()


def test_meta_init_refuses_towers(tmp_path):
    recipe = _recipe_module()
    with pytest.raises(ValueError, match="meta_init=true cannot start encoders from towers"):
        recipe.load_config(None, ["meta_init=true", f"model.image.init_from={tmp_path}"])
