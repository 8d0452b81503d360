"""FLAVA started from CLIP / SigLIP towers (``model.image.init_from`` / ``model.text.init_from``)."""

from __future__ import annotations

import pytest
import torch

from mmkit.models import FLAVAConfig, flava_config_to_hf, flava_hf_unsupported, flava_model
from mmkit.models.tower_init import init_towers, resolve_tower_configs
from mmkit.utils import CheckpointMismatchError
from tests.conftest import randomize_
from tests.models.test_clip_siglip import hf_clip, hf_siglip

transformers = pytest.importorskip("transformers")


def _flava_from(tmp_path, hf_model, **sides):
    hf_model.save_pretrained(tmp_path)
    cfg = resolve_tower_configs(FLAVAConfig.tiny().replace(**{f"{s}.init_from": str(tmp_path) for s in sides}))
    torch.manual_seed(0)
    model = flava_model(cfg).eval()
    return model, init_towers(model)


def test_flava_image_from_a_clip_tower_equals_the_tower_before_any_step(tmp_path):
    hf = hf_clip()
    model, (report,) = _flava_from(tmp_path, hf, image=True)
    # every weight FLAVA has that the tower lacks is named as new, nothing else
    assert sorted(report.new) == [
        "image_encoder.embeddings.mask_token",
        "image_encoder.pooler.dense.bias",
        "image_encoder.pooler.dense.weight",
    ]
    own = set(model.image_encoder.state_dict())
    assert len(report.loaded) + 3 == len(own)
    assert "visual_projection.weight" not in report.unused and "image_projection.weight" in report.unused
    assert model.config.image.input_norm and not model.config.image.patch_bias
    assert model.config.image.activation == "quick_gelu" and model.config.image.norm_eps == 1e-5
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.encode_image(pixels)
        ref = hf.vision_model(pixel_values=pixels)
    torch.testing.assert_close(ours.last_hidden_state[:, 0], ref.pooler_output, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.pre_norm_hidden_state, ref.last_hidden_state, atol=1e-5, rtol=1e-5)
    # transformers' FLAVA has no input LayerNorm: its export is refused, naming why
    assert "image.input_norm=True" in flava_hf_unsupported(model.config)
    with pytest.raises(ValueError, match="cannot express image.input_norm=True"):
        flava_config_to_hf(model.config)


def test_flava_text_from_a_clip_tower_reports_the_causal_change(tmp_path):
    hf = hf_clip()
    model, (report,) = _flava_from(tmp_path, hf, text=True)
    assert sorted(report.new) == ["text_encoder.pooler.dense.bias", "text_encoder.pooler.dense.weight"]
    assert any("bidirectional" in c for c in report.notes)
    cfg = model.config.text
    assert (cfg.vocab_size, cfg.max_positions, cfg.type_vocab_size, cfg.embedding_norm, cfg.causal) == (
        100,
        16,
        0,
        False,
        False,
    )
    ids = torch.randint(3, 90, (2, 9))
    with torch.no_grad():  # the embeddings are the tower's exactly (attention differs: bidirectional)
        torch.testing.assert_close(
            model.text_encoder.embeddings(ids), hf.text_model.embeddings(input_ids=ids), atol=0, rtol=0
        )


def test_flava_image_from_a_siglip_tower_names_the_new_cls(tmp_path):
    model, (report,) = _flava_from(tmp_path, hf_siglip(), image=True)
    assert "image_encoder.embeddings.cls_token" in report.new
    assert "image_encoder.embeddings.position_embeddings[:, 0] (the CLS position)" in report.new
    assert any(n.startswith("image_encoder.pooler.") for n in report.unused)  # the attention-pool head
    tower = transformers.SiglipModel.from_pretrained(tmp_path).vision_model.embeddings.position_embedding.weight
    torch.testing.assert_close(model.image_encoder.embeddings.position_embeddings[0, 1:], tower, atol=0, rtol=0)


def test_a_tower_that_does_not_fit_is_named(tmp_path):
    hf = hf_clip()
    hf.save_pretrained(tmp_path)
    cfg = FLAVAConfig.tiny().replace(**{"image.init_from": str(tmp_path)})  # not resolved: FLAVA's own sizes
    model = flava_model(cfg.replace(**{"image.input_norm": True, "image.patch_bias": False, "image.hidden_size": 48}))
    before = {k: v.clone() for k, v in randomize_(model).state_dict().items()}
    misfit = r"FLAVA image encoder:\n\s+shape mismatch \(\d+\):\n\s+\S+: checkpoint \(.*32\) vs model"
    with pytest.raises(CheckpointMismatchError, match=misfit):
        init_towers(model)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing half-copied
