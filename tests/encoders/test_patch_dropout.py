"""FLIP patch dropout on the image encoder: 0% is the plain encoder exactly, eval mode drops nothing,
training keeps CLS plus the chosen patches in order (checked against running those tokens by hand)."""

import pytest
import torch

from mmkit.encoders.builders import vit_encoder
from mmkit.encoders.encoders import drop_patches

SIZES = dict(image_size=32, patch_size=8, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32)


def _encoders(p):
    torch.manual_seed(0)
    plain = vit_encoder(**SIZES)
    torch.manual_seed(0)
    dropped = vit_encoder(**SIZES, patch_dropout=p)
    dropped.load_state_dict(plain.state_dict())
    return plain, dropped


def test_zero_dropout_and_eval_mode_equal_the_plain_encoder():
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    plain, zero = _encoders(0.0)
    plain.train(), zero.train()
    torch.testing.assert_close(zero(x).last_hidden_state, plain(x).last_hidden_state, atol=0, rtol=0)
    _, half = _encoders(0.5)
    half.eval()
    torch.testing.assert_close(half(x).last_hidden_state, plain.eval()(x).last_hidden_state, atol=0, rtol=0)


def test_training_keeps_cls_and_a_random_half_of_the_patches():
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    plain, half = _encoders(0.5)
    half.train(), plain.train()
    torch.manual_seed(7)
    out = half(x).last_hidden_state
    assert out.shape == (2, 1 + 8, 16)  # 16 patches -> 8 kept, plus CLS
    # the same tokens by hand: embed, keep what drop_patches keeps with the same seed, run the stack
    tokens = plain.embeddings(x)
    torch.manual_seed(7)
    kept = drop_patches(tokens, 0.5)
    torch.testing.assert_close(out, plain.encoder(kept).last_hidden_state, atol=1e-6, rtol=0)
    torch.testing.assert_close(kept[:, 0], tokens[:, 0])  # CLS first, always
    rows = [[int((tokens[b] == t).all(-1).nonzero()) for t in kept[b, 1:]] for b in range(2)]
    assert all(r == sorted(r) and len(set(r)) == 8 for r in rows) and rows[0] != rows[1]  # in order, per image


def test_patch_dropout_is_not_applied_with_a_patch_mask_and_is_range_checked():
    _, half = _encoders(0.5)
    half.train()
    x, mask = torch.randn(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.bool)
    assert half(x, mask).last_hidden_state.shape == (1, 17, 16)
    with pytest.raises(ValueError, match=r"patch_dropout must be in \[0, 1\)"):
        vit_encoder(**SIZES, patch_dropout=1.0)
