"""transformers FLAVA checkpoints <-> mmkit: key map, configs, directories."""

import json
import logging

import pytest
import torch

from mmkit.models import (
    FLAVAConfig,
    flava_config_from_hf,
    flava_config_to_hf,
    flava_from_hf,
    flava_model,
    flava_to_hf,
    load_flava,
    save_flava_hf,
)
from mmkit.utils import CheckpointMismatchError
from tests.conftest import hf_tiny_config, randomize_


def test_round_trip_returns_the_same_tensors(hf_flava):
    sd = hf_flava.state_dict()
    back = flava_to_hf(flava_from_hf(sd))
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k


def test_pretraining_prefix_round_trip(hf_flava):
    sd = {f"flava.{k}": v for k, v in hf_flava.state_dict().items()}
    ours = flava_from_hf(sd)
    back = flava_to_hf(ours, prefix="flava.")
    assert back.keys() == sd.keys()


def test_qkv_is_fused_in_head_order(hf_flava):
    sd = hf_flava.state_dict()
    ours = flava_from_hf(sd)
    qkv = ours["text_encoder.encoder.layers.1.attn.qkv.weight"]
    pre = "text_model.encoder.layer.1.attention.attention."
    assert torch.equal(qkv, torch.cat([sd[pre + "query.weight"], sd[pre + "key.weight"], sd[pre + "value.weight"]]))


def test_unknown_and_missing_keys_are_listed(hf_flava):
    sd = dict(hf_flava.state_dict())
    sd["text_model.encoder.layer.0.surprise.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError, match=r"unknown transformers keys \(1\):\s+text_model.*surprise"):
        flava_from_hf(sd)
    sd = dict(hf_flava.state_dict())
    del sd["image_model.encoder.layer.1.attention.attention.key.bias"]
    with pytest.raises(
        CheckpointMismatchError,
        match=r"missing members[^\n]*\n\s+image_model.encoder.layer.1.attention.attention.key.bias",
    ):
        flava_from_hf(sd)
    sd = dict(hf_flava.state_dict())
    del sd["multimodal_model.pooler.dense.weight"]
    cfg = flava_config_from_hf(hf_flava.config.to_dict())
    with pytest.raises(CheckpointMismatchError, match="lacks.*\n.*multimodal_model.pooler.dense.weight"):
        flava_from_hf(sd, cfg)
    with pytest.raises(CheckpointMismatchError, match="no transformers name.*\n.*heads.foo"):
        flava_to_hf({"heads.foo": torch.zeros(1)})


def test_legacy_position_ids_buffer_is_dropped(hf_flava):
    sd = dict(hf_flava.state_dict())
    sd["text_model.embeddings.position_ids"] = torch.arange(40)[None]
    assert "text_encoder.embeddings.position_ids" not in flava_from_hf(sd)


def test_config_round_trip_and_transformers_accepts_ours():
    from transformers import FlavaConfig, FlavaModel

    cfg = FLAVAConfig.tiny(image={"activation": "gelu_tanh"})
    assert flava_config_from_hf(flava_config_to_hf(cfg)) == cfg
    with torch.device("meta"):
        hf = FlavaModel(FlavaConfig(**flava_config_to_hf(cfg)))
        ours = flava_model(cfg)
    shapes = {k: v.shape for k, v in flava_to_hf(ours.state_dict()).items()}
    assert shapes == {k: v.shape for k, v in hf.state_dict().items()}


def test_legacy_config_dict_fields_win():
    hf = hf_tiny_config().to_dict()
    hf["text_config_dict"] = {"num_hidden_layers": 5}
    assert flava_config_from_hf(hf).text.num_layers == 5
    hf["image_config"]["hidden_act"] = "tanh"
    with pytest.raises(ValueError, match="image_config.hidden_act='tanh' is not supported"):
        flava_config_from_hf(hf)


@pytest.mark.parametrize("layout", ["safetensors", "sharded", "bin"])
def test_loads_a_transformers_directory(tmp_path, hf_flava, images, text_batch, layout):
    if layout == "sharded":
        hf_flava.save_pretrained(tmp_path, max_shard_size="100KB")
        assert (tmp_path / "model.safetensors.index.json").exists()
    elif layout == "safetensors":
        hf_flava.save_pretrained(tmp_path)
        assert (tmp_path / "model.safetensors").exists()
    else:  # the legacy layout (transformers 5 no longer writes it)
        hf_flava.config.to_json_file(tmp_path / "config.json")
        torch.save(hf_flava.state_dict(), tmp_path / "pytorch_model.bin")
    ids, mask = text_batch
    model = load_flava(tmp_path).eval()
    with torch.no_grad():
        ref = hf_flava(pixel_values=images, input_ids=ids, attention_mask=mask)
        out = model(pixel_values=images, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.multimodal.pooler_output, ref.multimodal_output.pooler_output, atol=1e-5, rtol=0)


def test_loads_a_pretraining_directory_and_names_what_it_skips(tmp_path, images, caplog):
    from transformers import FlavaForPreTraining

    torch.manual_seed(0)
    hf = randomize_(FlavaForPreTraining(hf_tiny_config())).eval()
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = load_flava(tmp_path, attention_backend="math").eval()
    assert "image_codebook" in caplog.text and "mim_head" in caplog.text
    with torch.no_grad():
        ref = hf.flava.image_model(pixel_values=images).last_hidden_state
        out = model.encode_image(images).last_hidden_state
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    with pytest.raises(CheckpointMismatchError, match="FlavaForPreTraining heads"):
        flava_from_hf(hf.state_dict())


def test_export_loads_in_transformers(tmp_path, images, text_batch):
    from transformers import FlavaModel

    torch.manual_seed(0)
    ours = randomize_(flava_model(FLAVAConfig.tiny(text={"vocab_size": 120}))).eval()
    save_flava_hf(ours, tmp_path / "export")
    hf = FlavaModel.from_pretrained(tmp_path / "export").eval()
    ids, mask = text_batch
    with torch.no_grad():
        ref = hf(pixel_values=images, input_ids=ids, attention_mask=mask)
        out = ours(pixel_values=images, input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.multimodal.pooler_output, ref.multimodal_output.pooler_output, atol=1e-5, rtol=0)


def test_directory_errors_name_the_problem(tmp_path, hf_flava):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_flava(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="config.json is missing"):
        load_flava(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_flava.config.to_dict()))
    with pytest.raises(FileNotFoundError, match="no weights in .*model.safetensors"):
        load_flava(tmp_path)
    # weights of another size than config.json says
    hf_flava.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["text_config"]["vocab_size"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointMismatchError, match=r"word_embeddings.weight: checkpoint \(120, 32\) vs model \(99"):
        load_flava(tmp_path)


# -- FlavaForPreTraining: heads, logit_scale, codebook ------------------------------------------


@pytest.fixture
def hf_pretraining():
    from transformers import FlavaForPreTraining

    torch.manual_seed(0)
    return randomize_(FlavaForPreTraining(hf_tiny_config())).eval()


def test_pretraining_round_trip_and_tied_biases(hf_pretraining):
    from mmkit.models import flava_pretraining_from_hf, flava_pretraining_to_hf

    sd = hf_pretraining.state_dict()
    ours = flava_pretraining_from_hf(sd, flava_config_from_hf(hf_pretraining.config.to_dict()))
    assert "itm_head.classifier.weight" in ours and "model.logit_scale" in ours
    assert "image_tokenizer.encoder.group_1.block_1.res_path.conv_1.weight" in ours
    back = flava_pretraining_to_hf(ours)
    assert back.keys() == sd.keys()
    for k in sd:
        assert torch.equal(back[k], sd[k]), k
    # a checkpoint that saved only one name of a tied bias still loads; a disagreeing pair raises
    only_bias = {k: v for k, v in sd.items() if k != "mlm_head.decoder.bias"}
    assert torch.equal(flava_pretraining_from_hf(only_bias)["mlm_head.decoder.bias"], sd["mlm_head.bias"])
    bad = dict(sd)
    bad["mim_head.bias"] = sd["mim_head.bias"] + 1
    with pytest.raises(CheckpointMismatchError, match="mim_head.bias and mim_head.decoder.bias are tied"):
        flava_pretraining_from_hf(bad)


def test_pretraining_directory_and_export(tmp_path, hf_pretraining):
    from transformers import FlavaForPreTraining

    hf_pretraining.save_pretrained(tmp_path / "hf")
    ours = load_flava(tmp_path / "hf", pretraining=True).eval()
    assert ours.config.codebook.vocab_size == 64 and ours.config.codebook.image_size == 32
    save_flava_hf(ours, tmp_path / "export")
    back = FlavaForPreTraining.from_pretrained(tmp_path / "export").eval()
    for k, v in hf_pretraining.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    hf_pretraining.flava.save_pretrained(tmp_path / "base_only")
    with pytest.raises(CheckpointMismatchError, match="FLAVAForPreTraining .*missing from the checkpoint: .*itm_head"):
        load_flava(tmp_path / "base_only", pretraining=True)


def test_config_carries_codebook_and_loss_weights():
    hf = hf_tiny_config(mim_weight=0.5, global_backprop_contrastive=False).to_dict()
    cfg = flava_config_from_hf(hf)
    assert cfg.pretraining.weights.mim == 0.5 and not cfg.pretraining.contrastive_gather_with_grad
    assert (cfg.codebook.hidden_size, cfg.codebook.vocab_size, cfg.codebook.image_size) == (8, 64, 32)
    hf["image_config"]["vocab_size"] = 100
    with pytest.raises(ValueError, match="image_config.vocab_size=100 differs from image_codebook_config"):
        flava_config_from_hf(hf)
