"""FLAVAForPreTraining computes every objective exactly like transformers' FlavaForPreTraining."""

import pytest
import torch
import torch.nn.functional as F

from mmkit.models import FLAVAConfig, flava_config_from_hf, flava_model_for_pretraining, flava_pretraining_from_hf
from tests.conftest import hf_tiny_config, randomize_

B, L = 6, 9


@pytest.fixture(scope="module")
def pair():
    from transformers import FlavaForPreTraining

    torch.manual_seed(0)
    hf = randomize_(FlavaForPreTraining(hf_tiny_config())).eval()
    cfg = flava_config_from_hf(hf.config.to_dict())
    ours = flava_model_for_pretraining(cfg).eval()
    ours.load_state_dict(flava_pretraining_from_hf(hf.state_dict(), cfg))
    return hf, ours


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 120, (B, L), generator=g)
    mask = torch.ones(B, L, dtype=torch.long)
    mask[1, 6:] = 0
    mask[4, 3:] = 0
    ids[mask == 0] = 0
    chosen = (torch.rand(B, L, generator=g) < 0.3) & (mask == 1)
    chosen[:, 1] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return dict(
        pixel_values=torch.randn(B, 3, 32, 32, generator=g),
        codebook_pixel_values=torch.rand(B, 3, 32, 32, generator=g) * 0.8 + 0.1,
        patch_mask=torch.rand(B, 16, generator=g) < 0.4,
        input_ids=ids,
        masked_input_ids=torch.where(chosen, torch.full_like(ids, 3), ids),
        mlm_labels=labels,
        attention_mask=mask,
        itm_labels=torch.tensor([1, 0, 1, 1, 0, 1]),
    )


def _hf(hf, b, **kw):
    args = dict(
        pixel_values=b.get("pixel_values"),
        codebook_pixel_values=b.get("codebook_pixel_values"),
        bool_masked_pos=None if b.get("patch_mask") is None else b["patch_mask"].clone(),
        input_ids=None if b.get("input_ids") is None else b["input_ids"].clone(),
        input_ids_masked=None if b.get("masked_input_ids") is None else b["masked_input_ids"].clone(),
        mlm_labels=None if b.get("mlm_labels") is None else b["mlm_labels"].clone(),
        attention_mask=b.get("attention_mask"),
        itm_labels=None if b.get("itm_labels") is None else b["itm_labels"].clone(),
    )
    with torch.no_grad():
        return hf(**{**args, **kw})


def _close(a, b, what):
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=lambda m: f"{what}: {m}")


def test_paired_batch_with_mixed_itm_labels(pair, batch):
    hf, ours = pair
    ref = _hf(hf, batch)
    with torch.no_grad():
        out = ours(**batch)
    assert out.kind == "pair"
    assert set(out.losses) == {"global_contrastive", "itm", "mmm_image", "mmm_text"}
    for name in out.losses:
        _close(out.losses[name], ref.loss_info[name], f"{name} loss")
    _close(out.loss, ref.loss, "total")
    _close(out.logits["mmm_image"], ref.mmm_image_logits, "mmm_image logits")
    _close(out.logits["mmm_text"], ref.mmm_text_logits, "mmm_text logits")
    _close(out.logits["itm"], ref.itm_logits, "itm logits")
    # MMM only on matched pairs; contrastive rows only of matched pairs (the others are labelled -100)
    matched = batch["itm_labels"] == 1
    _close(out.logits["contrastive_image"][matched], ref.contrastive_logits_per_image, "contrastive per image")
    _close(out.logits["contrastive_text"][matched], ref.contrastive_logits_per_text, "contrastive per text")
    assert out.logits["contrastive_image"].shape == (B, B)
    assert out.labels["contrastive_image"].tolist() == [i if m else -100 for i, m in enumerate(matched.tolist())]
    expected_img = int((batch["patch_mask"] & matched[:, None]).sum())
    assert out.labels["mmm_image"].shape == (expected_img,)


def test_image_only_batch(pair, batch):
    hf, ours = pair
    b = {k: batch[k] for k in ("pixel_values", "codebook_pixel_values", "patch_mask")}
    ref = _hf(hf, b)
    with torch.no_grad():
        out = ours(**b)
    assert out.kind == "image" and set(out.losses) == {"mim"}
    _close(out.losses["mim"], ref.loss_info["mim"], "mim loss")
    _close(out.logits["mim"], ref.mim_logits, "mim logits")
    _close(out.loss, ref.loss, "total")


def test_text_only_batch(pair, batch):
    hf, ours = pair
    b = {k: batch[k] for k in ("input_ids", "masked_input_ids", "mlm_labels", "attention_mask")}
    ref = _hf(hf, b)
    with torch.no_grad():
        out = ours(**{k: v for k, v in b.items() if k != "input_ids"})
    assert out.kind == "text" and set(out.losses) == {"mlm"}
    _close(out.losses["mlm"], ref.loss_info["mlm"], "mlm loss")
    _close(out.logits["mlm"], ref.mlm_logits, "mlm logits")


def test_all_pairs_matched_and_no_itm_labels(pair, batch):
    hf, ours = pair
    b = {**batch, "itm_labels": torch.ones(B, dtype=torch.long)}
    ref = _hf(hf, b)
    with torch.no_grad():
        out = ours(**b)
        no_itm = ours(**{**batch, "itm_labels": None})
    _close(out.loss, ref.loss, "total, all matched")
    assert "itm" not in no_itm.losses
    _close(no_itm.losses["mmm_text"], out.losses["mmm_text"], "mmm_text without ITM labels")


def test_precomputed_token_ids_equal_running_the_tokenizer(pair, batch):
    _, ours = pair
    ids = ours.image_tokenizer(batch["codebook_pixel_values"])
    b = {k: v for k, v in batch.items() if k != "codebook_pixel_values"}
    with torch.no_grad():
        a = ours(**batch)
        c = ours(**b, image_token_ids=ids)
    for name in a.losses:
        torch.testing.assert_close(a.losses[name], c.losses[name])


def test_options_switch_objectives(batch):
    torch.manual_seed(0)
    cfg = FLAVAConfig.tiny(text={"vocab_size": 120}, codebook={"vocab_size": 64})
    model = flava_model_for_pretraining(cfg, pretraining={"unimodal_losses_on_pairs": True}).eval()
    with torch.no_grad():
        out = model(**batch)
    assert set(out.losses) == {"global_contrastive", "itm", "mmm_image", "mmm_text", "mim", "mlm"}
    model = flava_model_for_pretraining(cfg, pretraining={"weights": {"itm": 0.0, "global_contrastive": 0.5}})
    with torch.no_grad():
        out = model.eval()(**batch)
    assert "itm" not in out.losses and out.image_embedding is not None
    expected = 0.5 * out.losses["global_contrastive"] + out.losses["mmm_image"] + out.losses["mmm_text"]
    torch.testing.assert_close(out.loss, expected)
    only = flava_model_for_pretraining(cfg, pretraining={"contrastive_matched_only": True}).eval()
    only.load_state_dict(model.state_dict())
    with torch.no_grad():
        out = only(**batch)
    # the mismatched pairs leave the columns too: the loss of the matched pairs alone
    matched = batch["itm_labels"] == 1
    logits = out.image_embedding[matched] @ out.text_embedding[matched].T * only.model.logit_scale.exp()
    labels = torch.arange(int(matched.sum()))
    expected = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    torch.testing.assert_close(out.losses["global_contrastive"], expected)
    assert torch.isinf(out.logits["contrastive_image"][:, ~matched]).all()


def test_errors_name_the_missing_input(batch):
    cfg = FLAVAConfig.tiny(text={"vocab_size": 120}, codebook={"vocab_size": 64})
    model = flava_model_for_pretraining(cfg)
    with pytest.raises(ValueError, match="needs patch_mask"):
        model(pixel_values=batch["pixel_values"], codebook_pixel_values=batch["codebook_pixel_values"])
    with pytest.raises(ValueError, match="pass codebook_pixel_values .* or precomputed image_token_ids"):
        model(pixel_values=batch["pixel_values"], patch_mask=batch["patch_mask"])
    with pytest.raises(ValueError, match="needs masked_input_ids and mlm_labels"):
        model(input_ids=batch["input_ids"])
    with pytest.raises(ValueError, match="image targets have 9 tokens per image but the ViT has 16"):
        model(
            pixel_values=batch["pixel_values"],
            patch_mask=batch["patch_mask"],
            image_token_ids=torch.zeros(B, 9, dtype=torch.long),
        )
    with pytest.raises(ValueError, match="tokenizer grid 7 .* differs from the ViT patch grid 4"):
        flava_model_for_pretraining(cfg, codebook={"image_size": 56})
    no_tok = flava_model_for_pretraining(cfg, codebook={"enabled": False})
    assert no_tok.image_tokenizer is None
    with pytest.raises(ValueError, match="has no image tokenizer"):
        no_tok(
            pixel_values=batch["pixel_values"],
            patch_mask=batch["patch_mask"],
            codebook_pixel_values=batch["codebook_pixel_values"],
        )


def test_tokenizer_is_frozen_and_out_of_the_optimizer():
    model = flava_model_for_pretraining(FLAVAConfig.tiny()).train()
    assert not model.image_tokenizer.training
    names = [n for n, _ in model.trainable_parameters()]
    assert names and not any(n.startswith("image_tokenizer.") for n in names)
    assert "model.logit_scale" in model.no_weight_decay()


def test_released_size_matches_transformers():
    from transformers import FlavaConfig, FlavaForPreTraining

    with torch.device("meta"):
        ours = flava_model_for_pretraining()
        theirs = FlavaForPreTraining(FlavaConfig())
    n_ours = sum(p.numel() for p in ours.parameters())
    # transformers keeps each decoder bias twice (tied `<head>.bias`): count unique tensors
    n_theirs = sum(p.numel() for p in theirs.parameters())
    assert n_ours == n_theirs
    assert round(n_ours / 1e6, 1) == 357.6


def test_a_few_steps_lower_every_loss(batch):
    torch.manual_seed(0)
    cfg = FLAVAConfig.tiny(text={"vocab_size": 120}, codebook={"vocab_size": 64})
    model = flava_model_for_pretraining(cfg).train()
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters()], lr=3e-3)
    first = None
    for _ in range(25):
        out = model(**batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        model.model.clamp_logit_scale()
        first = first or {k: v.item() for k, v in out.losses.items()}
    last = {k: v.item() for k, v in out.losses.items()}
    assert all(last[k] < first[k] for k in first), (first, last)


# -- pixel-regression MIM (MAE-style target, no tokenizer) ---------------------------------------------
def test_patchify_matches_unfold_and_normalises_each_patch():
    from mmkit.models.flava_pretraining import patchify

    x = torch.randn(2, 3, 8, 12)
    ours = patchify(x, 4, normalize=False)
    # oracle: unfold gives (B, C*p*p, L) in (C, p, p) order; ours is (p, p, C), row-major patches
    ref = torch.nn.functional.unfold(x, 4, stride=4).transpose(1, 2).reshape(2, 6, 3, 4, 4)
    torch.testing.assert_close(ours, ref.permute(0, 1, 3, 4, 2).reshape(2, 6, 48))
    norm = patchify(x, 4)
    torch.testing.assert_close(norm.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.var(-1, unbiased=False), torch.ones(2, 6), atol=1e-3, rtol=0)


def test_pixel_mim_needs_no_tokenizer_and_regresses_masked_patches(batch):
    from mmkit.models.flava_pretraining import patchify

    torch.manual_seed(0)
    model = flava_model_for_pretraining(
        FLAVAConfig.tiny(text={"vocab_size": 120}), **{"pretraining.mim_target": "pixels"}
    )
    assert model.image_tokenizer is None and model.mim_head.decoder.out_features == 8 * 8 * 3
    targets = patchify(batch["pixel_values"], 8)
    mask = batch["patch_mask"]
    out = model(pixel_values=batch["pixel_values"], patch_mask=mask)  # image-only: MIM
    image = model.model.encode_image(batch["pixel_values"], mask).last_hidden_state[:, 1:]
    expected = ((model.mim_head(image[mask]) - targets[mask]) ** 2).mean()
    torch.testing.assert_close(out.losses["mim"], expected)
    paired = {k: v for k, v in batch.items() if k != "codebook_pixel_values"}
    out = model(**paired)  # MMM image only on matched pairs' masked patches
    matched = batch["itm_labels"] == 1
    assert out.labels["mmm_image"].shape[0] == int((mask & matched[:, None]).sum())
    assert set(out.losses) == {"global_contrastive", "itm", "mmm_image", "mmm_text"}
    with pytest.raises(ValueError, match="mim_target must be 'tokens' or 'pixels'"):
        FLAVAConfig.tiny(pretraining={"mim_target": "patches"})
