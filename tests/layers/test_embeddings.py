import pytest
import torch

from mmkit.layers import PatchEmbedding, TextEmbedding, interpolate_position_embeddings


def _patch(**kw):
    torch.manual_seed(0)
    return PatchEmbedding(32, 8, 3, 16, use_mask_token=True, **kw)


def test_masked_patches_take_mask_token_before_positions():
    emb = _patch()
    x = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [0, 5, 15]] = True
    out = emb(x, mask)
    plain = emb.proj(x).flatten(2).transpose(1, 2)
    pos = emb.position_embeddings[0]
    assert out.shape == (2, 17, 16)
    torch.testing.assert_close(out[:, 0], (emb.cls_token[0, 0] + pos[0]).expand(2, -1))
    torch.testing.assert_close(out[0, 1 + 5], emb.mask_token[0, 0] + pos[6])
    torch.testing.assert_close(out[0, 1 + 1], plain[0, 1] + pos[2])
    torch.testing.assert_close(out[1, 1:], plain[1] + pos[1:])
    # a (B, Gh, Gw) grid mask is the same mask
    torch.testing.assert_close(emb(x, mask.view(2, 4, 4)), out)


def test_interpolation_identity_and_constants():
    pos = torch.randn(1, 16, 5)
    assert interpolate_position_embeddings(pos, (4, 4), (4, 4)) is pos
    const = torch.full((1, 16, 5), 0.7)
    torch.testing.assert_close(interpolate_position_embeddings(const, (4, 4), (6, 3)), torch.full((1, 18, 5), 0.7))


def test_other_resolution_interpolates_and_resize_is_permanent():
    emb = _patch()
    x = torch.randn(1, 3, 48, 48)
    before = emb(x)
    assert before.shape == (1, 1 + 36, 16)
    emb.resize_position_embeddings(48)
    assert emb.position_embeddings.shape == (1, 37, 16) and emb.grid_size == (6, 6)
    torch.testing.assert_close(emb(x), before)


def test_patch_embedding_errors():
    emb = _patch()
    with pytest.raises(ValueError, match=r"pixel_values must be \(B, 3, H, W\)"):
        emb(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="not a multiple of the patch size"):
        emb(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="patch_mask must hold"):
        emb(torch.randn(1, 3, 32, 32), torch.zeros(1, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="no mask token"):
        PatchEmbedding(32, 8, 3, 16)(torch.randn(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.bool))
    with pytest.raises(ValueError, match="not divisible"):
        PatchEmbedding(30, 8)


def test_text_embedding_sums_then_normalises():
    torch.manual_seed(0)
    emb = TextEmbedding(50, 8, max_positions=12, type_vocab_size=2, pad_token_id=0)
    ids = torch.tensor([[5, 7, 9, 0]])
    types = torch.tensor([[0, 0, 1, 1]])
    raw = emb.word_embeddings(ids) + emb.position_embeddings(torch.arange(4))[None] + emb.token_type_embeddings(types)
    torch.testing.assert_close(emb(ids, types), emb.norm(raw))
    torch.testing.assert_close(emb(ids), emb(ids, torch.zeros_like(ids)))
    # the padding row gets no gradient
    emb(ids).sum().backward()
    assert emb.word_embeddings.weight.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match="exceeds max_positions=12"):
        emb(torch.zeros(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match=r"input_ids must be \(B, L\)"):
        emb(torch.zeros(13, dtype=torch.long))
