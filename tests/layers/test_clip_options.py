"""Layer options CLIP and SigLIP need: causal attention, token and attention pooling, plain text embeddings."""

from __future__ import annotations

import pytest
import torch

from mmkit.layers import AttentionPool, MultiHeadSelfAttention, TextEmbedding, TokenPool


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_causal_attention_never_reads_later_tokens(backend):
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 2, backend=backend, causal=True).eval()
    x = torch.randn(2, 6, 16)
    keep = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]]).bool()
    later = x.clone()
    later[:, 3:] = torch.randn(2, 3, 16)  # change tokens 3..5 only
    for mask in (None, keep):
        a, b = attn(x, mask), attn(later, mask)
        torch.testing.assert_close(a[:, :3], b[:, :3], atol=0, rtol=0)
        assert not torch.allclose(a[:, 3:], b[:, 3:])
    # and the fused path equals the written-out reference, padding included
    ref = MultiHeadSelfAttention(16, 2, backend="math", causal=True).eval()
    ref.load_state_dict(attn.state_dict())
    torch.testing.assert_close(attn(x, keep)[keep], ref(x, keep)[keep], atol=1e-6, rtol=1e-6)
    probs = attn.attention_probs(x)
    assert torch.equal(probs.triu(1), torch.zeros_like(probs))


def test_attention_pool_is_multihead_attention_from_a_probe():
    torch.manual_seed(0)
    pool = AttentionPool(16, 4, 32, activation="gelu_tanh").eval()
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        mha.in_proj_weight.copy_(pool.qkv.weight)
        mha.in_proj_bias.copy_(pool.qkv.bias)
        mha.out_proj.load_state_dict(pool.out_proj.state_dict())
    x = torch.randn(3, 7, 16)
    with torch.no_grad():
        h = mha(pool.probe.expand(3, -1, -1), x, x)[0][:, 0]
        expected = h + pool.mlp(pool.norm(h))
        torch.testing.assert_close(pool(x), expected, atol=1e-6, rtol=1e-6)
        keep = torch.ones(3, 7, dtype=torch.bool)
        keep[1, 4:] = False
        h = mha(pool.probe.expand(3, -1, -1), x, x, key_padding_mask=~keep)[0][:, 0]
        torch.testing.assert_close(pool(x, keep), h + pool.mlp(pool.norm(h)), atol=1e-6, rtol=1e-6)


def test_token_pool_modes():
    h = torch.arange(2 * 5 * 1, dtype=torch.float).view(2, 5, 1)
    ids = torch.tensor([[7, 3, 9, 0, 0], [7, 9, 9, 9, 1]])
    assert TokenPool("first")(h).flatten().tolist() == [0, 5]
    assert TokenPool("last")(h).flatten().tolist() == [4, 9]
    assert TokenPool("eot", eos_token_id=9)(h, ids).flatten().tolist() == [2, 6]  # the first eos
    assert TokenPool("eot")(h, ids).flatten().tolist() == [2, 6]  # no id: the largest id's first position
    with pytest.raises(ValueError, match="needs the input_ids"):
        TokenPool("eot", 9)(h)
    with pytest.raises(ValueError, match="'first', 'eot' or 'last'"):
        TokenPool("mean")


def test_plain_text_embedding_is_word_plus_position():
    emb = TextEmbedding(50, 8, max_positions=12, type_vocab_size=0, pad_token_id=None, use_norm=False)
    assert emb.token_type_embeddings is None and emb.word_embeddings.padding_idx is None
    ids = torch.tensor([[3, 0, 7]])
    expected = emb.word_embeddings.weight[ids] + emb.position_embeddings.weight[:3]
    torch.testing.assert_close(emb(ids), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="no segment table"):
        emb(ids, token_type_ids=torch.zeros_like(ids))
