"""Our FLAVA is the same function as transformers' FlavaModel (the numerical oracle)."""

import pytest
import torch

from mmkit.models import FLAVAConfig, flava_config_from_hf, flava_from_hf, flava_model
from tests.conftest import available_backends, hf_tiny_config

ATOL = 1e-5


def _ours(hf, backend):
    cfg = flava_config_from_hf(hf.config.to_dict()).replace(attention_backend=backend)
    model = flava_model(cfg).eval()
    model.load_state_dict(flava_from_hf(hf.state_dict(), cfg))
    return model


def _close(actual, expected, what):
    torch.testing.assert_close(actual, expected, atol=ATOL, rtol=ATOL, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("padded", [False, True])
def test_hidden_states_pooled_and_embeddings_match(hf_flava, images, text_batch, backend, padded):
    ids, mask = text_batch
    if not padded:
        mask = torch.ones_like(mask)
    device = "cuda" if backend == "xformers" else "cpu"
    hf, ours = hf_flava.to(device), _ours(hf_flava, backend).to(device)
    images, ids, mask = images.to(device), ids.to(device), mask.to(device)
    with torch.no_grad():
        ref = hf(pixel_values=images, input_ids=ids, attention_mask=mask)
        out = ours(pixel_values=images, input_ids=ids, attention_mask=mask)
        ref_img_emb = torch.nn.functional.normalize(hf.image_projection(ref.image_embeddings[:, 0]), dim=-1)
        ref_txt_emb = torch.nn.functional.normalize(hf.text_projection(ref.text_embeddings[:, 0]), dim=-1)
        ref_img_feat = hf.get_image_features(pixel_values=images).pooler_output[:, 0]
    pairs = {
        "image": (out.image, ref.image_output),
        "text": (out.text, ref.text_output),
        "multimodal": (out.multimodal, ref.multimodal_output),
    }
    keep = mask.bool()
    for name, (o, r) in pairs.items():
        _close(
            o.last_hidden_state if name != "text" else o.last_hidden_state[keep],
            r.last_hidden_state if name != "text" else r.last_hidden_state[keep],
            f"{name} after norm",
        )
        _close(o.pooler_output, r.pooler_output, f"{name} pooled")
    _close(out.image.pre_norm_hidden_state, ref.image_output.hidden_states[-1], "image before norm")
    _close(out.text.pre_norm_hidden_state[keep], ref.text_output.hidden_states[-1][keep], "text before norm")
    # the fusion sequence is [CLS_M, CLS_I, patches, text]; compare its real tokens
    mm_keep = torch.cat([torch.ones(3, 1 + 17, dtype=torch.bool, device=device), keep], 1)
    _close(out.multimodal.last_hidden_state[mm_keep], ref.multimodal_embeddings[mm_keep], "multimodal tokens")
    _close(out.image_embedding, ref_img_emb, "image contrastive embedding")
    _close(out.text_embedding, ref_txt_emb, "text contrastive embedding")
    _close(ours.image_projection(out.image.last_hidden_state[:, 0]), ref_img_feat, "image features")


def test_every_layer_matches(hf_flava, images, text_batch):
    ids, mask = text_batch
    ours = _ours(hf_flava, "sdpa")
    with torch.no_grad():
        ref = hf_flava(pixel_values=images, input_ids=ids, attention_mask=mask)
        out = ours(pixel_values=images, input_ids=ids, attention_mask=mask, output_hidden_states=True)
    assert len(out.image.hidden_states) == len(ref.image_output.hidden_states) == 3
    for a, b in zip(out.image.hidden_states, ref.image_output.hidden_states, strict=True):
        _close(a, b, "image layer")
    for a, b in zip(out.text.hidden_states, ref.text_output.hidden_states, strict=True):
        _close(a[mask.bool()], b[mask.bool()], "text layer")


def test_masked_patches_match(hf_flava, images):
    ours = _ours(hf_flava, "sdpa")
    patch_mask = torch.rand(3, 16, generator=torch.Generator().manual_seed(3)) < 0.4
    with torch.no_grad():
        ref = hf_flava.image_model(pixel_values=images, bool_masked_pos=patch_mask.clone())
        out = ours.encode_image(images, patch_mask)
    _close(out.last_hidden_state, ref.last_hidden_state, "masked image")
    assert not torch.allclose(out.last_hidden_state, ours.encode_image(images).last_hidden_state)


def test_other_resolution_matches_interpolated_positions(hf_flava):
    ours = _ours(hf_flava, "sdpa")
    x = torch.randn(2, 3, 56, 40)  # 7 x 5 patch grid from a 4 x 4 table
    with torch.no_grad():
        ref = hf_flava.image_model(pixel_values=x, interpolate_pos_encoding=True)
        out = ours.encode_image(x)
    assert out.last_hidden_state.shape == (2, 36, 32)
    _close(out.last_hidden_state, ref.last_hidden_state, "interpolated image")


def test_text_only_and_image_only(hf_flava, images, text_batch):
    ids, mask = text_batch
    ours = _ours(hf_flava, "sdpa")
    with torch.no_grad():
        out_t = ours(input_ids=ids, attention_mask=mask)
        out_i = ours(pixel_values=images)
        both = ours(pixel_values=images, input_ids=ids, attention_mask=mask, skip_multimodal=True)
    assert out_t.image is None and out_t.multimodal is None and out_i.text is None
    assert both.multimodal is None
    _close(out_t.text_embedding, both.text_embedding, "text alone")
    _close(out_i.image_embedding, both.image_embedding, "image alone")
    with pytest.raises(ValueError, match="needs pixel_values, input_ids or both"):
        ours()


def test_released_size_has_released_parameter_count():
    """≈241.4M parameters, equal to transformers' FlavaModel for the released config (meta device: no memory)."""
    from transformers import FlavaConfig, FlavaModel

    with torch.device("meta"):
        ours = flava_model()
        theirs = FlavaModel(FlavaConfig())
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs
    assert abs(n_ours / 1e6 - 241.4) < 0.1
    assert ours.config == FLAVAConfig()


def test_logit_scale_clamp_and_no_weight_decay():
    model = flava_model(FLAVAConfig.tiny())
    assert model.logit_scale.item() == pytest.approx(2.6592)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    model.clamp_logit_scale()
    assert model.logit_scale.item() == pytest.approx(4.60517, abs=1e-5)
    nwd = model.no_weight_decay()
    assert {
        "logit_scale",
        "image_encoder.embeddings.cls_token",
        "multimodal_encoder.cls_token",
        "text_encoder.embeddings.word_embeddings.weight",
        "image_projection.bias",
    } <= nwd
    assert "image_encoder.encoder.layers.0.attn.qkv.weight" not in nwd


def test_grad_checkpointing_matches_plain_backward(images, text_batch):
    ids, mask = text_batch
    model = flava_model(FLAVAConfig.tiny(text={"vocab_size": 120})).train()
    grads = []
    for ckpt in (False, True):
        model.zero_grad()
        model.set_grad_checkpointing(ckpt)
        out = model(pixel_values=images, input_ids=ids, attention_mask=mask)
        (out.multimodal.pooler_output.sum() + (out.image_embedding * out.text_embedding).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], msg=n)


def test_config_overrides_are_strict():
    cfg = FLAVAConfig.tiny(image={"num_layers": 3}, projection_dim=16)
    assert cfg.image.num_layers == 3 and cfg.projection_dim == 16 and cfg.text.num_layers == 2
    assert FLAVAConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown config key 'image.num_layer'; did you mean 'num_layers'"):
        FLAVAConfig.tiny(image={"num_layer": 3})
    with pytest.raises(ValueError, match="unknown config key 'projection_dims'; did you mean 'projection_dim'"):
        flava_model(FLAVAConfig.tiny(), projection_dims=3)
    model = flava_model(FLAVAConfig.tiny(), **{"multimodal.num_layers": 2})
    assert len(model.multimodal_encoder.encoder.layers) == 2


def test_hf_config_is_what_we_test_against():
    cfg = flava_config_from_hf(hf_tiny_config().to_dict())
    assert cfg.image.image_size == 32 and cfg.text.vocab_size == 120 and cfg.multimodal.num_layers == 1
