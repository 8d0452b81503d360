"""``load_flava``: FLAVA of every checkpoint layout mmkit reads, loaded strictly (``pretraining=True``: heads too)."""

import json

import pytest
import torch

from mmkit.models import FLAVAConfig, flava_model, load_flava
from mmkit.utils import CheckpointMismatchError
from tests.conftest import hf_tiny_config, make_mmkit_export, randomize_


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=0, rtol=0, msg=k)


def test_a_transformers_pretraining_directory_gives_its_encoders(tmp_path, images, text_batch):
    from transformers import FlavaForPreTraining

    torch.manual_seed(0)
    hf = randomize_(FlavaForPreTraining(hf_tiny_config())).eval()
    hf.save_pretrained(tmp_path)
    model = load_flava(tmp_path)
    assert not model.training and model.load_report.kind == "transformers"
    assert any("mim_head" in k or "mmm" in k for k in model.load_report.unused)  # heads named, not loaded
    ids, mask = text_batch
    with torch.no_grad():
        got_image, got_text = model.encode_image(images), model.encode_text(ids, mask)
        ref_image, ref_text = (
            hf.flava.image_model(pixel_values=images),
            hf.flava.text_model(input_ids=ids, attention_mask=mask),
        )
    torch.testing.assert_close(got_image.last_hidden_state, ref_image.last_hidden_state, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_text.last_hidden_state, ref_text.last_hidden_state, atol=1e-5, rtol=0)


def test_an_mmkit_pretraining_export_and_a_finetune_export(tmp_path):
    from safetensors.torch import load_file, save_file

    from mmkit.models import flava_model_for_classification

    export = make_mmkit_export(tmp_path / "final", ["a red ball", "two blue boxes"])
    model = load_flava(export)
    weights = load_file(export / "model.safetensors")
    ref = flava_model(FLAVAConfig.from_dict(json.loads((export / "config.json").read_text())))
    ref.load_state_dict({k.removeprefix("model."): v for k, v in weights.items() if k.startswith("model.")})
    _same_weights(model, ref)
    assert model.load_report.kind == "mmkit" and model.load_report.unused  # the pretraining heads

    # a finetune export (what recipes/flava/finetune.py writes to <run>/best): encoders + a head
    clf = flava_model_for_classification(3, "image", checkpoint=export, hidden_dim=8)
    randomize_(clf, seed=5)
    best = tmp_path / "best"
    best.mkdir()
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, str(best / "model.safetensors"))
    (best / "config.json").write_text(json.dumps(clf.model.config.to_dict()))
    encoders = load_flava(best)
    _same_weights(encoders, clf.model)
    assert all(k.startswith("head.") for k in encoders.load_report.unused)


def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_tensors(tmp_path):
    export = make_mmkit_export(tmp_path / "final", ["a red ball"])
    cfg = json.loads((export / "config.json").read_text())
    deeper = FLAVAConfig.from_dict(cfg).replace(**{"image.num_layers": 3})
    missing = r"image.num_layers=3 but .* 2 image layers; missing from the checkpoint: image_encoder.encoder.layers.2"
    with pytest.raises(CheckpointMismatchError, match=missing):
        load_flava(export, config=deeper)
    wider = FLAVAConfig.from_dict(cfg).replace(**{"text.vocab_size": cfg["text"]["vocab_size"] + 7})
    shape = r"word_embeddings.weight: checkpoint \(\d+, 32\) vs model \(\d+, 32\)"
    with pytest.raises(CheckpointMismatchError, match=shape):
        load_flava(export, config=wider)
    with pytest.raises(ValueError, match="has no config.json: pass config="):
        load_flava(export / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_flava(tmp_path / "nowhere")
    lone = load_flava(export / "model.safetensors", config=FLAVAConfig.from_dict(cfg))
    _same_weights(lone, load_flava(export))


def test_pretraining_true_gives_the_whole_pretraining_model_of_an_export(tmp_path):
    from safetensors.torch import load_file

    from mmkit.models import FLAVAForPreTraining

    export = make_mmkit_export(tmp_path / "final", ["a red ball"])
    model = load_flava(export, pretraining=True, attention_backend="math")
    assert isinstance(model, FLAVAForPreTraining) and not model.training and model.config.attention_backend == "math"
    weights = load_file(export / "model.safetensors")
    assert model.state_dict().keys() == weights.keys() and model.load_report.kind == "mmkit"
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v), k
    deeper = FLAVAConfig.from_dict(json.loads((export / "config.json").read_text())).replace(**{"text.num_layers": 3})
    with pytest.raises(CheckpointMismatchError, match=r"FLAVAForPreTraining .*text.num_layers=3 but .* 2 text layers"):
        load_flava(export, pretraining=True, config=deeper)


def test_load_picks_the_family_and_export_config_serves_every_family(tmp_path):
    from mmkit.models import CLIPConfig, checkpoint_family, export_config, load

    export = make_mmkit_export(tmp_path / "final", ["a red ball"])
    assert checkpoint_family(export) == "flava" and checkpoint_family(export / "model.safetensors") == "flava"
    _same_weights(load(export), load_flava(export))
    cfg = FLAVAConfig.from_dict(json.loads((export / "config.json").read_text()))
    assert FLAVAConfig.from_dict(export_config(cfg)) == cfg
    assert export_config(CLIPConfig.tiny())["mmkit_model"] == "clip"
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert/config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="model_type='bert'; mmkit loads flava, clip, siglip checkpoints"):
        load(tmp_path / "bert")
