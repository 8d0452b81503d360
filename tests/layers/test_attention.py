import math

import pytest
import torch
from torch import nn

from mmkit.layers import (
    MultiHeadSelfAttention,
    math_attention,
    resolve_attention_backend,
    set_attention_backend,
    xformers_available,
)
from tests.conftest import available_backends

B, N, D, H = 3, 11, 24, 3


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, D, generator=g)
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[1, 7:] = False
    keep[2, 2:] = False  # only two real tokens
    return x, keep


def _attn(backend, seed=0):
    torch.manual_seed(seed)
    return MultiHeadSelfAttention(D, H, backend=backend)


def test_math_attention_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 1, 4, 2, generator=g, dtype=torch.float64) for _ in range(3))
    keep = torch.tensor([[True, True, False, True]])
    out, probs = math_attention(q, k, v, keep)
    for i in range(4):
        scores = [float(q[0, 0, i] @ k[0, 0, j]) / math.sqrt(2) for j in range(4)]
        weights = [math.exp(s) if keep[0, j] else 0.0 for j, s in enumerate(scores)]
        total = sum(weights)
        expected = sum(w / total * v[0, 0, j] for j, w in enumerate(weights))
        torch.testing.assert_close(out[0, 0, i], expected)
        assert probs[0, 0, i, 2] == 0


def test_matches_torch_multihead_attention():
    """nn.MultiheadAttention is an independent oracle for the fused-QKV module."""
    x, keep = _inputs()
    ours = _attn("math")
    ref = nn.MultiheadAttention(D, H, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    expected, _ = ref(x, x, x, key_padding_mask=~keep, need_weights=False)
    torch.testing.assert_close(ours(x, keep), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", [b for b in available_backends() if b != "math"])
@pytest.mark.parametrize("masked", [False, True])
def test_backend_matches_math_forward_and_backward(backend, masked):
    device = "cuda" if backend == "xformers" else "cpu"
    x, keep = _inputs()
    x, keep = x.to(device), keep.to(device)
    mask = keep if masked else None
    ref, fast = _attn("math").to(device), _attn(backend).to(device)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_r, out_f = ref(xr, mask), fast(xf, mask)
    torch.testing.assert_close(out_f, out_r, atol=1e-5, rtol=1e-5)
    # gradients through real tokens only: padded query rows are meaningless by contract
    weight = keep[..., None].float() if masked else torch.ones_like(x[..., :1])
    (out_r * weight).square().sum().backward()
    (out_f * weight).square().sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, atol=1e-5, rtol=1e-5)
    for (name, pr), (_, pf) in zip(ref.named_parameters(), fast.named_parameters(), strict=True):
        torch.testing.assert_close(pf.grad, pr.grad, atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize("backend", available_backends())
def test_padding_keys_do_not_change_real_tokens(backend):
    device = "cuda" if backend == "xformers" else "cpu"
    x, keep = _inputs()
    x, keep = x.to(device), keep.to(device)
    attn = _attn(backend).to(device)
    noisy = torch.where(keep[..., None], x, torch.randn_like(x) * 100)
    a, b = attn(x, keep), attn(noisy, keep)
    torch.testing.assert_close(a[keep], b[keep], atol=1e-5, rtol=1e-5)


def test_integer_mask_equals_bool_mask():
    x, keep = _inputs()
    attn = _attn("sdpa")
    torch.testing.assert_close(attn(x, keep.long()), attn(x, keep))


def test_attention_probs_rows_sum_to_one_and_skip_padding():
    x, keep = _inputs()
    probs = _attn("sdpa").attention_probs(x, keep)
    assert probs.shape == (B, H, N, N)
    torch.testing.assert_close(probs.sum(-1), torch.ones(B, H, N))
    assert (probs[1, :, :, 7:] == 0).all() and (probs[2, :, :, 2:] == 0).all()


def test_bad_inputs_raise_clear_errors():
    attn = _attn("sdpa")
    with pytest.raises(ValueError, match="expected input width 24"):
        attn(torch.randn(2, 5, 16))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, seq\) = \(2, 5\)"):
        attn(torch.randn(2, 5, D), torch.ones(2, 6))
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadSelfAttention(10, 3)
    with pytest.raises(ValueError, match="unknown attention backend 'flash'; choose one of"):
        resolve_attention_backend("flash")


@pytest.mark.skipif(xformers_available(), reason="checks the behaviour where xformers cannot run")
def test_xformers_unavailable_fails_clearly_and_auto_falls_back():
    with pytest.raises(RuntimeError, match="'xformers' was requested but cannot run.*sdpa"):
        MultiHeadSelfAttention(D, H, backend="xformers")
    assert resolve_attention_backend("auto") == "sdpa"
    assert _attn("auto").backend == "sdpa"


def test_set_attention_backend_switches_every_layer():
    model = nn.Sequential(_attn("sdpa"), _attn("sdpa"))
    set_attention_backend(model, "math")
    assert [m.backend for m in model] == ["math", "math"]
    with pytest.raises(ValueError):
        set_attention_backend(model, "nope")
    assert [m.backend for m in model] == ["math", "math"]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_backends_low_precision_on_cuda(dtype):
    x, keep = _inputs()
    x, keep = x.cuda().to(dtype), keep.cuda()
    ref = _attn("math").cuda().to(dtype)
    for backend in [b for b in available_backends() if b != "math"]:
        fast = _attn(backend).cuda().to(dtype)
        torch.testing.assert_close(fast(x, keep)[keep], ref(x, keep)[keep], atol=2e-2, rtol=2e-2)


def test_xformers_that_imports_but_cannot_run_is_not_used(monkeypatch):
    """A wheel built for another PyTorch imports and then has no operator: seen on an H200 with
    xformers 0.0.35 (built for torch 2.10) beside torch 2.11. It must count as unavailable."""
    import sys
    import types

    from mmkit.layers import attention

    def no_operator(*args, **kwargs):
        raise NotImplementedError("No operator found for `memory_efficient_attention_forward` with inputs:")

    fake = types.ModuleType("xformers")
    fake.__version__ = "0.0.0-test"
    fake.ops = types.ModuleType("xformers.ops")
    fake.ops.memory_efficient_attention = no_operator
    monkeypatch.setitem(sys.modules, "xformers", fake)
    monkeypatch.setitem(sys.modules, "xformers.ops", fake.ops)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch, "zeros", lambda *a, **k: torch.empty(0))  # no CUDA here: fake the probe tensors
    attention._xformers_import_error.cache_clear()
    try:
        assert not attention.xformers_available()
        assert resolve_attention_backend("auto") == "sdpa"
        with pytest.raises(
            RuntimeError,
            match=r"xformers 0.0.0-test is installed but its kernel does not run.*"
            r"No operator found.*use attention_backend='sdpa'",
        ):
            resolve_attention_backend("xformers")
    finally:
        attention._xformers_import_error.cache_clear()
