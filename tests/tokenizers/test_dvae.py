"""The trainable dVAE: shapes, the logit-Laplace likelihood and KL against hand computations, codebook
statistics, schedules, saving/loading and use as FLAVA's tokenizer."""

import math

import pytest
import torch

from mmkit.tokenizers import (
    DalleDecoder,
    DalleEncoder,
    DiscreteVAE,
    codebook_usage,
    dalle_encoder_from_checkpoint,
    dalle_preprocess,
    gumbel_temperature,
    kl_weight_schedule,
    load_dvae,
    save_dvae,
    tokenizer_fingerprint,
)
from mmkit.tokenizers.dvae import logit_laplace_mean_pixels, logit_laplace_nll

SIZES = dict(hidden_size=8, vocab_size=16, num_groups=3, blocks_per_group=1)


def _dvae(seed=0):
    torch.manual_seed(seed)
    return DiscreteVAE(DalleEncoder(**SIZES), DalleDecoder(**SIZES, init_size=8))


def test_decoder_mirrors_the_encoder():
    model = _dvae()
    x = dalle_preprocess(torch.rand(2, 3, 16, 12))
    out = model(x, temperature=1.0)
    assert out.logits.shape == (2, 16, 4, 3) and out.ids.shape == (2, 4, 3)
    assert out.params.shape == (2, 6, 16, 12)
    assert model.reconstruct(x).shape == (2, 3, 16, 12)
    widths = [model.decoder.get_submodule(f"group_{g}.block_1.res_path.conv_4").out_channels for g in (1, 2, 3)]
    assert widths == [32, 16, 8]  # 4, 2, 1 x hidden: the encoder's widths in reverse
    with pytest.raises(ValueError, match=r"codes must be \(B, 16, h, w\)"):
        model.decoder(torch.zeros(1, 3, 2, 2))


def test_logit_laplace_nll_is_the_change_of_variables_of_a_laplace():
    g = torch.Generator().manual_seed(0)
    x = dalle_preprocess(torch.rand(2, 3, 4, 4, generator=g))
    params = torch.randn(2, 6, 4, 4, generator=g)
    mu, log_b = params[:, :3], params[:, 3:]
    laplace = torch.distributions.Laplace(mu, log_b.exp())
    expected = -laplace.log_prob(torch.logit(x)) + torch.log(x * (1 - x))  # log |d logit(x) / dx| = -log x(1-x)
    torch.testing.assert_close(logit_laplace_nll(params, x), expected)
    # the mean reconstruction inverts the pixel mapping
    exact = torch.cat([torch.logit(x), torch.zeros_like(x)], 1)
    torch.testing.assert_close(logit_laplace_mean_pixels(exact), (x - 0.1) / 0.8, atol=1e-6, rtol=0)


def test_kl_to_the_uniform_prior():
    model = _dvae()
    x = dalle_preprocess(torch.rand(1, 3, 16, 16))
    with torch.no_grad():  # uniform posterior: KL 0; a one-hot posterior: log V per token
        model.encoder.output.conv.weight.zero_()
        model.encoder.output.conv.bias.zero_()
        assert model(x).kl.item() == pytest.approx(0.0, abs=1e-5)
        model.encoder.output.conv.bias[3] = 100.0
        out = model(x, kl_weight=2.0)
    assert out.kl.item() == pytest.approx(16 * math.log(16), rel=1e-5)  # 4 x 4 tokens
    assert out.loss.item() == pytest.approx((out.nll.item() + 2.0 * out.kl.item()) / (3 * 16 * 16), rel=1e-5)


def test_codebook_usage_and_schedules():
    u = codebook_usage(torch.tensor([[0, 0], [1, 1]]), 4)
    assert u["perplexity"] == pytest.approx(2.0) and u["used"] == 0.5 and u["dead"] == 2
    assert codebook_usage(torch.arange(8), 8)["perplexity"] == pytest.approx(8.0)
    assert gumbel_temperature(0) == 1.0 and gumbel_temperature(150_000) == 1 / 16
    assert gumbel_temperature(75_000) == pytest.approx((1 + 1 / 16) / 2)
    assert kl_weight_schedule(0) == 0.0 and kl_weight_schedule(5000) == 6.6
    assert kl_weight_schedule(2500) == pytest.approx(3.3)


def test_save_load_and_use_as_flava_tokenizer(tmp_path):
    from mmkit.models import FLAVAConfig, flava_model_for_pretraining

    model = _dvae(3)
    save_dvae(model, tmp_path / "tok", image_size=16)
    again, cfg = load_dvae(tmp_path / "tok")
    x = dalle_preprocess(torch.rand(2, 3, 16, 16))
    torch.testing.assert_close(again.reconstruct(x), model.reconstruct(x))
    assert cfg["fingerprint"] == tokenizer_fingerprint(model.encoder) and cfg["image_size"] == 16
    enc = dalle_encoder_from_checkpoint(tmp_path / "tok")
    assert torch.equal(enc(x).argmax(1), model.encoder(x).argmax(1))
    # in FLAVA pretraining: vocabulary and codebook input size follow the tokenizer
    flava = flava_model_for_pretraining(FLAVAConfig.tiny(), **{"codebook.checkpoint": str(tmp_path / "tok")})
    assert flava.config.codebook.vocab_size == 16 and flava.mim_head.decoder.out_features == 16
    assert flava.config.codebook.image_size == 4 * 4  # ViT grid 4 x the tokenizer's 4x downsampling
    ids = flava.image_tokenizer(dalle_preprocess(torch.rand(2, 3, 16, 16)))
    assert ids.shape == (2, 16)
    assert not (tmp_path / "tok.tmp").exists()


def test_gumbel_relaxation_is_a_distribution_and_sharpens_with_temperature():
    """The relaxed codes are finite, sum to one and, at a low temperature, pick the argmax of
    logits + Gumbel noise; over many draws each code wins with its softmax probability."""
    model = _dvae()
    seen = {}

    def spy(module, inputs):
        seen["codes"] = inputs[0]

    model.decoder.register_forward_pre_hook(spy)
    x = dalle_preprocess(torch.rand(1, 3, 16, 16))
    with torch.no_grad():
        model.encoder.output.conv.weight.zero_()
        model.encoder.output.conv.bias.copy_(torch.log(torch.tensor([0.5, 0.3, 0.2] + [1e-9] * 13)))
        wins = torch.zeros(16)
        for i in range(200):
            model(x, temperature=1 / 16, generator=torch.Generator().manual_seed(i))
            codes = seen["codes"]
            assert torch.isfinite(codes).all()
            torch.testing.assert_close(codes.sum(1), torch.ones(1, 4, 4))
            wins += torch.bincount(codes.argmax(1).flatten(), minlength=16)
    freq = wins / wins.sum()  # 3200 draws
    torch.testing.assert_close(freq[:3], torch.tensor([0.5, 0.3, 0.2]), atol=0.03, rtol=0)
    assert codes.max(1).values.mean() > 0.9  # nearly one-hot at tau = 1/16


def test_straight_through_decodes_hard_codes_and_still_trains_the_encoder():
    model = _dvae()
    seen = {}
    model.decoder.register_forward_pre_hook(lambda m, inputs: seen.update(codes=inputs[0]))
    x = dalle_preprocess(torch.rand(2, 3, 16, 16))
    out = model(x, temperature=1.0, straight_through=True)
    codes = seen["codes"].detach()
    one_hot = torch.nn.functional.one_hot(codes.argmax(1), 16).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(codes, one_hot, atol=1e-6, rtol=0)  # hard in the forward pass (up to rounding)
    out.loss.backward()
    assert model.encoder.output.conv.weight.grad.abs().sum() > 0


def test_gaussian_reconstruction_loss_is_scaled_squared_error():
    model = _dvae()
    x = dalle_preprocess(torch.rand(2, 3, 16, 16))
    out = model(x, recon_loss="gaussian", pixel_sigma=0.5, generator=torch.Generator().manual_seed(0))
    mean = (torch.sigmoid(out.params[:, :3]) - 0.1) / 0.8
    expected = ((mean - (x - 0.1) / 0.8) ** 2).flatten(1).sum(1).mean() / (2 * 0.25)
    torch.testing.assert_close(out.nll, expected)
    with pytest.raises(ValueError, match="recon_loss must be"):
        model(x, recon_loss="l1")
