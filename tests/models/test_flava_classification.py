import logging

import pytest
import torch

from mmkit.models import FLAVAConfig, flava_model_for_classification
from tests.conftest import hf_tiny_config, randomize_


@pytest.mark.parametrize(
    ("modality", "problem", "labels"),
    [
        ("image", "single_label", torch.tensor([0, 2, 1])),
        ("text", "regression", torch.tensor([0.5, 1.0, -1.0])),
        ("multimodal", "multi_label", torch.tensor([[0.0, 1.0, 0.3], [1.0, 0.0, 0.0], [0.0, 0.0, 0.6]])),
    ],
)
def test_heads_losses_and_features(modality, problem, labels):
    torch.manual_seed(0)
    model = flava_model_for_classification(3, modality, FLAVAConfig.tiny(), problem_type=problem, hidden_dim=16)
    px, ids = torch.randn(3, 3, 32, 32), torch.randint(5, 100, (3, 7))
    out = model(pixel_values=px, input_ids=ids, labels=labels)
    expected_shape = (3,) if problem == "regression" else (3, 3)
    assert out.logits.shape == expected_shape and out.features.shape == (3, 32)
    if problem == "single_label":
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        torch.testing.assert_close(out.features, model.model.encode_image(px).last_hidden_state[:, 0])
    elif problem == "regression":
        torch.testing.assert_close(out.loss, ((out.logits - labels) ** 2).mean())
    else:
        bce = torch.nn.functional.binary_cross_entropy_with_logits(out.logits, labels, reduction="none")
        torch.testing.assert_close(out.loss, bce.sum(1).mean())


def test_loads_transformers_pretraining_checkpoint_and_names_the_new_head(tmp_path, caplog):
    from transformers import FlavaForPreTraining

    torch.manual_seed(0)
    hf = randomize_(FlavaForPreTraining(hf_tiny_config())).eval()
    hf.save_pretrained(tmp_path)
    with caplog.at_level(logging.WARNING):
        model = flava_model_for_classification(4, "multimodal", checkpoint=tmp_path, hidden_dim=8).eval()
    report = model.load_report
    assert report.new == ["head.fc1.bias", "head.fc1.weight", "head.fc2.bias", "head.fc2.weight"]
    assert "multimodal_encoder.cls_token" in report.loaded and "head.fc1.weight" in caplog.text
    px, ids = torch.randn(2, 3, 32, 32), torch.randint(5, 100, (2, 6))
    with torch.no_grad():
        ref = hf.flava(pixel_values=px, input_ids=ids).multimodal_embeddings[:, 0]
        ours = model.features(pixel_values=px, input_ids=ids)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_errors():
    model = flava_model_for_classification(2, "image", FLAVAConfig.tiny(), hidden_dim=8)
    with pytest.raises(ValueError, match="needs pixel_values"):
        model(input_ids=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="modality must be one of"):
        flava_model_for_classification(2, "audio", FLAVAConfig.tiny())
    with pytest.raises(FileNotFoundError, match="does not exist"):
        flava_model_for_classification(2, "image", checkpoint="/nonexistent/dir")


def test_loads_an_mmkit_pretraining_export(tmp_path):
    """The layout recipes/flava/pretrain.py exports: final/model.safetensors + final/config.json."""
    import json

    from safetensors.torch import save_file

    from mmkit.models import flava_model_for_pretraining

    torch.manual_seed(1)
    cfg = FLAVAConfig.tiny()
    pre = randomize_(flava_model_for_pretraining(cfg)).eval()
    save_file({k: v.contiguous() for k, v in pre.state_dict().items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    model = flava_model_for_classification(5, "text", checkpoint=tmp_path, hidden_dim=8).eval()
    assert model.load_report.new[0].startswith("head.") and model.load_report.kind == "mmkit"
    ids = torch.randint(5, 100, (2, 6))
    with torch.no_grad():
        torch.testing.assert_close(model.features(input_ids=ids), pre.model.encode_text(ids).last_hidden_state[:, 0])


def test_higher_resolution_resamples_the_checkpoint_position_embeddings_once(tmp_path):
    """VQA-style finetuning at a larger image (the paper: 480² from 224²; here 48² from 32²): the
    classifier's position table is the checkpoint's, resampled to the new grid, so its features equal
    the checkpoint model's own on-the-fly interpolation at that size — and transformers' too."""
    from transformers import FlavaForPreTraining

    torch.manual_seed(0)
    hf = randomize_(FlavaForPreTraining(hf_tiny_config())).eval()
    hf.save_pretrained(tmp_path)
    native = flava_model_for_classification(3, "image", checkpoint=tmp_path, hidden_dim=8).eval()
    big = flava_model_for_classification(3, "image", checkpoint=tmp_path, hidden_dim=8, **{"image.image_size": 48})
    big.eval()
    emb = big.model.image_encoder.embeddings
    assert emb.grid_size == (6, 6) and emb.position_embeddings.shape == (1, 1 + 36, 32)
    assert big.model.config.image.image_size == 48
    assert "resampled from 4x4 to 6x6" in str(big.load_report)
    px = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ours = big.features(pixel_values=px)
        torch.testing.assert_close(ours, native.features(pixel_values=px), atol=1e-5, rtol=0)
        hf_states = hf.flava.image_model(pixel_values=px, interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(ours, hf_states[:, 0], atol=1e-5, rtol=0)
