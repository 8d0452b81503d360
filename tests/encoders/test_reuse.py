"""The encoders are usable on their own: a CLIP-style dual encoder in a few lines."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mmkit.encoders import ImageEncoderConfig, flava_multimodal_encoder, flava_text_encoder, vit_encoder


class DualEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        size = dict(hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64)
        self.image = vit_encoder(**size, image_size=16, patch_size=4, with_pooler=False)
        self.text = flava_text_encoder(**size, vocab_size=50, max_positions=16, with_pooler=False)
        self.image_proj, self.text_proj = nn.Linear(32, 16), nn.Linear(32, 16)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, pixels, ids):
        img = F.normalize(self.image_proj(self.image(pixels).last_hidden_state[:, 0]), dim=-1)
        txt = F.normalize(self.text_proj(self.text(ids).last_hidden_state[:, 0]), dim=-1)
        logits = img @ txt.T * self.logit_scale.exp()
        labels = torch.arange(len(ids))
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def test_dual_encoder_from_builders_learns():
    torch.manual_seed(0)
    model = DualEncoder()
    pixels, ids = torch.randn(8, 3, 16, 16), torch.randint(1, 50, (8, 6))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(pixels, ids)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_encoder_interface():
    enc = vit_encoder(
        ImageEncoderConfig(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32, image_size=16, patch_size=8)
    )
    assert enc.width == 16
    out = enc(torch.randn(2, 3, 16, 16))
    assert out.last_hidden_state.shape == (2, 5, 16) and out.pooler_output.shape == (2, 16)
    assert {"embeddings.cls_token", "embeddings.position_embeddings", "embeddings.mask_token"} <= enc.no_weight_decay()
    fusion = flava_multimodal_encoder(hidden_size=16, num_layers=1, num_heads=2, mlp_dim=32)
    tokens = torch.randn(2, 4, 16)
    keep = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    out = fusion(tokens, keep)
    assert out.last_hidden_state.shape == (2, 5, 16)
    assert out.attention_mask[0].tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError, match=r"hidden_states must be \(B, N, 16\)"):
        fusion(torch.randn(2, 4, 8))
    with pytest.raises(ValueError, match="unknown config key 'num_layer'"):
        flava_text_encoder(num_layer=2)


def test_an_encoder_resets_itself_by_its_builders_rule():
    """What a builder applies is the encoder's own ``reset_parameters()``: after garbage (as ``to_empty`` leaves
    it) the same constants and the builder's std come back, the padding row and the position ids too."""
    small = dict(hidden_size=64, num_layers=1, num_heads=2, mlp_dim=128)
    for enc, zero in (
        (vit_encoder(**small, image_size=16, patch_size=8), True),
        (flava_text_encoder(**small, vocab_size=300, zero_init_tokens=False), False),
    ):
        built = {k: v.clone() for k, v in enc.state_dict().items()}
        with torch.no_grad():
            for t in (*enc.parameters(), *enc.buffers()):
                t.fill_(7)
        enc.reset_parameters()
        assert enc.zero_init_tokens is zero and enc.init_std == pytest.approx(0.02 * (768 / 64) ** 0.5)
        for name, value in enc.state_dict().items():
            a = built[name]
            if a.numel() > 1 and a.is_floating_point() and a.std() > 0:
                assert value.std().item() == pytest.approx(a.std().item(), rel=0.25), name
            else:
                assert torch.equal(value, a), name
    assert torch.all(enc.embeddings.word_embeddings.weight[0] == 0)  # the padding row
    ids = enc.embeddings.position_ids
    assert torch.equal(ids, torch.arange(ids.shape[1]).unsqueeze(0))
