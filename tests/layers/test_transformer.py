import pytest
import torch
import torch.nn.functional as F

from mmkit.layers import MLP, Pooler, get_activation, transformer_encoder
from mmkit.layers.transformer import AttentionOptions


def _encoder(**kw):
    torch.manual_seed(0)
    args = dict(dim=16, num_layers=3, num_heads=2, mlp_dim=40, attention=AttentionOptions(backend="math"))
    return transformer_encoder(**{**args, **kw})


def test_layer_is_prenorm_residual_block():
    """h = h + Attn(LN1(h)); h = h + MLP(LN2(h)), written out with functional ops."""
    enc = _encoder(num_layers=1)
    layer = enc.layers[0]
    x = torch.randn(2, 5, 16)
    a = layer.attn
    h = F.layer_norm(x, (16,), layer.norm1.weight, layer.norm1.bias, eps=1e-12)
    q, k, v = F.linear(h, a.qkv.weight, a.qkv.bias).chunk(3, dim=-1)
    split = lambda t: t.view(2, 5, 2, 8).transpose(1, 2)  # noqa: E731
    att = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 8**0.5, -1) @ split(v)
    x1 = x + F.linear(att.transpose(1, 2).reshape(2, 5, 16), a.out_proj.weight, a.out_proj.bias)
    h2 = F.layer_norm(x1, (16,), layer.norm2.weight, layer.norm2.bias, eps=1e-12)
    m = layer.mlp
    expected = x1 + F.linear(F.gelu(F.linear(h2, m.fc1.weight, m.fc1.bias)), m.fc2.weight, m.fc2.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_encoder_returns_states_before_and_after_final_norm():
    enc = _encoder()
    x = torch.randn(2, 5, 16)
    out = enc(x, output_hidden_states=True)
    assert len(out.hidden_states) == 4
    assert out.hidden_states[0] is x
    torch.testing.assert_close(out.hidden_states[-1], out.pre_norm_hidden_state)
    torch.testing.assert_close(out.last_hidden_state, enc.norm(out.pre_norm_hidden_state))
    h = x
    for layer in enc.layers:
        h = layer(h)
    torch.testing.assert_close(out.pre_norm_hidden_state, h)
    assert enc(x).hidden_states is None


def test_grad_checkpointing_gives_same_values_and_gradients():
    enc = _encoder(dropout=0.0)
    x = torch.randn(2, 5, 16)
    keep = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    grads = []
    for ckpt in (False, True):
        enc.zero_grad()
        enc.set_grad_checkpointing(ckpt)
        out = enc(x, keep).last_hidden_state
        out.sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in enc.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for g0, g1 in zip(grads[0][1], grads[1][1], strict=True):
        torch.testing.assert_close(g0, g1)


def test_dropout_is_active_only_in_training():
    enc = _encoder(dropout=0.5, attention=AttentionOptions(dropout=0.5, backend="math"))
    x = torch.randn(2, 5, 16)
    enc.eval()
    torch.testing.assert_close(enc(x).last_hidden_state, enc(x).last_hidden_state)
    enc.train()
    assert not torch.allclose(enc(x).last_hidden_state, enc(x).last_hidden_state)


def test_mlp_and_pooler_shapes_and_values():
    mlp = MLP(8, 32, activation="relu")
    x = torch.randn(4, 3, 8)
    torch.testing.assert_close(mlp(x), mlp.fc2(torch.relu(mlp.fc1(x))))
    pooler = Pooler(8)
    torch.testing.assert_close(pooler(x), torch.tanh(pooler.dense(x[:, 0])))
    with pytest.raises(ValueError, match="unknown activation 'gleu'"):
        get_activation("gleu")
    x = torch.linspace(-3, 3, 7)
    torch.testing.assert_close(get_activation("quick_gelu")(x), x * torch.sigmoid(1.702 * x))
