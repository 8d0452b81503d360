"""Initialisation: the released size draws what transformers' FLAVA draws; other widths follow the
width rule ``0.02 * sqrt(768 / width)``; an explicit ``init_std`` applies everywhere."""

from __future__ import annotations

import math

import pytest
import torch

from mmkit.layers.init import init_std_for
from mmkit.models import CLIPConfig, FLAVAConfig, clip_model, flava_model, flava_model_for_pretraining

# these tests read statistics of parameters (which require grad) as Python floats, on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad=True:UserWarning")


def _std_matches(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two draws of the same zero-mean normal: stds within 6 standard errors of each other."""
    n = min(a.numel(), b.numel())
    se = float(b.float().std()) / math.sqrt(2 * n)
    return abs(float(a.float().std()) - float(b.float().std())) <= 6 * se + 1e-7


def test_width_rule():
    assert init_std_for(768) == pytest.approx(0.02)
    assert init_std_for(32) == pytest.approx(0.02 * math.sqrt(24))  # 0.098
    assert init_std_for(32, 0.05) == 0.05  # an explicit std wins
    with pytest.raises(ValueError, match="init_std must be > 0"):
        init_std_for(32, 0.0)


@pytest.mark.slow
def test_released_size_draws_what_transformers_draws():
    """Parameter by parameter, at the released sizes: the same zeros (image [CLS], mask token, position
    table, CLS_M, biases), the same ones (LayerNorm scales), the same logit scale, and normal draws of
    the same std (0.02) everywhere else. The frozen codebook is left out: pretraining loads it."""
    from transformers import FlavaConfig, FlavaForPreTraining

    from mmkit.models import flava_pretraining_to_hf

    torch.manual_seed(0)
    theirs = FlavaForPreTraining(FlavaConfig()).state_dict()
    torch.manual_seed(1)
    ours_model = flava_model_for_pretraining(FLAVAConfig().replace(**{"codebook.allow_random": True}))
    ours = flava_pretraining_to_hf(ours_model.state_dict())
    del ours_model
    compared = 0
    for name, ref in theirs.items():
        if name.startswith("image_codebook.") or not ref.is_floating_point():
            continue
        mine = ours[name]
        assert mine.shape == ref.shape, name
        if ref.numel() == 1 or not ref.any() or bool((ref == 1).all()):  # constants: exactly equal
            assert torch.equal(mine, ref.to(mine.dtype)), name
        else:
            assert abs(float(ref.float().std()) - 0.02) < 2e-3, name
            assert abs(float(mine.float().mean())) < 6 * 0.02 / math.sqrt(mine.numel()) + 1e-7, name
            assert _std_matches(mine, ref), (name, float(mine.std()), float(ref.std()))
        compared += 1
    assert compared > 300


def test_tiny_width_scales_the_std_and_zeroes_flavas_tokens():
    model = flava_model(FLAVAConfig.tiny())
    want = init_std_for(32)
    qkv = model.text_encoder.encoder.layers[0].attn.qkv.weight
    assert float(qkv.std()) == pytest.approx(want, rel=0.1)
    assert float(model.text_encoder.embeddings.word_embeddings.weight.std()) == pytest.approx(want, rel=0.05)
    emb = model.image_encoder.embeddings
    for p in (emb.cls_token, emb.mask_token, emb.position_embeddings, model.multimodal_encoder.cls_token):
        assert not p.any()
    explicit = flava_model(FLAVAConfig.tiny(init_std=0.02))
    assert float(explicit.text_encoder.encoder.layers[0].attn.qkv.weight.std()) == pytest.approx(0.02, rel=0.1)


def test_dual_encoders_follow_the_rule_and_draw_their_tokens():
    model = clip_model(CLIPConfig.tiny())
    width = model.image_encoder.width
    assert float(model.image_encoder.encoder.layers[0].mlp.fc1.weight.std()) == pytest.approx(
        init_std_for(width), rel=0.1
    )
    pos = model.image_encoder.embeddings.position_embeddings
    assert float(pos.std()) == pytest.approx(init_std_for(width), rel=0.3)  # drawn, not zero (CLIP)
