"""CLIP and SigLIP from mmkit blocks, against transformers' CLIPModel / SiglipModel as the oracle.

Random transformers models (every weight randomised, so no wiring mistake hides behind a zero
init) are saved to a temp dir, converted, and compared in fp32: embeddings and logits within 1e-5,
padded text included; state dicts survive the round trip bit for bit; the released ViT-B/16 sizes
have exactly transformers' parameter counts.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from mmkit.models import (
    CLIPConfig,
    SigLIPConfig,
    clip_config_from_hf,
    clip_from_hf,
    clip_model,
    clip_to_hf,
    load_dual_encoder,
    save_dual_encoder_hf,
    siglip_from_hf,
    siglip_model,
    siglip_to_hf,
)
from mmkit.utils import CheckpointMismatchError
from tests.conftest import randomize_

transformers = pytest.importorskip("transformers")

TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def hf_clip(eos_token_id: int = 99) -> transformers.CLIPModel:
    cfg = transformers.CLIPConfig(
        vision_config=dict(TOWER, image_size=32, patch_size=8),
        text_config=dict(TOWER, vocab_size=100, max_position_embeddings=16, eos_token_id=eos_token_id),
        projection_dim=24,
    )
    return randomize_(transformers.CLIPModel(cfg).eval(), seed=1)


def hf_siglip() -> transformers.SiglipModel:
    cfg = transformers.SiglipConfig(
        vision_config=dict(TOWER, image_size=32, patch_size=8),
        text_config=dict(TOWER, vocab_size=100, max_position_embeddings=16, bos_token_id=1, eos_token_id=1),
    )
    return randomize_(transformers.SiglipModel(cfg).eval(), seed=2)


def batch(eos: int = 99) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 90, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    ids[0, 8] = eos  # full length
    ids[1, 5], ids[1, 6:], mask[1, 6:] = eos, 0, 0  # padded
    ids[2, 3], ids[2, 4:], mask[2, 4:] = eos, eos, 0  # padded with the eos id itself
    return dict(pixel_values=torch.randn(3, 3, 32, 32, generator=g), input_ids=ids, attention_mask=mask)


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@pytest.mark.parametrize("eos", [99, 2])
def test_clip_matches_transformers(tmp_path, eos):
    """eos 2 is the legacy config rule: pool at the largest id (OpenAI's EOT is the top id)."""
    hf = hf_clip(eos)
    hf.save_pretrained(tmp_path)
    ours = load_dual_encoder(tmp_path).eval()
    assert ours.config.text.eos_token_id == (None if eos == 2 else eos)
    b = batch(eos=99)
    with torch.no_grad():
        ref = hf(**b)
        out = ours(**b)
    close(out.image_embedding, ref.image_embeds)
    close(out.text_embedding, ref.text_embeds)
    close(out.logits_per_image, ref.logits_per_image)
    close(out.image.pre_norm_hidden_state, ref.vision_model_output.last_hidden_state)
    real = b["attention_mask"].bool()
    close(out.text.last_hidden_state[real], ref.text_model_output.last_hidden_state[real])


def test_siglip_matches_transformers(tmp_path):
    hf = hf_siglip()
    hf.save_pretrained(tmp_path)
    ours = load_dual_encoder(tmp_path).eval()
    for b in (batch(eos=1), {**batch(eos=1), "attention_mask": None}):
        with torch.no_grad():
            ref = hf(**{k: v for k, v in b.items() if v is not None})
            out = ours(**b)
        close(out.image_embedding, ref.image_embeds)
        close(out.text_embedding, ref.text_embeds)
        close(out.logits_per_image, ref.logits_per_image)
        close(out.image.last_hidden_state, ref.vision_model_output.last_hidden_state)


def test_state_dicts_round_trip_bit_identical():
    for hf, from_hf, to_hf, cfg in (
        (hf_clip(), clip_from_hf, clip_to_hf, None),
        (hf_siglip(), siglip_from_hf, siglip_to_hf, None),
    ):
        sd = hf.state_dict()
        if from_hf is clip_from_hf:
            cfg = clip_config_from_hf(hf.config.to_dict())
        else:
            from mmkit.models import siglip_config_from_hf

            cfg = siglip_config_from_hf(hf.config.to_dict())
        back = to_hf(from_hf(sd, cfg))
        assert back.keys() == sd.keys()
        for k in sd:
            assert back[k].shape == sd[k].shape and torch.equal(back[k], sd[k]), k


def test_saved_directories_load_in_transformers(tmp_path):
    for build, cls in (
        (lambda: clip_model(CLIPConfig.tiny()), transformers.CLIPModel),
        (lambda: siglip_model(SigLIPConfig.tiny()), transformers.SiglipModel),
    ):
        ours = randomize_(build(), seed=3).eval()
        path = save_dual_encoder_hf(ours, tmp_path / cls.__name__)
        theirs = cls.from_pretrained(path).eval()
        b = batch(eos=102)
        with torch.no_grad():
            ref = theirs(**b)
            out = ours(**b)
        close(out.image_embedding, ref.image_embeds)
        close(out.text_embedding, ref.text_embeds)
        # and back: the same tensors again
        again = load_dual_encoder(path)
        for k, v in ours.state_dict().items():
            assert torch.equal(again.state_dict()[k], v), k


def _count_hf(cls, cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in cls(cfg).parameters())


def test_released_sizes_have_transformers_parameter_counts():
    clip = transformers.CLIPConfig(vision_config={"patch_size": 16})  # openai/clip-vit-base-patch16
    siglip = transformers.SiglipConfig()  # google/siglip-base-patch16-224
    with torch.device("meta"):
        ours_clip = sum(p.numel() for p in clip_model().parameters())
        ours_siglip = sum(p.numel() for p in siglip_model().parameters())
    assert ours_clip == _count_hf(transformers.CLIPModel, clip) == 149_620_737
    assert ours_siglip == _count_hf(transformers.SiglipModel, siglip) == 203_155_970


def test_converters_are_strict(tmp_path):
    hf = hf_clip()
    cfg = clip_config_from_hf(hf.config.to_dict())
    sd = dict(hf.state_dict())
    del sd["text_model.encoder.layers.1.mlp.fc2.bias"]
    with pytest.raises(CheckpointMismatchError, match=r"missing tensors.*\n\s+text_model.encoder.layers.1.mlp.fc2"):
        clip_from_hf(sd, cfg)
    sd = dict(hf.state_dict(), **{"vision_model.surprise.weight": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match=r"no clip rule matches.*\n\s+vision_model.surprise.weight"):
        clip_from_hf(sd, cfg)
    sd = dict(hf.state_dict())
    del sd["vision_model.encoder.layers.0.self_attn.k_proj.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"fused q/k/v.*\n\s+vision_model.encoder.layers.0.self_attn.k_"):
        clip_from_hf(sd, cfg)
    with pytest.raises(CheckpointMismatchError, match=r"text_model.embeddings.token_embedding.weight|word_embeddings"):
        clip_from_hf(hf.state_dict(), cfg.replace(text={"vocab_size": 101}))
    hf.save_pretrained(tmp_path)
    assert type(load_dual_encoder(tmp_path).config) is CLIPConfig  # the directory says which model it holds
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "flava"}))
    with pytest.raises(ValueError, match="neither a CLIP nor a SigLIP model .*use mmkit.models.load_flava"):
        load_dual_encoder(tmp_path)


def test_configs_default_to_the_released_models():
    clip, siglip = CLIPConfig(), SigLIPConfig()
    sizes = (clip.image.patch_size, clip.text.hidden_size, clip.projection_dim, clip.text.max_positions)
    assert sizes == (16, 512, 512, 77)
    assert clip.loss == "softmax" and math.isclose(clip.logit_scale_init, math.log(1 / 0.07))
    assert siglip.loss == "sigmoid" and siglip.logit_bias_init == -10.0
    assert math.isclose(siglip.logit_scale_init, math.log(10))
    # a dict round trip keeps the subclass's defaults and values
    assert CLIPConfig.from_dict(CLIPConfig.tiny().to_dict()) == CLIPConfig.tiny()
    with pytest.raises(ValueError, match="text pooler"):
        CLIPConfig.tiny(text={"pooler": "mean"})
