"""A checkpoint is what its config.json says, checked before the model is built (mmkit.models.fit_check):
a config that disagrees with its weights is refused in one line naming the tensors and the fields, for
FLAVA, CLIP and SigLIP, mmkit exports and transformers directories; a config asking for huge sizes is
refused before anything of that size is allocated."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import save_file

from mmkit.models import (
    CLIPConfig,
    export_config,
    flava_model_for_classification,
    load,
    load_dual_encoder,
    load_flava,
)
from mmkit.models.clip import clip_model
from mmkit.models.fit_check import group_names
from mmkit.utils import CheckpointMismatchError
from mmkit.utils.weights import read_weight_shapes, read_weights
from tests.conftest import hf_tiny_config, load_recipe, make_mmkit_export

REPO = Path(__file__).resolve().parents[2]
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    """A tiny FLAVA pretraining export (encoders, heads, codebook), as recipes/flava/pretrain.py writes it."""
    return make_mmkit_export(tmp_path_factory.mktemp("fit") / "final", ["a red ball", "two blue boxes"])


def _edited(src: Path, dst: Path, edit) -> Path:
    """A copy of checkpoint directory ``src`` whose config.json ``edit(dict)`` changed."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    edit(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _refused(load, *args, **kwargs) -> str:
    with pytest.raises(CheckpointMismatchError) as err:
        load(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message, message
    return message


def test_group_names_is_compact():
    names = [f"image_encoder.encoder.layers.{i}.{p}" for i in range(12) for p in ("norm1.weight", "mlp.fc1.bias")]
    names += ["image_projection.weight", "image_projection.bias", "logit_scale", "text_encoder.encoder.layers.3.x"]
    assert group_names(names) == (
        "image_encoder.encoder.layers.{0..11}.* (24 tensors), image_projection.* (2 tensors), logit_scale, "
        "text_encoder.encoder.layers.3.x"
    )
    assert group_names([f"a.b.{i}.w" for i in (1, 5)] + ["a.b.1.v"]) == "a.b.{1,5}.* (3 tensors)"


def test_an_mmkit_export_with_fewer_layers_in_its_config_is_refused(export, tmp_path):
    layers = json.loads((export / "config.json").read_text())["image"]["num_layers"]
    cut = _edited(export, tmp_path / "cut", lambda c: c["image"].update(num_layers=layers - 1))
    message = _refused(load_flava, cut)
    assert f"config.json says image.num_layers={layers - 1} but the weights hold {layers} image layers" in message
    assert f"in the checkpoint, not in the model: image_encoder.encoder.layers.{layers - 1}.* (12 tensors)" in message
    assert "mim_head" not in message  # the heads a FLAVAModel leaves out are not the problem
    # finetuning from it (init_from=) is refused the same way
    message = _refused(flava_model_for_classification, 2, "image", checkpoint=cut, hidden_dim=8)
    assert f"image.num_layers={layers - 1}" in message and "image_encoder.encoder.layers." in message


def test_a_pretraining_export_still_loads_with_its_heads_reported_once(export):
    model = load_flava(export)
    unused = model.load_report.unused
    assert unused and len(unused) == len(set(unused))
    assert {k.split(".")[0] for k in unused} >= {"mim_head", "mlm_head", "itm_head", "image_tokenizer"}
    assert not any(k.startswith("model.") for k in unused)
    assert str(model.load_report).count("unused: mim_head.*") == 1


def test_a_transformers_flava_directory_with_fewer_layers_is_refused(tmp_path):
    torch.manual_seed(0)
    transformers.FlavaForPreTraining(hf_tiny_config()).save_pretrained(tmp_path / "hf")
    assert load_flava(tmp_path / "hf").load_report.unused  # fits as saved: heads and codebook unused

    def cut(cfg: dict) -> None:
        for key in ("image_config", "image_config_dict"):
            if cfg.get(key):
                cfg[key]["num_hidden_layers"] = 1

    directory = _edited(tmp_path / "hf", tmp_path / "cut", cut)
    for loader in (load_flava, load):
        message = _refused(loader, directory)
        assert "config.json says image_config.num_hidden_layers=1 but the weights hold 2 image layers" in message
        assert "image_encoder.encoder.layers.1.* (12 tensors)" in message


@pytest.mark.parametrize("kind", ["clip", "siglip"])
def test_a_transformers_clip_or_siglip_directory_with_fewer_layers_is_refused(kind, tmp_path):
    config_cls, model_cls = {
        "clip": (transformers.CLIPConfig, transformers.CLIPModel),
        "siglip": (transformers.SiglipConfig, transformers.SiglipModel),
    }[kind]
    cfg = config_cls(
        vision_config=dict(TOWER, image_size=32, patch_size=8),
        text_config=dict(TOWER, vocab_size=100, max_position_embeddings=16),
    )
    model = model_cls(cfg)
    model.save_pretrained(tmp_path / "hf")
    load_dual_encoder(tmp_path / "hf")  # fits as saved
    directory = _edited(tmp_path / "hf", tmp_path / "cut", lambda c: c["vision_config"].update(num_hidden_layers=1))
    message = _refused(load_dual_encoder, directory)
    assert "config.json says vision_config.num_hidden_layers=1 but the weights hold 2 image layers" in message
    assert "in the checkpoint, not in the model: image_encoder.encoder.layers.1.* (12 tensors)" in message


def test_an_mmkit_clip_export_that_disagrees_with_its_config_is_refused(tmp_path):
    cfg = CLIPConfig.tiny()
    (tmp_path / "clip").mkdir()  # what recipes/clip/pretrain.py exports: the dual encoder's weights, export_config
    state = {k: v.contiguous() for k, v in clip_model(cfg).state_dict().items()}
    save_file(state, str(tmp_path / "clip/model.safetensors"))
    (tmp_path / "clip/config.json").write_text(json.dumps(export_config(cfg)))
    load_dual_encoder(tmp_path / "clip")  # fits as saved
    layers = cfg.text.num_layers
    cut = _edited(tmp_path / "clip", tmp_path / "cut", lambda c: c["config"]["text"].update(num_layers=layers + 1))
    message = _refused(load_dual_encoder, cut)
    assert f"config.json says text.num_layers={layers + 1} but the weights hold {layers} text layers" in message
    assert f"missing from the checkpoint: text_encoder.encoder.layers.{layers}.* (12 tensors)" in message
    wide = _edited(tmp_path / "clip", tmp_path / "wide", lambda c: c["config"]["image"].update(mlp_dim=96))
    message = _refused(load_dual_encoder, wide)
    assert f"config.json says image.mlp_dim=96 but the weights hold {cfg.image.mlp_dim}-wide image MLPs" in message
    assert "shape mismatch: image_encoder.encoder.layers.{0,1}.* (6 tensors)" in message


def test_shapes_come_from_every_file_layout(tmp_path):
    torch.manual_seed(0)
    model = transformers.FlavaModel(hf_tiny_config())
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    (tmp_path / "bin").mkdir()  # transformers 5 writes safetensors only: the .bin of older checkpoints by hand
    torch.save(model.state_dict(), tmp_path / "bin/pytorch_model.bin")
    shutil.copy(tmp_path / "sharded/config.json", tmp_path / "bin/config.json")
    assert len(json.loads((tmp_path / "sharded/model.safetensors.index.json").read_text())["weight_map"]) > 1
    for directory in ("sharded", "bin"):
        want = {k: v.shape for k, v in read_weights(tmp_path / directory).items()}
        assert read_weight_shapes(tmp_path / directory) == want
        load_flava(tmp_path / directory)
    cut = _edited(tmp_path / "sharded", tmp_path / "cut", lambda c: c["text_config"].update(num_hidden_layers=1))
    assert "text_config.num_hidden_layers=1 but the weights hold 2 text layers" in _refused(load_flava, cut)


_CAPPED_LOAD = """
import json, resource, sys
import torch
import mmkit.models
from mmkit.utils import CheckpointMismatchError

size = int(next(l for l in open("/proc/self/status") if l.startswith("VmSize:")).split()[1]) * 1024
cap = size + 2**30  # what the imports took, plus 1 GiB: far below the 17 GB the config asks for
resource.setrlimit(resource.RLIMIT_AS, (cap, resource.getrlimit(resource.RLIMIT_AS)[1]))
out = {}
try:
    mmkit.models.load_flava(sys.argv[1])
except CheckpointMismatchError as e:
    out["refused"] = str(e)
try:  # the cap bites: a tensor of a 65536-wide layer's size cannot be allocated under it
    torch.empty(65536, 65536 // 2)
    out["allocated"] = True
except (RuntimeError, MemoryError):
    out["allocated"] = False
print(json.dumps(out))
"""


def test_a_huge_config_is_refused_before_allocating(export, tmp_path):
    huge = _edited(export, tmp_path / "huge", lambda c: c["image"].update(hidden_size=65536))
    run = subprocess.run(
        [sys.executable, "-c", _CAPPED_LOAD, str(huge)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["allocated"] is False  # the address-space cap is real
    assert "config.json says image.hidden_size=65536 but the weights hold 32-wide image layers" in out["refused"]
    assert "\n" not in out["refused"]


def test_the_evaluation_command_prints_one_error_line(export, tmp_path, capsys):
    layers = json.loads((export / "config.json").read_text())["image"]["num_layers"]
    cut = _edited(export, tmp_path / "cut", lambda c: c["image"].update(num_layers=layers - 1))
    evaluate = load_recipe("recipes/flava/evaluate.py")
    assert evaluate.main([f"checkpoint={cut}", "tasks=zero_shot:color", f"out={tmp_path / 'eval.json'}"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: checkpoint "), err
    assert f"image.num_layers={layers - 1}" in err[0] and "image_encoder.encoder.layers." in err[0]
    assert not (tmp_path / "eval.json").exists()
