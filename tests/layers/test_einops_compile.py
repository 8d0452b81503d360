"""The einops reshapes (heads split and merged in attention, patches flattened in the patch embedding) trace
into one graph: ``torch.compile(fullgraph=True)`` of an attention layer and of a patch embedding equals the
eager module, with padding, a causal mask, a patch mask and a resized grid, and with a symbolic batch size.
Dynamo and AOT autograd trace them here (``backend="aot_eager"``: the graph is the same one inductor gets, without
the seconds of C++ code generation; ``benchmarks/flava_step.py``'s compiled step runs the whole model through
inductor)."""

from __future__ import annotations

import functools

import pytest
import torch

from mmkit.layers import MultiHeadSelfAttention, PatchEmbedding
from tests.conftest import randomize_

B, N, D, H = 3, 7, 16, 4
BACKEND = "aot_eager"


@functools.cache
def _compile_error() -> str | None:
    """Why ``torch.compile`` cannot run on this machine (e.g. no C++ compiler for inductor), or None."""
    try:
        torch.compile(lambda x: x * 2 + 1, fullgraph=True, backend=BACKEND)(torch.ones(2))
    except Exception as exc:  # any backend failure: the tests below cannot run here
        return f"torch.compile does not run here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


@pytest.fixture(autouse=True)
def _needs_compile():
    torch._dynamo.reset()
    if (reason := _compile_error()) is not None:
        pytest.skip(reason)


@pytest.mark.parametrize(("backend", "causal"), [("sdpa", False), ("math", True)])
def test_attention_compiles_whole_and_equals_eager(backend, causal):
    torch.manual_seed(0)
    attn = randomize_(MultiHeadSelfAttention(D, H, backend=backend, causal=causal)).eval()
    x = torch.randn(B, N, D)
    keep = torch.ones(B, N, dtype=torch.bool)
    keep[1, 4:] = False
    compiled = torch.compile(attn, fullgraph=True, backend=BACKEND)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, keep), attn(x, keep), rtol=1e-5, atol=1e-5)
        x2, keep2 = torch.randn(B + 2, N, D), torch.ones(B + 2, N, dtype=torch.bool)
        torch._dynamo.mark_dynamic(x2, 0)
        torch._dynamo.mark_dynamic(keep2, 0)
        torch.testing.assert_close(compiled(x2, keep2), attn(x2, keep2), rtol=1e-5, atol=1e-5)


def test_patch_embedding_compiles_whole_and_equals_eager():
    torch.manual_seed(0)
    embed = randomize_(PatchEmbedding(16, 4, 3, D, use_mask_token=True)).eval()
    compiled = torch.compile(embed, fullgraph=True, backend=BACKEND)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for size in (16, 24):  # the training grid, and a larger one (interpolated positions)
            pixels = torch.randn(B, 3, size, size, generator=g)
            grid = size // 4
            mask = torch.rand(B, grid, grid, generator=g) < 0.4
            torch.testing.assert_close(compiled(pixels, mask), embed(pixels, mask), rtol=1e-5, atol=1e-5)
